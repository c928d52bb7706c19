"""The expand stage: the files a zip or tar holds become items of their own.

Evidence often arrives packed: a WhatsApp export is a zip, a phone's media folder comes as a
tar.gz, a case bundle holds both. Every file inside is an original in its own right, with the
path the archive gives it as where it came from. The stage only reads the archive and writes
each regular file into its scratch folder; the runtime stores those by content and the store
registers them as items linked to the archive, in the transaction of this stage's result.

Archives are also the classic attack on whatever unpacks them: a bomb that inflates a few
kilobytes into terabytes, a member named `../../etc/cron.d/x`, a link to a file outside. So the
stage streams with the standard library (never `extractall`), never uses an entry's name as a
path (members are written as `member-000001`, ...), counts bytes as it writes them and stops
at the first cap passed (a tar's headers too, which the library reads whole), and refuses,
recording them, entries that are links, devices, directories holding data or paths that leave
the archive. Entry names are evidence in any encoding: they are kept as raw bytes
and written into results only as hex, and never into a failure's detail or a log line.
"""

from __future__ import annotations

import gzip
import hashlib
import lzma
import platform
import re
import stat
import struct
import tarfile
import time
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, ClassVar, Protocol, Self, cast

from workers.base import (
    CPU_NODE,
    FailureReason,
    JsonRecord,
    Kind,
    MemberFile,
    Resources,
    Stage,
    StageConfig,
    StageError,
    StageInput,
    StageOutput,
)

#: Bytes read to recognise a format: a tar header is 512 bytes and its magic sits at 257.
_HEAD_BYTES = 4096
_TAR_BLOCK = 512
#: What one read hands over: large enough that Python's per-call cost vanishes, small enough
#: that a member of any size streams through constant memory.
_CHUNK = 1 << 20
_GIB = 1 << 30
_MIB = 1 << 20
#: The most one tar entry's headers may take in all: its 512-byte header block and any GNU
#: long-name or long-link blocks and pax records ahead of it. tarfile reads each of those in
#: one read of the size the archive declares, before the stage sees the entry, so the cap is
#: applied to the reads themselves. Real headers are far smaller: a name or link target is at
#: most 4,096 bytes (Linux's PATH_MAX), and the largest pax records tar tools write, a file's
#: extended attributes, are at most 64 KiB in all (Linux's XATTR_LIST_MAX).
_HEADER_CAP = _MIB


@dataclass(frozen=True)
class ArchiveFormat:
    """An archive format recognised from its first bytes; `name` is what results call it."""

    name: str
    mime: str


ZIP = ArchiveFormat("zip", "application/zip")
TAR = ArchiveFormat("tar", "application/x-tar")
TAR_GZ = ArchiveFormat("tar.gz", "application/gzip")
TAR_XZ = ArchiveFormat("tar.xz", "application/x-xz")

_GZIP_MAGIC = b"\x1f\x8b"
_XZ_MAGIC = b"\xfd7zXZ\x00"


def _is_tar_header(block: bytes) -> bool:
    """A ustar header (POSIX `ustar\\0`, GNU `ustar  `) whose checksum holds: the magic alone
    is five bytes a photo could carry by chance, the checksum makes it a tar."""
    if len(block) < _TAR_BLOCK or block[257:262] != b"ustar":
        return False
    digits = block[148:156].split(b"\x00", 1)[0].strip()
    try:
        stored = int(digits, 8)
    except ValueError:
        return False
    # The checksum field itself counts as eight spaces; old writers summed signed bytes.
    counted = block[:148] + b" " * 8 + block[156:_TAR_BLOCK]
    signed = sum(byte - 256 if byte > 127 else byte for byte in counted)
    return stored in (sum(counted), signed)


def _first_block(head: bytes, decompressor: Any) -> bytes:
    """The first tar block of a compressed stream, decompressing no more than that block."""
    try:
        return bytes(decompressor.decompress(head, _TAR_BLOCK))
    except (zlib.error, lzma.LZMAError, EOFError):
        return b""


#: Zip files that are documents or programs, told by an entry their formats put first. They
#: are one piece of evidence each, not a folder of parts to expand. Only names no case zip
#: starts with by chance count: a folder such as `word/` or `_rels/` first is no marker (a
#: document unpacked and zipped again, or a case folder so named, is a zip to expand).
_DOCUMENT_FIRST_ENTRIES: dict[bytes, str] = {
    b"[Content_Types].xml": "office document (OOXML)",
    b"META-INF/MANIFEST.MF": "Java or Android package",
    b"AndroidManifest.xml": "Android package",
}
#: A zip local file header up to the name: signature, version, flags, method, time, date,
#: CRC, compressed and uncompressed sizes, name and extra field lengths.
_ZIP_LOCAL = struct.Struct("<4s5H3L2H")
_ZIP_LOCAL_MAGIC = b"PK\x03\x04"


