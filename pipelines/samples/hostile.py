"""What broken transfers, careless saves and attackers leave; each must still get a record."""

from __future__ import annotations

import os
import struct
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
