"""Where in a video a still was taken: the frame found again by decoding, then compared.

The index holds hashes of a video's frames (one a second, and those between where the
picture moved), not the frames: storing a picture per hash would cost more than every look
at one. A hit between a photo and such a hash says only "near here". The stretch around it
is decoded on demand, every frame B-frames included, each hashed as the stage hashes frames;
the frame closest to the photo gives the time, and ORB keypoints between the photo and that
decoded frame confirm the link, as they confirm a crop match between two photos.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from pipelines.dedup.keypoints import COMPARE_SIDE, KeypointCheck, confirm_copy
from workers.hashes import HashEntry, HashesConfig, frame_hashes, hex_distance
from workers.video import budgeted_counts, frames_between

#: Wall-clock budget of one on-demand decode: a few seconds of video from its keyframe.
_DECODE_BUDGET_S = 30.0


@dataclass(frozen=True)
class StillFound:
    """The frame that matches a still best: its time, PDQ distance, and the keypoint check."""

    t: float
    distance: int
    keypoints: KeypointCheck
    searched_s: tuple[float, float]


def still_hashes(photo: HashEntry, crops: Iterable[HashEntry]) -> tuple[list[str], list[str]]:
    """What a frame is compared with: the photo's whole picture in its eight orientations
    (against the frame's whole), and its crop probes and centre crops (against the frame's
    centre crop, as a photo cropped a little is found)."""
    wholes = [photo.pdq, *(photo.dihedral or ())]
    probes = photo.probes or ""
    cropped = [probes[at : at + 64] for at in range(0, len(probes), 64)]
    return wholes, [photo.pdq, *cropped, *(crop.pdq for crop in crops)]


def frame_distance(frame: list[HashEntry], wholes: list[str], cropped: list[str]) -> int:
    """The closest any of the still's hashes comes to the frame's matching hash."""
    best = math.inf
    for entry in frame:
        against = wholes if entry.variant == "full" else cropped
        best = min(best, *(hex_distance(entry.pdq, other) for other in against))
    return int(best)


def locate_still(
    photo: tuple[Image.Image, list[HashEntry]],
    video: tuple[Path, int],
    around_s: float,
    window_s: float,
    config: HashesConfig,
) -> StillFound | None:
    """The frame within `window_s` of `around_s` that matches the photo best, and whether
    keypoints confirm it; None when the stretch has no frame to decode.

    `photo` is the picture (upright) and its hash entries (whole first); `video` the file and
    its display rotation.

    Raises:
        StageError: when the video no longer decodes or the decode outlasts its budget.
    """
    picture, entries = photo
    whole = next(entry for entry in entries if entry.variant == "full")
    wholes, cropped = still_hashes(whole, [entry for entry in entries if entry is not whole])
    span = (max(0.0, around_s - window_s), around_s + window_s)
    counts = budgeted_counts(0.0, _DECODE_BUDGET_S, 0.0)
    best: tuple[int, float, float, Image.Image] | None = None
    for t, image in frames_between(video[0], video[1], span, COMPARE_SIDE, counts):
        small = _shrunk(image, config.frame_side)
        distance = frame_distance(frame_hashes(small, config, t), wholes, cropped)
        if best is None or (distance, abs(t - around_s)) < best[:2]:
            best = (distance, abs(t - around_s), t, image)
    if best is None:
        return None
    distance, _, t, frame = best
    check = confirm_copy(_at_least(picture, COMPARE_SIDE), _at_least(frame, COMPARE_SIDE))
    return StillFound(round(t, 3), distance, check, span)


def _shrunk(image: Image.Image, side: int) -> Image.Image:
    """The frame at the size the hashes stage hashed it (shorter side at most `side`)."""
    scale = side / min(image.size)
    if scale >= 1:
        return image
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.BILINEAR)


def _at_least(image: Image.Image, side: int) -> Image.Image:
    """The picture enlarged to `side` on its shorter side where it is smaller: ORB looks for
    corners at 31-pixel patches over several scales, and finds too few on a 180-pixel frame
    of a small video (or a thumbnail of it) to judge, where the enlarged copy gives plenty."""
    scale = side / min(image.size)
    if scale <= 1:
        return image
    size = (round(image.width * scale), round(image.height * scale))
    return image.resize(size, Image.Resampling.BICUBIC)