def _local_entry(head: bytes, at: int) -> tuple[bytes, int, int] | None:
    """The name, compression method and data offset of the zip entry whose local header
    starts at `at` in `head`; None when no whole header starts there."""
    if at < 0 or not head.startswith(_ZIP_LOCAL_MAGIC, at) or len(head) < at + _ZIP_LOCAL.size:
        return None
    fields = _ZIP_LOCAL.unpack_from(head, at)
    method, name_length, extra_length = fields[3], fields[9], fields[10]
    name_at = at + _ZIP_LOCAL.size
    return head[name_at : name_at + name_length], method, name_at + name_length + extra_length


def document_container(head: bytes) -> str | None:
    """What a zip that is really a document or a program is, from the entry its format puts
    first; None for a plain zip (or no zip at all).

    The markers: OOXML's `[Content_Types].xml`; ODF's and EPUB's `mimetype` entry, which both
    formats require stored uncompressed and naming an `application/` type (a notes file that
    happens to be called `mimetype` does not); a Java manifest `META-INF/MANIFEST.MF`, first
    or after the `META-INF/` folder, which is how the jar tool writes it; Android's
    `AndroidManifest.xml`.
    """
    first = _local_entry(head, 0)
    if first is None:
        return None
    name, method, data_at = first
    if name == b"mimetype":
        stored = method == zipfile.ZIP_STORED and head.startswith(b"application/", data_at)
        return "OpenDocument or EPUB document" if stored else None
    if name == b"META-INF/":
        second = _local_entry(head, head.find(_ZIP_LOCAL_MAGIC, data_at))
        name = b"" if second is None else second[0]
    return _DOCUMENT_FIRST_ENTRIES.get(name)


def archive_format(head: bytes) -> ArchiveFormat | None:
    """The archive format of a file from its first bytes, or None when it is none we expand.

    A gzip or xz stream is an archive only when what it holds starts with a tar header; only
    its first 512 bytes are decompressed to see that, so a compressed bomb costs nothing here.
    A zip that is a document or a program (see `document_container`) is not one we expand.
    """
    if head.startswith((_ZIP_LOCAL_MAGIC, b"PK\x05\x06")):
        return None if document_container(head) else ZIP
    if _is_tar_header(head):
        return TAR
    if head.startswith(_GZIP_MAGIC):
        # wbits 16 + 15: a gzip header and trailer around deflate data.
        block = _first_block(head, zlib.decompressobj(16 + zlib.MAX_WBITS))
        return TAR_GZ if _is_tar_header(block) else None
    if head.startswith(_XZ_MAGIC):
        block = _first_block(head, lzma.LZMADecompressor(lzma.FORMAT_XZ))
        return TAR_XZ if _is_tar_header(block) else None
    return None


@dataclass(frozen=True)
class ExpandConfig(StageConfig):
    """Caps of one expansion; an archive past any of them fails as a final resource_limit.

    Why these numbers. Evidence archives are large but not very compressible: a WhatsApp
    export or a phone's camera roll is JPEG, MP4 and Opus, already compressed, plus some chat
    text and SQLite; a whole archive stays near 1:1, a few to one where text dominates (chat
    text made 13:1 under gzip, 16:1 under xz, here). Zip bombs live at 1000:1 (one deflate
    layer tops out at 1032:1) and far beyond (overlapping entries, nested layers).

    `max_ratio` 100: several times what real material reaches, ten times below one deflate
    bomb layer. The ratio is uncompressed bytes over the archive's size, judged from the
    sizes entries declare and again as bytes are written. `ratio_exempt_bytes` 16 MiB: below
    it the ratio is not judged, since a 2 KB zip of a 300 KB chat log is no bomb and costs
    nothing to expand.
    `max_total_bytes` 64 GiB: a large messenger export or a phone's media, and the scratch
    space one expansion needs on a worker (members are written there before they are stored).
    A full device backup beyond it fails with the cap named; an operator raises it for that
    backlog, which makes a new config hash and so new result keys.
    `max_member_bytes` 32 GiB: an hour of 4K phone video fits.
    `max_entries` 100,000: a camera roll or years of a chat is tens of thousands of files.
    Each member costs an item link, an acquisition, a custody event and a probe job,
    committed in one transaction, so millions of tiny entries are a bomb of rows, not bytes.
    `max_depth` 4: archives 0-3 deep expand (a transfer tar.gz holding a case zip holding a
    messenger export holding an attached zip); deeper nesting is how bombs like 42.zip
    multiply, and an archive at this depth fails.
    `time_budget_s` 30 min: 64 GiB of xz-compressed text decompresses in about 5 min at the
    226 MB/s measured here, so this leaves room for a loaded node and slower disks. Past it
    the expansion fails as tool_timeout, which is retried: the node, not the bytes, was slow.
    """

    max_total_bytes: int = 64 * _GIB
    max_member_bytes: int = 32 * _GIB
    max_ratio: float = 100.0
    ratio_exempt_bytes: int = 16 * _MIB
    max_entries: int = 100_000
    max_depth: int = 4
    time_budget_s: float = 1800.0


