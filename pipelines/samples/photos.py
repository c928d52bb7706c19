"""Photos: EXIF as phones write it, camera-like and photo-like pictures, and people's copies."""

from __future__ import annotations

import datetime as dt
from fractions import Fraction
from pathlib import Path
from typing import Literal

import numpy as np
import piexif
from PIL import Image, ImageDraw


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


def striped(
    path: Path,
    *,
    size: tuple[int, int] = (640, 480),
    exif: bytes | None = None,
    image_format: Literal["JPEG", "PNG"] = "JPEG",
    quality: int = 70,
) -> Path:
    """Yellow stripes on blue: quick to make, for stages that read headers, not pictures.

    Without `exif` it is a JPEG as messaging apps send it after stripping metadata; a PNG
    ignores `quality`.
    """
    width, height = size
    image = Image.new("RGB", size, (40, 90, 160))
    for x in range(0, width, 16):
        image.paste((220, 200, 40), (x, 0, min(x + 8, width), height))
    image.save(path, image_format, quality=quality, exif=exif or b"")
    return path


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
    image.save(path, "JPEG", quality=quality, exif=exif or b"")
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


def scene_jpeg(
    path: Path, seed: int, size: tuple[int, int] = (640, 480), quality: int = 90
) -> Path:
    """A photo-like picture (see `scene`): unrelated for different seeds."""
    scene(seed, size).save(path, "JPEG", quality=quality)
    return path


def cropped(source: Path, path: Path, sides: tuple[float, float, float, float]) -> Path:
    """A copy with fractions cut from the left, top, right and bottom, recompressed."""
    with Image.open(source) as image:
        width, height = image.size
        left, top, right, bottom = sides
        box = (round(width * left), round(height * top),
               width - round(width * right), height - round(height * bottom))  # fmt: skip
        image.crop(box).save(path, "JPEG", quality=80)
    return path


def letterboxed(source: Path, path: Path, bar_fraction: float = 0.15) -> Path:
    """The picture on a black canvas with bars above and below (a re-posted screenshot)."""
    with Image.open(source) as image:
        bar = round(image.height * bar_fraction)
        canvas = Image.new("RGB", (image.width, image.height + 2 * bar), (0, 0, 0))
        canvas.paste(image.convert("RGB"), (0, bar))
        canvas.save(path, "JPEG", quality=85)
    return path
