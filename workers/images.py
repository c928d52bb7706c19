"""Decoding photos for analysis: upright, 8-bit RGB, and no larger than the analysis needs.

A 12 MP JPEG decoded in full costs far more than any perceptual hash computed from it, and
hashes work on a few hundred pixels a side, so JPEGs are decoded at 1/2, 1/4 or 1/8 scale in
the DCT domain (Pillow's draft mode) and other formats are box-reduced after decoding. The
pixel limit is checked from the header before a single pixel is decoded.
"""

from __future__ import annotations

import struct
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pillow_heif
from PIL import Image, ImageFile, UnidentifiedImageError

from workers.base import FailureReason, StageError

# Phones write HEIC; every process that decodes photos (each Ray actor, the matcher's keypoint
# check, `qarina similar`) must know the format, not only the probe's.
pillow_heif.register_heif_opener()

U8 = npt.NDArray[np.uint8]

#: Pillow's own decompression-bomb limit (a 1024 MiB 24-bit image divided by 4 and 3).
DEFAULT_MAX_PIXELS = 178_956_970
#: A JPEG is decoded reduced (`draft`: its DCT scaled to 1/2, 1/4 or 1/8 a side) to the size
#: analysis needs, so four times the limit's pixels cost less memory than a full-size picture
#: at the limit. That lets 200-megapixel phone photos (16,320 x 12,240) in; a PNG or HEIC that
#: size, decoded whole, stays refused.
JPEG_PIXEL_ALLOWANCE = 4
# Pillow refuses past twice its module-wide limit when it opens a file, before any check of
# ours could run: raised so that the per-format limits below decide.
Image.MAX_IMAGE_PIXELS = DEFAULT_MAX_PIXELS * JPEG_PIXEL_ALLOWANCE // 2
#: Pillow's names of JPEG files (MPO: a phone's JPEG with more pictures after it).
_DRAFTABLE = frozenset({"JPEG", "MPO"})

#: Modes holding more than 8 bits per sample: converting them with Pillow clips at 255
#: (a 16-bit PNG would turn white), so they are scaled instead.
_WIDE_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})

_ORIENTATION = 0x0112
#: EXIF orientation -> the transpose that shows the picture upright (as ImageOps does).
_ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

#: What Pillow and its plugins raise on a file they cannot read (pillow-heif: EOFError; the
#: AVIF plugin passes libavif's RuntimeError on, for a damaged container at open and damaged
#: pixel data at decode: found by `make fuzz`, tests/hardening/fuzz_regressions/avif-*.bin).
UNREADABLE = (
    UnidentifiedImageError,
    OSError,
    EOFError,
    SyntaxError,
    ValueError,
    RuntimeError,
    struct.error,
)


@dataclass
class DecodedImage:
    """Pixels as a viewer sees them (possibly smaller than the file's), and what decoding
    noticed on the way: `truncated` (the file ends early; the decoded part is used),
    `orientation_unreadable` (malformed EXIF; the stored pixels are used as they are).
    """

    image: Image.Image
    flags: list[str] = field(default_factory=list)


def check_pixel_limit(
    width: int, height: int, max_pixels: int, image_format: str | None = None
) -> None:
    """Refuse images whose pixel count alone would exhaust a worker's memory: past
    `max_pixels`, or for a JPEG (`image_format` as Pillow names it) past JPEG_PIXEL_ALLOWANCE
    times that.

    Raises:
        StageError: corrupt_media for a non-positive size, resource_limit above the limit.
    """
    if width <= 0 or height <= 0:
        raise StageError(FailureReason.CORRUPT_MEDIA, f"image claims {width}x{height} pixels")
    if image_format in _DRAFTABLE:
        max_pixels *= JPEG_PIXEL_ALLOWANCE
    if width * height > max_pixels:
        raise StageError(
            FailureReason.RESOURCE_LIMIT,
            f"decompression bomb: {width}x{height} pixels exceeds {max_pixels}",
            retryable=False,
        )


@contextmanager
def quiet_bomb_warning() -> Iterator[None]:
    with warnings.catch_warnings():
        # Pillow warns between its limit and twice its limit; callers apply their own limit.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield


@contextmanager
def _tolerate_truncation() -> Iterator[None]:
    """Let Pillow return the rows a cut-off file holds (a process-wide switch, so restored)."""
    before = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = before


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in _WIDE_MODES:
        samples = np.asarray(image, dtype=np.float64)
        if image.mode != "F" and samples.max(initial=0) > 255:
            samples = samples / 257.0
        grey = np.clip(np.rint(samples), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    return image.convert("RGB")


def _reduce(image: Image.Image, min_side: int) -> Image.Image:
    """Box-reduce by a whole factor while the shorter side stays at least `min_side`."""
    factor = min(image.size) // min_side
    return image.reduce(factor) if factor >= 2 else image


def decode_for_analysis(path: Path, *, min_side: int, max_pixels: int) -> DecodedImage:
    """Open a photo upright in RGB, with its shorter side at least `min_side` where it has one.

    EXIF orientation is applied exactly once: pillow-heif already turns HEIC pixels upright
    and resets the tag to 1, so no transpose follows for them.

    Raises:
        StageError: resource_limit for a decompression bomb, corrupt_media when the file
            cannot be decoded at all.
    """
    flags: list[str] = []
    try:
        with quiet_bomb_warning(), Image.open(path) as opened:
            check_pixel_limit(*opened.size, max_pixels, opened.format)
            if opened.format in _DRAFTABLE:
                opened.draft("RGB", (min_side, min_side))
            try:
                opened.load()
            except OSError:
                with _tolerate_truncation():
                    opened.load()
                flags.append("truncated")
            try:
                # Read from the file's own image: TIFF tags do not survive reduce() or copy().
                orientation = opened.getexif().get(_ORIENTATION, 1)
            except UNREADABLE:
                orientation = 1
                flags.append("orientation_unreadable")
            image = _reduce(opened, min_side).copy()
        method = _ORIENTATION_TRANSPOSE.get(orientation)
        upright = image.transpose(method) if method is not None else image
        rgb = _to_rgb(upright)
    except Image.DecompressionBombError as error:
        raise StageError(
            FailureReason.RESOURCE_LIMIT, f"decompression bomb: {error}", retryable=False
        ) from None
    except UNREADABLE as error:
        raise StageError(
            FailureReason.CORRUPT_MEDIA, f"image does not decode: {type(error).__name__}"
        ) from None
    return DecodedImage(rgb, flags)


def pixels(image: Image.Image) -> U8:
    """The image as a contiguous H x W x 3 uint8 array, which pdqhash requires."""
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8))