@dataclass(frozen=True)
class ArchiveMember(JsonRecord):
    """A file the archive held, as extracted. `path_hex` is the path inside the archive, its
    raw bytes in hex: names come in any encoding and are evidence, so they are never decoded
    into results (the store keeps the bytes with the member's acquisition)."""

    path_hex: str
    sha256: str
    size_bytes: int


@dataclass(frozen=True)
class RefusedEntry(JsonRecord):
    """An entry not extracted, and why: `absolute_path`, `parent_path` (a `..` component),
    `empty_path`, `duplicate_path` (the store links one member per path), `symlink`,
    `hardlink`, `device`, `fifo`, `socket`, `directory_with_data` (a directory that holds or
    declares bytes, which a tool skipping directories never shows), `encrypted`,
    `unsupported_compression` or `unsupported_entry` (a tar type that is none of these)."""

    path_hex: str
    reason: str


@dataclass(frozen=True)
class ExpandResult(JsonRecord):
    """What one expansion found. `entries` counts every entry read (directories, which are
    skipped, included); `total_bytes` is what was extracted. `flags`: `no_end_marker` for a
    tar that ends at an entry boundary without its closing zero blocks (a writer that leaves
    them out, or a transfer cut exactly there)."""

    format: str
    entries: int
    members: list[ArchiveMember]
    refused: list[RefusedEntry]
    total_bytes: int
    flags: list[str]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        return cls(
            **{
                **data,
                "members": [ArchiveMember.from_json(member) for member in data["members"]],
                "refused": [RefusedEntry.from_json(entry) for entry in data["refused"]],
            }
        )


def _limit(detail: str) -> StageError:
    # Judged from the archive's own bytes: the same bytes pass no cap on another attempt.
    return StageError(FailureReason.RESOURCE_LIMIT, detail, retryable=False)


class _Budget:
    """The caps of one expansion and what it has spent: bytes, entries, time."""

    def __init__(self, config: ExpandConfig, archive_size: int) -> None:
        self.config = config
        self.ratio_bytes = max(config.max_ratio * archive_size, config.ratio_exempt_bytes)
        self.deadline = time.monotonic() + config.time_budget_s

    def check(self, total: int, member: int = 0) -> None:
        """Raise once `total` uncompressed bytes (or one member's `member`) pass a cap."""
        config = self.config
        if member > config.max_member_bytes:
            raise _limit(f"a member is larger than the cap of {config.max_member_bytes} bytes")
        if total > config.max_total_bytes:
            raise _limit(f"members exceed the cap of {config.max_total_bytes} bytes in all")
        if total > self.ratio_bytes:
            raise _limit(
                f"members exceed {config.max_ratio:g} times the archive's size "
                f"({total} bytes or more): a decompression bomb"
            )
        if time.monotonic() > self.deadline:
            raise StageError(
                FailureReason.TOOL_TIMEOUT, f"expansion exceeded {config.time_budget_s:g} s"
            )

    def check_entries(self, entries: int) -> None:
        if entries > self.config.max_entries:
            raise _limit(f"archive holds more than {self.config.max_entries} entries")


_FILE = "file"
_DIRECTORY = "directory"
#: A drive-letter path (`C:\\x`, `C:x`): absolute, or relative to a drive's own folder.
_DRIVE = re.compile(rb"^[A-Za-z]:")


