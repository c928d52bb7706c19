"""The pictures review pages show: made on the server, never the original's bytes.

A reviewer first sees a small greyscale picture blurred beyond recognising detail (reduced
to a few cells a side, then blown up smoothly): enough to tell a crowd from a document, not
a face or a wound. Blurring in the browser with CSS is not protection, since the real pixels
are already on screen when a style sheet fails to load; so the clear version is a separate
file the page fetches only when the reviewer asks for it. The clear version is downscaled
and re-encoded, so it never carries the original's metadata (GPS, device) nor its full
resolution.

Photos are decoded as the stages decode them (`workers.images`): JPEG in draft mode at a
fraction of full size, HEIC through pillow-heif, upright by EXIF, and refused from the header
when the pixel count makes a decompression bomb. A picture that cannot be decoded is shown as
a placeholder, so one broken file never stops a report.
"""

from __future__ import annotations

import io
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from PIL import Image, ImageDraw, ImageFilter

from evidence.schema import artifacts, items
from evidence.store import Store
from workers.base import Kind, StageError
from workers.images import DEFAULT_MAX_PIXELS, decode_for_analysis

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"

#: Longest side of the clear version: enough to judge a scene on a laptop screen.
CLEAR_SIDE = 960
#: The shorter side decoding must reach for CLEAR_SIDE on a 16:9 picture; a 4:3 one is
#: decoded a little larger and shrunk (JPEG draft mode picks the scale from this).
_CLEAR_DECODE_SIDE = 540
#: Longest side of the blurred thumbnail as shown.
BLURRED_SIDE = 160
#: The blurred thumbnail keeps at most this many cells on its longest side: a person in a
#: street scene becomes a smudge of one or two cells.
BLUR_CELLS = 16
#: The decode that is enough for BLUR_CELLS (draft mode at 1/8 on any phone photo).
_BLUR_DECODE_SIDE = 64
#: Smooths the blown-up cells' edges, so no blocky outline hints at a shape.
_BLUR_RADIUS = 4
_JPEG_QUALITY = 82

_SHA = "[0-9a-f]{64}"
_KEY = re.compile(rf"({_SHA})(?:-({_SHA}))?")


@dataclass(frozen=True)
class PictureRef:
    """A picture a review page shows: a photo item itself, or one keyframe of a video item
    (always named with its item: a review of the item decides whether it may be shown)."""

    item_sha256: str
    #: A keyframe artifact of a video; None: the item itself (a photo).
    artifact_sha256: str | None

    @property
    def key(self) -> str:
        """File-name-safe and URL-safe, unique in the store (`find_picture` reads it back)."""
        if self.artifact_sha256 is None:
            return self.item_sha256
        return f"{self.item_sha256}-{self.artifact_sha256}"

    @property
    def blob_sha256(self) -> str:
        return self.artifact_sha256 or self.item_sha256


def find_picture(store: Store, key: str) -> PictureRef | None:
    """The picture `key` names, if the store holds it: a photo item, or a keyframe artifact
    of the item it names. Anything else (another kind of item, another item's artifact, a
    malformed key) is None, so a key from a URL can never reach another blob."""
    matched = _KEY.fullmatch(key)
    if matched is None:
        return None
    item_sha, artifact_sha = matched.groups()
    with store.database.reader.connect() as connection:
        if artifact_sha is None:
            kind = connection.execute(
                sa.select(items.c.kind).where(items.c.sha256 == item_sha)
            ).scalar()
            return PictureRef(item_sha, None) if kind == Kind.PHOTO.value else None
        found = connection.execute(
            sa.select(artifacts.c.id)
            .where(
                artifacts.c.parent_sha256 == item_sha,
                artifacts.c.sha256 == artifact_sha,
                artifacts.c.role == "keyframe",
            )
            .limit(1)
        ).first()
    return None if found is None else PictureRef(item_sha, artifact_sha)


def _decode(store: Store, ref: PictureRef, min_side: int) -> Image.Image | None:
    """The picture upright in RGB, or None when it cannot be decoded (logged by hash)."""
    try:
        return decode_for_analysis(
            store.blobs.path_for(ref.blob_sha256), min_side=min_side, max_pixels=DEFAULT_MAX_PIXELS
        ).image
    except StageError as error:  # a missing blob comes as corrupt_media too
        log.warning(
            "picture %s of item %s not shown: %s",
            ref.blob_sha256,
            ref.item_sha256,
            error.reason.value,
        )
    return None


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    # No exif or icc_profile is passed: the file carries pixels only.
    image.save(buffer, "JPEG", quality=_JPEG_QUALITY)
    return buffer.getvalue()


def _clear(decoded: Image.Image) -> Image.Image:
    clear = decoded.copy()
    clear.thumbnail((CLEAR_SIDE, CLEAR_SIDE), Image.Resampling.LANCZOS)
    return clear


def _blurred(decoded: Image.Image) -> Image.Image:
    """Greyscale, reduced to BLUR_CELLS on its longest side, blown up smoothly, blurred."""
    grey = decoded.convert("L")
    scale = BLURRED_SIDE / max(grey.size)
    shown = (max(1, round(grey.width * scale)), max(1, round(grey.height * scale)))
    cells = BLUR_CELLS / max(grey.size)
    coarse = grey.resize(
        (max(1, round(grey.width * cells)), max(1, round(grey.height * cells))),
        Image.Resampling.BOX,
    )
    return coarse.resize(shown, Image.Resampling.BICUBIC).filter(
        ImageFilter.GaussianBlur(_BLUR_RADIUS)
    )


def _placeholder() -> bytes:
    """What stands for a picture that cannot be decoded: a grey card saying so."""
    card = Image.new("L", (BLURRED_SIDE, BLURRED_SIDE * 3 // 4), 200)
    ImageDraw.Draw(card).text((12, card.height // 2 - 6), "no picture", fill=60)
    return _jpeg(card)


def picture_bytes(store: Store, ref: PictureRef, clear: bool) -> bytes:
    """A JPEG of the picture: the blurred greyscale thumbnail unless `clear`; clear, a
    downscaled copy (CLEAR_SIDE at most). A placeholder when it cannot be decoded."""
    decoded = _decode(store, ref, _CLEAR_DECODE_SIDE if clear else _BLUR_DECODE_SIDE)
    if decoded is None:
        return _placeholder()
    return _jpeg(_clear(decoded) if clear else _blurred(decoded))


def picture_pair(store: Store, ref: PictureRef) -> tuple[bytes, bytes]:
    """(blurred, clear) from one decode: what a static report writes for every picture."""
    decoded = _decode(store, ref, _CLEAR_DECODE_SIDE)
    if decoded is None:
        placeholder = _placeholder()
        return placeholder, placeholder
    clear = _clear(decoded)
    return _jpeg(_blurred(clear)), _jpeg(clear)
