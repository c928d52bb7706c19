"""What broken transfers, careless saves and attackers leave; each must still get a record."""

from __future__ import annotations

import io
import os
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path

from pipelines.samples.photos import exif_bytes, striped


def truncated_copy(source: Path, path: Path, *, keep: float) -> Path:
    """The first `keep` fraction of a file's bytes (never none): a transfer that broke off."""
    data = source.read_bytes()
    path.write_bytes(data[: max(1, int(len(data) * keep))])
    return path


def truncated_jpeg(path: Path) -> Path:
    """A JPEG cut off before its End Of Image marker (an interrupted transfer)."""
    return truncated_copy(striped(path, size=(320, 240), quality=80), path, keep=2 / 3)


def png_bomb(path: Path, width: int = 100_000, height: int = 100_000) -> Path:
    """A tiny PNG whose header claims 10^10 pixels: a decompression bomb by its header alone."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )
    return path


def corrupt_video(path: Path) -> Path:
    """An MP4 signature with garbage after it: looks like a video, decodes as nothing."""
    header = struct.pack(">I", 24) + b"ftypisom" + b"\x00\x00\x02\x00" + b"isomiso2"
    path.write_bytes(header + b"\xde\xad\xbe\xef" * 512)
    return path


def fifo(path: Path) -> Path:
    """A named pipe: opening it for reading blocks forever unless a stage refuses it first."""
    os.mkfifo(path)
    return path


def html_page(path: Path) -> Path:
    """A web page saved under a media name (`clip.mp4`), as browsers and scrapers often do."""
    path.write_text("<!DOCTYPE html>\n<html><head><title>clip</title></head><body></body></html>\n")
    return path


def jpeg_bytes_named_png(directory: Path) -> Path:
    """A small JPEG with EXIF under a `.png` name: the kind must come from the bytes."""
    return striped(directory / "photo.png", size=(64, 48), exif=exif_bytes())


def zip_bomb(path: Path, inflated_bytes: int) -> Path:
    """A zip of one member of `inflated_bytes` zeros, deflated about 1000:1 as classic bombs
    are. Its size is declared honestly in the central directory, as most bombs' are."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("zeros", bytes(inflated_bytes))
    return path


def tar_bomb(path: Path, inflated_bytes: int) -> Path:
    """A tar.gz of one member of `inflated_bytes` zeros: no directory to judge it by, only
    each member's header as the stream reaches it."""
    info = tarfile.TarInfo("zeros")
    info.size = inflated_bytes
    with tarfile.open(path, "w:gz") as archive:
        archive.addfile(info, io.BytesIO(bytes(inflated_bytes)))
    return path


#: What `traversal_tar` holds besides its one harmless member: name -> (tar type, link target).
TRAVERSAL_ENTRIES: dict[str, tuple[bytes, str]] = {
    "../evil": (tarfile.REGTYPE, ""),
    "/etc/x": (tarfile.REGTYPE, ""),
    "link": (tarfile.SYMTYPE, "/etc/passwd"),
    "hard": (tarfile.LNKTYPE, "/etc/shadow"),
    "dev/sda": (tarfile.BLKTYPE, ""),
    "pipe": (tarfile.FIFOTYPE, ""),
}


def traversal_tar(path: Path, payload: bytes) -> Path:
    """A tar whose entries try to reach outside wherever it is unpacked (a `..` path, an
    absolute path, a symlink and a hard link to system files, a device node, a FIFO), with
    one harmless member, `notes/ok.txt`, holding `payload`."""
    with tarfile.open(path, "w") as archive:
        harmless = tarfile.TarInfo("notes/ok.txt")
        harmless.size = len(payload)
        archive.addfile(harmless, io.BytesIO(payload))
        for name, (kind, target) in TRAVERSAL_ENTRIES.items():
            entry = tarfile.TarInfo(name)
            entry.type, entry.linkname = kind, target
            data = b"escaped" if kind == tarfile.REGTYPE else b""
            entry.size = len(data)
            archive.addfile(entry, io.BytesIO(data))
    return path


def encrypted_zip(path: Path, payload: bytes) -> Path:
    """A zip of `secret.txt` marked encrypted (the flag a password-protected export sets, in
    both of its headers) and `open.txt`, both holding `payload`; zipfile writes no encryption,
    so the flag is set afterwards."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("secret.txt", payload)
        archive.writestr("open.txt", payload)
    data = bytearray(path.read_bytes())
    # The first local header and the first central directory entry are secret.txt's.
    data[data.index(b"PK\x03\x04") + 6] |= 0x01
    data[data.index(b"PK\x01\x02") + 8] |= 0x01
    path.write_bytes(bytes(data))
    return path