def _path_problem(raw: bytes) -> str | None:
    """Why a path must not be extracted as named, if it must not. Backslashes count as
    separators: a Windows tool writes them, and an archive may one day unpack there."""
    if raw.startswith((b"/", b"\\")) or _DRIVE.match(raw):
        return "absolute_path"
    parts = raw.replace(b"\\", b"/").split(b"/")
    if b".." in parts:
        return "parent_path"
    if all(part in (b"", b".") for part in parts):
        return "empty_path"
    return None


class _Expansion:
    """The members one archive yields, written under neutral names as they stream in."""

    def __init__(self, workdir: Path, budget: _Budget) -> None:
        self.workdir = workdir
        self.budget = budget
        self.entries = 0
        self.total = 0
        self.members: list[ArchiveMember] = []
        self.files: list[MemberFile] = []
        self.refused: list[RefusedEntry] = []
        self.flags: list[str] = []
        self._paths: set[bytes] = set()

    def admit(self, raw: bytes, entry: str) -> bool:
        """Count an entry of type `entry` (`file`, `directory` or a refusal reason) and say
        whether to extract it; a refused one is recorded, a directory is skipped."""
        self.entries += 1
        self.budget.check_entries(self.entries)
        reason = _path_problem(raw) if entry in (_FILE, _DIRECTORY) else entry
        if reason is None and entry == _FILE:
            reason = "duplicate_path" if raw in self._paths else None
            self._paths.add(raw)
        if reason is not None:
            self.refused.append(RefusedEntry(raw.hex(), reason))
            return False
        return entry == _FILE

    def extract(self, raw: bytes, stream: IO[bytes]) -> None:
        """Write one member, hashing and counting as it goes; a cap stops it mid-member."""
        digest = hashlib.sha256()
        size = 0
        path = self.workdir / f"member-{len(self.files) + 1:06d}"
        with path.open("xb") as out:
            while chunk := stream.read(_CHUNK):
                size += len(chunk)
                self.budget.check(self.total + size, size)
                out.write(chunk)
                digest.update(chunk)
        self.total += size
        self.members.append(ArchiveMember(raw.hex(), digest.hexdigest(), size))
        self.files.append(MemberFile(path, raw))


#: Damage in an archive's structure or compressed data, as the standard library reports it.
_DAMAGE = (
    zipfile.BadZipFile,
    tarfile.TarError,
    EOFError,
    zlib.error,
    lzma.LZMAError,
    struct.error,
    UnicodeDecodeError,
)


@contextmanager
def _damage_is_corrupt(name: str) -> Iterator[None]:
    """Damaged archives become corrupt_media; the library's message is dropped, since it may
    quote an entry's name. An OSError without an errno is a decoder's complaint (gzip, bz2);
    one with an errno came from a disk and is left to be retried."""
    try:
        yield
    except _DAMAGE as error:
        detail = f"{name}: damaged or truncated ({type(error).__name__})"
        raise StageError(FailureReason.CORRUPT_MEDIA, detail) from None
    except OSError as error:
        if error.errno is not None:
            raise
        detail = f"{name}: damaged compressed data ({type(error).__name__})"
        raise StageError(FailureReason.CORRUPT_MEDIA, detail) from None


_ZIP_ENCRYPTED = 0x01 | 0x40
_ZIP_PATCHED = 0x20
_ZIP_UTF8 = 0x800
_ZIP_METHODS = frozenset(
    {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}
)
_EOCD = struct.Struct("<4s4H2LH")
_EOCD64_LOCATOR = struct.Struct("<4sLQL")
_EOCD64 = struct.Struct("<4sQ2H2L4Q")


def _declared_entries(handle: IO[bytes], size: int) -> int:
    """How many entries a zip's end record says it holds (its zip64 record past 65,534), so
    an entry bomb is refused before the central directory is parsed into memory; 0 when
    there is no end record (zipfile then says the archive is damaged)."""
    tail_size = min(size, _EOCD.size + 0xFFFF)
    handle.seek(size - tail_size)
    tail = handle.read(tail_size)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or at + _EOCD.size > len(tail):
        return 0
    entries: int = _EOCD.unpack_from(tail, at)[4]
    locator_at = size - tail_size + at - _EOCD64_LOCATOR.size
    if entries != 0xFFFF or locator_at < 0:
        return entries
    handle.seek(locator_at)
    locator = _EOCD64_LOCATOR.unpack(handle.read(_EOCD64_LOCATOR.size))
    if locator[0] != b"PK\x06\x07":
        return entries
    handle.seek(locator[2])
    record = handle.read(_EOCD64.size)
    if len(record) < _EOCD64.size or not record.startswith(b"PK\x06\x06"):
        return entries
    total: int = _EOCD64.unpack(record)[7]
    return total


