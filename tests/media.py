"""Generated test media, named by the property a test needs (STYLE habit 10).

Every file is made on the fly (Pillow + piexif, ffmpeg lavfi, espeak-ng), tiny, and written
under a path the test chooses, so tests need no fixtures on disk and no network. Extensions
are chosen to lie where a test needs them to: the stages must never look at names.
"""

from __future__ import annotations

import io
import os
import shutil
import struct
import subprocess
import zlib
from pathlib import Path
from typing import Any

from PIL import Image

from pipelines.samples import exif_bytes

_FFMPEG = ["ffmpeg", "-hide_banner", "-v", "error", "-y", "-nostdin"]


def _ffmpeg(*args: str) -> None:
    subprocess.run([*_FFMPEG, *args], check=True, timeout=60)


def _image(size: tuple[int, int]) -> Image.Image:
    width, height = size
    image = Image.new("RGB", size, (40, 90, 160))
    for x in range(0, width, 16):
        image.paste((220, 200, 40), (x, 0, min(x + 8, width), height))
    return image


def jpeg_with_exif(path: Path, *, size: tuple[int, int] = (640, 480), **exif: Any) -> Path:
    """A JPEG photo carrying EXIF; `exif` takes `pipelines.samples.exif_bytes`'s fields."""
    _image(size).save(path, "JPEG", quality=70, exif=exif_bytes(**exif))
    return path


def jpeg_without_exif(path: Path, size: tuple[int, int] = (64, 48)) -> Path:
    """A JPEG with no EXIF at all (what messaging apps send after stripping metadata)."""
    _image(size).save(path, "JPEG", quality=70)
    return path


def png(path: Path, size: tuple[int, int] = (64, 48)) -> Path:
    """A plain PNG."""
    _image(size).save(path, "PNG")
    return path


def jpeg_bytes_named_png(directory: Path) -> Path:
    """JPEG content under a `.png` name: the kind must come from the bytes."""
    return jpeg_with_exif(directory / "photo.png", size=(64, 48))


def html_named_mp4(directory: Path) -> Path:
    """A web page saved as `clip.mp4`, as browsers and scrapers often do."""
    path = directory / "clip.mp4"
    path.write_text("<!DOCTYPE html>\n<html><head><title>clip</title></head><body></body></html>\n")
    return path


def truncated_jpeg(path: Path) -> Path:
    """A JPEG cut off before its End Of Image marker (an interrupted transfer)."""
    buffer = io.BytesIO()
    _image((320, 240)).save(buffer, "JPEG", quality=80)
    data = buffer.getvalue()
    path.write_bytes(data[: len(data) * 2 // 3])
    return path


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


def video_with_cuts(path: Path, seconds: float = 2.0, *, with_audio: bool = True) -> Path:
    """A small H.264 MP4 with a hard cut in the middle (testsrc2, then SMPTE bars)."""
    half = f"{seconds / 2:g}"
    args = [
        "-f", "lavfi", "-i", f"testsrc2=size=96x64:rate=10:duration={half}",
        "-f", "lavfi", "-i", f"smptebars=size=96x64:rate=10:duration={half}",
    ]
    if with_audio:
        args += ["-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds:g}"]
    args += ["-filter_complex", "[0:v][1:v]concat=n=2:v=1:a=0[v]", "-map", "[v]"]
    if with_audio:
        args += ["-map", "2:a", "-c:a", "aac", "-b:a", "32k"]
    args += ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]
    args += ["-f", "mp4", str(path)]
    _ffmpeg(*args)
    return path


def video_with_location(
    path: Path,
    lat: float,
    lon: float,
    *,
    creation_time: str = "2024-05-01T10:00:00Z",
    make: str | None = None,
    model: str | None = None,
) -> Path:
    """An MP4 with a location and a creation time, as an Android phone records them.

    Verified with ffmpeg 5.1 and exiftool 12.57: in MP4, `-metadata location=` (ISO 6709)
    becomes a 3GPP `loci` box, which exiftool reads as Composite:GPSLatitude/Longitude with
    the box's always-present altitude (0 here) and 16.16 fixed-point precision (~1e-5
    degrees). `make`/`model` go into the Android keys (com.android.manufacturer/model), which
    ffmpeg writes only with `use_metadata_tags`; that flag also copies the location into the
    `mdta` keys. Real Android ©xyz atoms are read as QuickTime:GPSCoordinates instead.
    """
    location = f"{lat:+08.4f}{lon:+09.4f}/"
    args = [
        "-f", "lavfi", "-i", "testsrc2=size=64x48:rate=10:duration=0.5",
        "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
        "-metadata", f"location={location}",
        "-metadata", f"creation_time={creation_time}",
    ]
    if make is not None:
        args += ["-metadata", f"com.android.manufacturer={make}"]
    if model is not None:
        args += ["-metadata", f"com.android.model={model}"]
    if make is not None or model is not None:
        args += ["-movflags", "use_metadata_tags"]
    _ffmpeg(*args, "-f", "mp4", str(path))
    return path


def rotated_video(path: Path, degrees_clockwise: int = 90) -> Path:
    """An MP4 whose video track carries a display matrix, as a phone held upright writes it.

    FFmpeg 5.1 has no option to write one, so the identity matrix of the `tkhd` box is
    replaced in place (ISO/IEC 14496-12 8.3.2: a 3x3 matrix of 16.16 and 2.30 fixed point).
    """
    _ffmpeg(
        "-f", "lavfi", "-i", "testsrc2=size=64x48:rate=10:duration=0.5",
        "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-f", "mp4", str(path),
    )
    one, unity = 0x10000, 0x40000000
    cos_sin = {0: (one, 0), 90: (0, one), 180: (-one, 0), 270: (0, -one)}[degrees_clockwise % 360]
    cos, sin = cos_sin
    matrix = struct.pack(">9i", cos, sin, 0, -sin, cos, 0, 0, 0, unity)
    data = bytearray(path.read_bytes())
    at = data.index(b"tkhd")
    version = data[at + 4]
    # After the type: version+flags (4), times and ids (20 or 32), reserved (8), layer,
    # alternate group, volume, reserved (8), then the matrix.
    matrix_at = at + 4 + 4 + (32 if version == 1 else 20) + 8 + 8
    data[matrix_at : matrix_at + 36] = matrix
    path.write_bytes(bytes(data))
    return path


def audio_wav(path: Path, seconds: float = 1.0) -> Path:
    """A short mono WAV tone."""
    _ffmpeg(
        "-f", "lavfi", "-i", f"sine=frequency=300:duration={seconds:g}",
        "-ac", "1", "-ar", "8000", "-f", "wav", str(path),
    )
    return path


def audio_ogg_opus(path: Path, text: str = "مرحبا بكم") -> Path:
    """A short Arabic voice note in Ogg/Opus, as WhatsApp sends them (espeak-ng, or a tone).

    espeak-ng is the design's speech source; without it the note is a sine tone, which is
    all the probe and metadata stages need.
    """
    wav = path.with_suffix(".src.wav")
    if shutil.which("espeak-ng"):
        subprocess.run(["espeak-ng", "-v", "ar", "-w", str(wav), text], check=True, timeout=60)
    else:
        audio_wav(wav)
    _ffmpeg("-i", str(wav), "-c:a", "libopus", "-b:a", "16k", "-f", "ogg", str(path))
    wav.unlink()
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
