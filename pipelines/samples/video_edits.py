"""The edits a video goes through on its way back to an archive, made with ffmpeg from a real one.

Footage is re-posted trimmed, re-encoded at another frame rate, played faster or slower (a
common way to slip past matching), and stills are taken from it, then resized, recompressed
or cropped. Each maker writes one copy and says what it did, so a test or an evaluation can
check that the link found says the same (offset, speed, time of the still).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipelines.samples._tools import ffmpeg
from pipelines.samples.videos import x264


@dataclass(frozen=True)
class Edit:
    """One copy of a video and what was done to make it.

    For a video: its time t shows the original's `offset_s + speed x t`. For a still: it is
    the original's frame at `at_s`, then resized by `scale` and cropped by `crop` per side.
    """

    path: Path
    kind: str
    offset_s: float = 0.0
    speed: float = 1.0
    at_s: float | None = None
    scale: float = 1.0
    crop: float = 0.0


def trimmed(source: Path, path: Path, start_s: float, seconds: float) -> Edit:
    """A cut of `seconds` from `start_s`, re-encoded at the original size."""
    ffmpeg("-ss", f"{start_s:g}", "-i", str(source), "-t", f"{seconds:g}", "-an", *x264(path))
    return Edit(path, "trimmed", offset_s=start_s)


def refps(source: Path, path: Path, fps: int) -> Edit:
    """The whole video re-encoded at `fps` frames a second (frames dropped or repeated)."""
    ffmpeg("-i", str(source), "-an", "-r", str(fps), *x264(path))
    return Edit(path, f"fps{fps}")


def sped(source: Path, path: Path, speed: float) -> Edit:
    """The whole video played `speed` times as fast (under 1: slower), at its frame rate."""
    ffmpeg("-i", str(source), "-an", *x264(path, "-vf", f"setpts=PTS/{speed:g}"))
    return Edit(path, f"speed{speed:g}", speed=speed)


def still(source: Path, path: Path, at_s: float, *, scale: float = 1.0, crop: float = 0.0,
          quality: int = 4) -> Edit:  # fmt: skip
    """The frame shown at `at_s` as a JPEG (`quality` is ffmpeg's -q:v, 2 best), resized by
    `scale` and then cropped by `crop` of its size on every side."""
    keep = 1 - 2 * crop
    picture = f"scale=trunc(iw*{scale:g}/2)*2:-2,crop=trunc(iw*{keep:g}):trunc(ih*{keep:g})"
    ffmpeg(
        "-ss", f"{at_s:g}", "-i", str(source), "-frames:v", "1", "-vf", picture,
        "-q:v", str(quality), str(path),
    )  # fmt: skip
    kind = "still" + ("-resized" if scale != 1 else "") + ("-cropped" if crop else "")
    return Edit(path, kind, at_s=at_s, scale=scale, crop=crop)