def _zip_name(info: zipfile.ZipInfo) -> bytes:
    """The name's bytes as stored: zipfile decoded them as UTF-8 (flag bit 11) or cp437, and
    both decodings give back every byte."""
    return info.orig_filename.encode("utf-8" if info.flag_bits & _ZIP_UTF8 else "cp437")


def _mode_entry(mode: int) -> str | None:
    """The refusal for a special file's mode bits, or None for anything else."""
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    return None


def _zip_entry(info: zipfile.ZipInfo) -> str:
    # Unix tools keep the file's mode in the upper half of the external attributes.
    mode = info.external_attr >> 16
    if info.is_dir() or stat.S_ISDIR(mode):
        # zipfile would hand over a directory's bytes like a file's: recorded, not skipped.
        return "directory_with_data" if info.file_size else _DIRECTORY
    special = _mode_entry(mode)
    if special is not None:
        return special
    if info.flag_bits & _ZIP_ENCRYPTED:
        return "encrypted"
    if info.compress_type not in _ZIP_METHODS or info.flag_bits & _ZIP_PATCHED:
        return "unsupported_compression"
    return _FILE


def _expand_zip(path: Path, size: int, expansion: _Expansion) -> None:
    with path.open("rb") as handle:
        expansion.budget.check_entries(_declared_entries(handle, size))
        with zipfile.ZipFile(handle) as archive:
            wanted = [
                (info, raw)
                for info in archive.infolist()
                if expansion.admit(raw := _zip_name(info), _zip_entry(info))
            ]
            # The sizes the central directory declares bound what zipfile will inflate: a
            # bomb that declares its size is refused before a byte is written.
            declared = [info.file_size for info, _ in wanted]
            expansion.budget.check(sum(declared), max(declared, default=0))
            for info, raw in wanted:
                with archive.open(info) as member:
                    expansion.extract(raw, member)


class _Stream(Protocol):
    """What tarfile reads an archive through: a file, or a gzip or xz stream over one."""

    def read(self, size: int = -1, /) -> bytes: ...

    def seek(self, offset: int, whence: int = 0, /) -> int: ...

    def tell(self) -> int: ...


class _TarStream:
    """The stream tarfile reads a tar through, which caps and counts every read before it is
    made, since tarfile allocates what it asks for before the stage sees an entry.

    Header reads (any read outside `member_data`) are capped at `_HEADER_CAP` per entry in
    all, so a few KB of xz declaring a long name or pax record of gigabytes is refused before
    a byte of it is decompressed, and so is a chain of headers each under the cap. Every read
    first passes the stream's offset after it through the byte budget, as the bytes written
    do. And the last read is kept: tarfile ends its iteration silently on a damaged or
    truncated header as on the closing zero blocks; the last read is that header, so the
    stage can tell them apart without seeking back, which a compressed stream could only do
    by decompressing from the start again."""

    def __init__(self, stream: _Stream, budget: _Budget) -> None:
        self._stream = stream
        self._budget = budget
        self._header_bytes = 0
        self._in_data = False
        self.last = b""

    def read(self, size: int = -1) -> bytes:
        if not self._in_data:
            self._header_bytes += size
            if size < 0 or self._header_bytes > _HEADER_CAP:
                raise _limit(f"a tar entry's headers pass the cap of {_HEADER_CAP} bytes")
        self._budget.check(self._stream.tell() + size)
        self.last = self._stream.read(size)
        return self.last

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._stream.seek(offset, whence)

    def tell(self) -> int:
        return self._stream.tell()

    @contextmanager
    def member_data(self) -> Iterator[None]:
        """While the stage handles an entry tarfile has read, reads are that member's data,
        which `_Expansion.extract` takes in chunks and counts; the next entry's headers are
        counted afresh."""
        self._in_data = True
        try:
            yield
        finally:
            self._in_data = False
            self._header_bytes = 0


_TAR_REFUSALS = {
    tarfile.SYMTYPE: "symlink",
    tarfile.LNKTYPE: "hardlink",
    tarfile.CHRTYPE: "device",
    tarfile.BLKTYPE: "device",
    tarfile.FIFOTYPE: "fifo",
}


