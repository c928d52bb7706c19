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
from PIL import Image, ImageDraw

_TOOL_TIMEOUT_S = 120


def _rational(value: float, denominator: int = 1_000_000) -> tuple[int, int]:
    fraction = Fraction(value).limit_denominator(denominator)
    return fraction.numerator, fraction.denominator


def _dms(value: float) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    value = abs(value)
    degrees = int(value)
    minutes = int((value - degrees) * 60)
    seconds = (value - degrees - minutes / 60) * 3600
    return (degrees, 1), (minutes, 1), _rational(seconds, 10_000)


def exif_bytes(
    *,
    make: str | None = "Qarina",
    model: str | None = "TestCam 1",
    datetime_original: str | dt.datetime | None = "2024:03:05 14:30:15",
    offset: str | None = None,
    create_date: str | None = None,
    gps: tuple[float, float, float | None] | None = None,
    gps_datetime: tuple[str, tuple[int, int, int]] | None = None,
    orientation: int | None = 1,
) -> bytes:
    """An EXIF block as a phone writes it; None leaves a tag out.

    `datetime_original` is EXIF text ("2024:03:05 14:30:15", or a broken value on purpose) or
    a datetime; an aware datetime also writes its UTC offset as OffsetTimeOriginal.
    """
    if isinstance(datetime_original, dt.datetime):
        if offset is None and datetime_original.utcoffset() is not None:
            sign_hours_minutes = datetime_original.strftime("%z")
            offset = f"{sign_hours_minutes[:3]}:{sign_hours_minutes[3:]}"
        datetime_original = datetime_original.strftime("%Y:%m:%d %H:%M:%S")
    zeroth: dict[int, object] = {}
    exif: dict[int, object] = {}
    gps_ifd: dict[int, object] = {}
    if make is not None:
        zeroth[piexif.ImageIFD.Make] = make.encode()
    if model is not None:
        zeroth[piexif.ImageIFD.Model] = model.encode()
    if orientation is not None:
        zeroth[piexif.ImageIFD.Orientation] = orientation
    if datetime_original is not None:
        exif[piexif.ExifIFD.DateTimeOriginal] = datetime_original.encode()
    if create_date is not None:
        exif[piexif.ExifIFD.DateTimeDigitized] = create_date.encode()
    if offset is not None:
        exif[piexif.ExifIFD.OffsetTimeOriginal] = offset.encode()
    if gps is not None:
        lat, lon, alt = gps
        gps_ifd[piexif.GPSIFD.GPSLatitudeRef] = b"S" if lat < 0 else b"N"
        gps_ifd[piexif.GPSIFD.GPSLatitude] = _dms(lat)
        gps_ifd[piexif.GPSIFD.GPSLongitudeRef] = b"W" if lon < 0 else b"E"
        gps_ifd[piexif.GPSIFD.GPSLongitude] = _dms(lon)
        if alt is not None:
            gps_ifd[piexif.GPSIFD.GPSAltitudeRef] = 1 if alt < 0 else 0
            gps_ifd[piexif.GPSIFD.GPSAltitude] = _rational(abs(alt), 1000)
    if gps_datetime is not None:
        date, (hour, minute, second) = gps_datetime
        gps_ifd[piexif.GPSIFD.GPSDateStamp] = date.encode()
        gps_ifd[piexif.GPSIFD.GPSTimeStamp] = ((hour, 1), (minute, 1), (second, 1))
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


def scene(seed: int, size: tuple[int, int] = (1024, 768)) -> Image.Image:
    """A picture with structure at every scale, as photographs have: smooth random fields from
    coarse to fine plus a few sharp-edged shapes. Different seeds give unrelated pictures (PDQ
    about 128 bits apart) of full PDQ quality, which flat test patterns do not reach.
    """
    rng = np.random.default_rng(seed)
    width, height = size
    field = np.zeros((height, width, 3), dtype=np.float32)
    for cells, weight in ((3, 1.0), (6, 0.7), (12, 0.45), (24, 0.25)):
        coarse = rng.uniform(0, 255, (cells, max(2, cells * width // height), 3)).astype(np.uint8)
        layer = Image.fromarray(coarse, "RGB").resize(size, Image.Resampling.BICUBIC)
        field += weight * np.asarray(layer, dtype=np.float32)
    field = field / 2.4
    image = Image.fromarray(np.clip(field, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x0, y0 = int(rng.uniform(0, width * 0.8)), int(rng.uniform(0, height * 0.8))
        x1 = x0 + int(rng.uniform(width * 0.05, width * 0.3))
        y1 = y0 + int(rng.uniform(height * 0.05, height * 0.3))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.uniform() < 0.5:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        else:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
    return image


def _run(argv: list[str]) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=_TOOL_TIMEOUT_S)


#: A greeting Whisper base hears correctly in espeak-ng's Arabic voice; most phrases come out
#: as inventions it flags, which is honest but makes a poor demonstration.
GREETING = "السلام عليكم"


def speech_wav(path: Path, text: str = GREETING, voice: str = "ar") -> Path:
    """Arabic speech from espeak-ng, written as WAV."""
    _run(["espeak-ng", "-v", voice, "-w", str(path), "--", text])
    return path


def video_with_cuts(
    path: Path,
    *,
    speech: Path | None,
    seconds_per_shot: int = 2,
    tags: dict[str, str] | None = None,
) -> Path:
    """An H.264 MP4 of three visibly different shots (hard cuts), with speech or without audio.

    `tags` become container metadata, as a phone writes them: `creation_time` (UTC) and
    `location` (ISO 6709, which ffmpeg stores as a 3GPP location box).
    """
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
    for key, value in (tags or {}).items():
        argv += ["-metadata", f"{key}={value}"]
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
