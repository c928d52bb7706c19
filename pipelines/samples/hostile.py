"""What broken transfers, careless saves and attackers leave; each must still get a record."""

from __future__ import annotations

import io
import lzma
import os
import stat
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


def tar_header_bomb(
    path: Path, header_bytes: int, kind: bytes = tarfile.GNUTYPE_LONGNAME, *, headers: int = 1
) -> Path:
    """A tar.xz of one small file, `photo.jpg`, behind `headers` headers of type `kind` (a GNU
    long name or long link, a pax extended or global header) of `header_bytes` each: tarfile
    reads each such header in one read of its declared size, so about 10 KB of xz per 64 MiB
    asks a reader for all of it at once. Pax headers hold one `path` record of that size.
    Written in 1 MiB pieces, so making it takes no such memory."""
    compressor = lzma.LZMACompressor(lzma.FORMAT_XZ, preset=0)
    pieces: list[bytes] = []

    def write(data: bytes) -> None:
        pieces.append(compressor.compress(data))

    for _ in range(headers):
        header = tarfile.TarInfo("././@LongLink")
        header.type, header.size = kind, header_bytes
        write(header.tobuf(tarfile.GNU_FORMAT))
        if kind in (tarfile.XHDTYPE, tarfile.XGLTYPE):
            # A pax record counts its own length's digits: "<length> path=<value>\n".
            digits = len(str(header_bytes))
            write(b"%d path=" % header_bytes)
            tail, ending = header_bytes - digits - len(" path="), b"\n"
        else:
            tail, ending = header_bytes, b"\x00"
        for start in range(0, tail - 1, 1 << 20):
            write(b"a" * min(1 << 20, tail - 1 - start))
        write(ending + bytes(-header_bytes % tarfile.BLOCKSIZE))
    photo = tarfile.TarInfo("photo.jpg")
    photo.size = 4
    write(photo.tobuf(tarfile.GNU_FORMAT) + b"\xff\xd8\xff\xd9".ljust(tarfile.BLOCKSIZE, b"\0"))
    write(bytes(2 * tarfile.BLOCKSIZE))
    pieces.append(compressor.flush())
    path.write_bytes(b"".join(pieces))
    return path


def folders_with_data_zip(path: Path, payload: bytes) -> Path:
    """A zip of `DCIM/` (a folder by its name) and `notes` (a folder by its Unix mode), both
    holding `payload`, beside `ok.txt` holding it too: a tool that skips folders unpacks the
    one file and never shows the other bytes."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("DCIM/", payload)
        folder = zipfile.ZipInfo("notes")
        folder.external_attr = (stat.S_IFDIR | 0o755) << 16
        archive.writestr(folder, payload)
        archive.writestr("ok.txt", payload)
    return path


def folder_with_size_tar(path: Path, payload: bytes) -> Path:
    """A tar of a directory `DCIM` whose header declares `len(payload)` bytes, then `ok.txt`
    holding `payload`. A directory's size must be 0 and no data follows it (tarfile and GNU
    tar read the next block as the next header), so this one declares what it cannot hold."""
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as archive:
        folder = tarfile.TarInfo("DCIM")
        folder.type, folder.size = tarfile.DIRTYPE, len(payload)
        archive.addfile(folder)
        harmless = tarfile.TarInfo("ok.txt")
        harmless.size = len(payload)
        archive.addfile(harmless, io.BytesIO(payload))
    return path