def _tar_entry(member: tarfile.TarInfo) -> str:
    if member.isreg():
        return _FILE
    if member.isdir():
        # A directory's size must be 0: tarfile, like GNU tar, reads what follows it as the
        # next header, so a size here declares bytes the archive cannot give as this entry's.
        return "directory_with_data" if member.size else _DIRECTORY
    return _TAR_REFUSALS.get(member.type, "unsupported_entry")


@contextmanager
def _decompressed(handle: IO[bytes], form: ArchiveFormat) -> Iterator[_Stream]:
    if form is TAR_GZ:
        with gzip.GzipFile(fileobj=handle, mode="rb") as stream:
            yield stream
    elif form is TAR_XZ:
        with lzma.LZMAFile(handle) as stream:
            yield stream
    else:
        yield handle


def _expand_tar(path: Path, form: ArchiveFormat, expansion: _Expansion) -> None:
    with path.open("rb") as handle, _decompressed(handle, form) as stream:
        recorded = _TarStream(stream, expansion.budget)
        # surrogateescape keeps names that are not UTF-8 byte for byte. Reading, tarfile calls
        # only read, seek and tell, which is all _TarStream has (the stub asks for a writer).
        with tarfile.TarFile(
            fileobj=recorded,  # type: ignore[arg-type]
            mode="r",
            encoding="utf-8",
            errors="surrogateescape",
        ) as archive:
            for member in archive:
                # The stream's offset past this entry counts what it costs to decompress,
                # extracted or skipped: a refused entry's data is inflated too.
                expansion.budget.check(member.offset_data + member.size, member.size)
                raw = member.name.encode("utf-8", "surrogateescape")
                with recorded.member_data():
                    if expansion.admit(raw, _tar_entry(member)):
                        # Only regular entries are admitted; for those tarfile gives a reader.
                        with cast(IO[bytes], archive.extractfile(member)) as data:
                            expansion.extract(raw, data)
            ending = recorded.last
    if not ending:
        expansion.flags.append("no_end_marker")
    elif len(ending) < _TAR_BLOCK or ending.count(0) != _TAR_BLOCK:
        raise tarfile.ReadError("the archive stops at a damaged or truncated header")


class ExpandStage(Stage[ExpandConfig, ExpandResult]):
    """Expands a zip or tar (plain, gzip or xz) into members the store registers as items."""

    name: ClassVar[str] = "expand"
    version: ClassVar[str] = "1"
    kinds: ClassVar[frozenset[Kind]] = frozenset({Kind.ARCHIVE})
    requires: ClassVar[tuple[str, ...]] = ("probe",)
    #: Inflating and hashing fill a core; memory stays at one chunk plus the entry list.
    resources: ClassVar[Resources] = Resources(num_cpus=1.0, memory_mb=1024, prefers=CPU_NODE)
    batch_size: ClassVar[int] = 1

    def __init__(self, config: ExpandConfig | None = None) -> None:
        super().__init__(config or ExpandConfig())

    def tool_versions(self) -> dict[str, str]:
        """zipfile and tarfile come with Python; zlib is the library that inflates."""
        return {"python": platform.python_version(), "zlib": zlib.ZLIB_RUNTIME_VERSION}

    def run(self, item: StageInput, workdir: Path) -> StageOutput[ExpandResult]:
        """Expand one archive into the scratch folder.

        Raises:
            StageError: resource_limit (final) for an archive nested `max_depth` deep or one
                that passes a cap, corrupt_media for damaged or truncated archives,
                unsupported_type for a file that is no archive we expand, tool_timeout past
                the time budget.
        """
        if item.depth >= self.config.max_depth:
            raise _limit(
                f"archive lies {item.depth} archives deep; the cap is {self.config.max_depth}"
            )
        with item.path.open("rb") as handle:
            head = handle.read(_HEAD_BYTES)
            size = handle.seek(0, 2)
        form = archive_format(head)
        if form is None:
            raise StageError(FailureReason.UNSUPPORTED_TYPE, "not a zip or tar archive")
        expansion = _Expansion(workdir, _Budget(self.config, size))
        with _damage_is_corrupt(form.name):
            if form is ZIP:
                _expand_zip(item.path, size, expansion)
            else:
                _expand_tar(item.path, form, expansion)
        result = ExpandResult(
            format=form.name,
            entries=expansion.entries,
            members=expansion.members,
            refused=expansion.refused,
            total_bytes=expansion.total,
            flags=expansion.flags,
        )
        return StageOutput(result, members=tuple(expansion.files))
