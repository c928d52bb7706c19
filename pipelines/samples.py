"""Generated media for the demo and the benchmarks: photos with EXIF and GPS, video, speech.

Everything is made on the spot (Pillow + piexif, ffmpeg lavfi, espeak-ng), so the demo needs no
data files and shows what real material looks like to the pipeline.
"""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
from fractions import Fraction
from pathlib import Path

import numpy as np
import piexif
from PIL import Image

_TOOL_TIMEOUT_S = 120


def _rational(value: float, denominator: int = 10_000) -> tuple[int, int]:
    fraction = Fraction(value).limit_denominator(denominator)
    return fraction.numerator, fraction.denominator


def _dms(degrees: float) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    degrees = abs(degrees)
    whole = int(degrees)
    minutes_float = (degrees - whole) * 60
    minutes = int(minutes_float)
    seconds = (minutes_float - minutes) * 60
    return (whole, 1), (minutes, 1), _rational(seconds, 1000)


def exif_bytes(
    *,
    make: str = "Samsung",
    model: str = "SM-A515F",
    taken: dt.datetime | None = None,
    gps: tuple[float, float, float] | None = None,
    orientation: int = 1,
) -> bytes:
    """An EXIF block as a phone writes it: device, local capture time with offset, GPS."""
    zeroth: dict[int, object] = {
        piexif.ImageIFD.Make: make.encode(),
        piexif.ImageIFD.Model: model.encode(),
        piexif.ImageIFD.Orientation: orientation,
    }
    exif: dict[int, object] = {}
    if taken is not None:
        stamp = taken.strftime("%Y:%m:%d %H:%M:%S").encode()
        exif[piexif.ExifIFD.DateTimeOriginal] = stamp
        exif[piexif.ExifIFD.DateTimeDigitized] = stamp
        if taken.utcoffset() is not None:
            offset = taken.strftime("%z")
            exif[piexif.ExifIFD.OffsetTimeOriginal] = f"{offset[:3]}:{offset[3:]}".encode()
    gps_ifd: dict[int, object] = {}
    if gps is not None:
        lat, lon, alt = gps
        gps_ifd = {
            piexif.GPSIFD.GPSLatitudeRef: b"N" if lat >= 0 else b"S",
            piexif.GPSIFD.GPSLatitude: _dms(lat),
            piexif.GPSIFD.GPSLongitudeRef: b"E" if lon >= 0 else b"W",
            piexif.GPSIFD.GPSLongitude: _dms(lon),
            piexif.GPSIFD.GPSAltitudeRef: 0 if alt >= 0 else 1,
            piexif.GPSIFD.GPSAltitude: _rational(abs(alt), 100),
        }
    return bytes(piexif.dump({"0th": zeroth, "Exif": exif, "GPS": gps_ifd}))


def photo(
    path: Path,
    *,
    size: tuple[int, int] = (1280, 960),
    seed: int = 0,
    exif: bytes | None = None,
    quality: int = 90,
) -> Path:
    """A JPEG with camera-like content (smooth gradients plus noise), optionally with EXIF."""
    rng = np.random.default_rng(seed)
    width, height = size
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    phase = rng.uniform(0, 6.28, 3)
    channels = [
        127 + 100 * np.sin(x / (width / (2 + i)) + y / (height / (3 - i * 0.5)) + phase[i])
        for i in range(3)
    ]
    pixels = np.stack(channels, axis=-1) + rng.normal(0, 12, (height, width, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    options: dict[str, object] = {"quality": quality}
    if exif is not None:
        options["exif"] = exif
    image.save(path, "JPEG", **options)
    return path


def _run(argv: list[str]) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=_TOOL_TIMEOUT_S)


def speech_wav(path: Path, text: str = "مرحبا، هذا اختبار للنظام", voice: str = "ar") -> Path:
    """Arabic speech from espeak-ng, written as WAV."""
    _run(["espeak-ng", "-v", voice, "-w", str(path), "--", text])
    return path


def video_with_cuts(path: Path, *, speech: Path | None, seconds_per_shot: int = 2) -> Path:
    """An H.264 MP4 of three visibly different shots (hard cuts), with speech or without audio."""
    shots = ["testsrc2", "smptebars", "mandelbrot"]
    argv = ["ffmpeg", "-hide_banner", "-y"]
    for source in shots:
        argv += ["-f", "lavfi", "-t", str(seconds_per_shot), "-i", f"{source}=size=320x240:rate=25"]
    if speech is not None:
        argv += ["-i", str(speech)]
    concat = "".join(f"[{i}:v]" for i in range(len(shots))) + f"concat=n={len(shots)}:v=1:a=0[v]"
    argv += ["-filter_complex", concat, "-map", "[v]"]
    if speech is not None:
        argv += ["-map", f"{len(shots)}:a", "-c:a", "aac", "-shortest"]
    argv += ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-preset", "veryfast", str(path)]
    _run(argv)
    return path


def voice_note(path: Path, speech: Path) -> Path:
    """A WhatsApp-style voice note: Opus in Ogg, 16 kHz mono."""
    _run(
        [
            "ffmpeg",
            "-hide_banner",
            "-y",
            "-i",
            str(speech),
            "-ac",
            "1",
            "-ar",
            "16000",
            "-c:a",
            "libopus",
            "-b:a",
            "24k",
            str(path),
        ]
    )
    return path


def truncated_copy(source: Path, path: Path, keep: float = 0.5) -> Path:
    """The first part of a file only: what a broken transfer leaves."""
    data = source.read_bytes()
    path.write_bytes(data[: max(1, int(len(data) * keep))])
    return path


def html_page(path: Path) -> Path:
    """A web page saved under a media extension, as browsers' 'save as' often does."""
    path.write_text("<!DOCTYPE html><html><head><title>video</title></head><body>x</body></html>\n")
    return path


def copy(source: Path, path: Path) -> Path:
    shutil.copyfile(source, path)
    return path
