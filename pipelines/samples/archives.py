"""Archives as evidence arrives in them: a zip of photos shared from a phone, a transfer as a
tar.gz, exports packed inside bundles, names written by tools that know nothing of UTF-8."""

from __future__ import annotations

import io
import tarfile
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

_TAR_MODES: dict[str, Literal["w:", "w:gz", "w:xz"]] = {"": "w:", "gz": "w:gz", "xz": "w:xz"}


def _placeholder(index: int, raw: bytes) -> bytes:
    placeholder = (b"~%d~" % index).ljust(len(raw), b"~")
    if len(placeholder) != len(raw):
        raise ValueError("a raw member name must be at least 4 bytes long")
    return placeholder


def zip_archive(
    path: Path,
    members: Mapping[str | bytes, Path],
    *,
    compression: int = zipfile.ZIP_DEFLATED,
) -> Path:
    """A zip of `members` (the name inside the archive -> the file to put there).

    A str name is written as zip tools write names today (UTF-8, flagged as such when it is not
    ASCII). A bytes name is written byte for byte without that flag, as older Windows tools
    write names in the system's code page (cp1256 or cp720 for Arabic); zipfile cannot write
    that, so the member goes in under an ASCII placeholder of the same length, replaced after.
    """
    raw_names: dict[bytes, bytes] = {}
    with zipfile.ZipFile(path, "w", compression) as archive:
        for index, (name, source) in enumerate(members.items()):
            if isinstance(name, bytes):
                placeholder = _placeholder(index, name)
                raw_names[placeholder] = name
                archive.write(source, placeholder.decode("ascii"))
            else:
                archive.write(source, name)
    if raw_names:
        data = path.read_bytes()
        for placeholder, raw in raw_names.items():
            # Once in the member's local header, once in the central directory.
            if data.count(placeholder) != 2:
                raise RuntimeError("a placeholder name is not unique in the archive's bytes")
            data = data.replace(placeholder, raw)
        path.write_bytes(data)
    return path


def tar_archive(
    path: Path,
    members: Mapping[str | bytes, Path],
    *,
    compression: Literal["", "gz", "xz"] = "gz",
    tar_format: int = tarfile.PAX_FORMAT,
) -> Path:
    """A tar (plain, gzip or xz; POSIX or GNU `tar_format`) of `members`. A bytes name is kept
    byte for byte, as `tar` on Linux keeps names, which are bytes there."""
    with tarfile.open(
        path,
        _TAR_MODES[compression],
        format=tar_format,
        encoding="utf-8",
        errors="surrogateescape",
    ) as archive:
        for name, source in members.items():
            inner = name.decode("utf-8", "surrogateescape") if isinstance(name, bytes) else name
            archive.add(source, inner, recursive=False)
    return path


def appended_tar(path: Path, name: str, versions: Sequence[bytes]) -> Path:
    """A tar holding `name` once per version, in order, as `tar -r` leaves one that was
    appended to after the file changed: unpacking keeps the last, the archive holds all."""
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as archive:
        for content in versions:
            entry = tarfile.TarInfo(name)
            entry.size = len(content)
            archive.addfile(entry, io.BytesIO(content))
    return path
