"""Video-to-video matching by time offset.

Videos are compared by their frames sampled at a fixed interval, whose times the hashes stage
keeps: a clip cut out of a longer video has many sampled frames near the longer one's, all
at one time offset. Counting the frames that agree on one offset tells such a clip from two
videos that merely share a few pictures (a logo, a black screen).
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np
import numpy.typing as npt

from pipelines.dedup.config import MatchConfig

#: (my time, their time, distance) of one sampled frame of mine near one of theirs.
FrameHit = tuple[float, float, int]

#: Hits kept per sampled frame when aligning two videos.
HITS_KEPT = 8


def closest_per_frame(hits: list[FrameHit]) -> list[FrameHit]:
    """At most `HITS_KEPT` hits per sampled frame of the querying video, the closest: a
    static scene matches every frame of a long static video, and voting needs only a few."""
    by_frame: dict[float, list[FrameHit]] = defaultdict(list)
    for hit in hits:
        by_frame[hit[0]].append(hit)
    return [
        hit
        for frame_hits in by_frame.values()
        for hit in sorted(frame_hits, key=lambda h: h[2])[:HITS_KEPT]
    ]


#: Playback speeds tried, as their seconds per second of mine: copies are re-posted sped up
#: or slowed down (0.8-1.25x) to slip past matching, and either one may be the query.
_SLOWEST, _FASTEST = 0.75, 1.34
#: A fitted speed this close to 1 is an ordinary copy (frame timing jitter, not an edit).
_SPEED_NOISE = 0.03


def _speeds(span_s: float, tolerance_s: float) -> npt.NDArray[np.float64]:
    """Speeds on a grid fine enough that over `span_s` seconds the nearest one drifts less
    than `tolerance_s` from the true one; 1 always among them."""
    steps = math.ceil(math.log(_FASTEST / _SLOWEST) * max(span_s, 1.0) / tolerance_s)
    grid = np.geomspace(_SLOWEST, _FASTEST, min(max(steps, 2), 2000) + 1)
    return np.unique(np.append(grid, 1.0))


def align(
    hits: list[FrameHit], mine: int, theirs: int, config: MatchConfig
) -> tuple[float, float, float, dict[str, Any]] | None:
    """The speed and time offset most sampled frames agree on, if enough of them do.

    Each second of my video votes once per (speed, offset) bin it has a hit in; bins are
    `2 x offset_tolerance_s` wide, at two phases, so any window of that width around a true
    offset is one bin's. Ties go to the speed nearest 1, then to the smallest shift (a static
    scene matches at every offset). The speed is then fitted to the agreeing frames and
    reported only where it differs from 1 by more than timing noise.

    Returns (median distance, my start, their start, details) of the frames aligned, or None
    when too few agree for the shorter video.
    """
    shorter = max(1, min(mine, theirs))
    needed = max(1, config.video_min_frames if shorter >= config.video_min_frames else shorter,
                 math.ceil(config.video_min_fraction * shorter))  # fmt: skip
    table = np.array(hits, dtype=np.float64).reshape(-1, 3)
    my_t, their_t = table[:, 0], table[:, 1]
    # My frames vote by the second they fall in: between samples a moving video has frames
    # of its own hashed too, and one second counts once, as one sample would.
    frames, frame_of = np.unique(np.floor(my_t + 1e-6), return_inverse=True)
    if len(frames) < needed:
        return None
    width = 2 * config.offset_tolerance_s
    best: tuple[tuple[int, float, float], npt.NDArray[np.bool_]] | None = None
    for speed in _speeds(float(np.ptp(my_t)), config.offset_tolerance_s):
        offsets = their_t - speed * my_t
        for phase in (0.0, config.offset_tolerance_s):
            bins = np.floor((offsets - phase) / width).astype(np.int64)
            bins -= bins.min()
            votes = np.unique(bins * len(frames) + frame_of) // len(frames)
            tally = np.bincount(votes)
            top = int(tally.max())
            for number in np.flatnonzero(tally == top):
                members = bins == number
                centre = float(np.median(offsets[members]))
                rank = (top, -abs(math.log(speed)), -abs(centre))
                if best is None or rank > best[0]:
                    best = (rank, members)
    assert best is not None
    (support, _, _), members = best
    if support < needed:
        return None
    chosen = table[members]
    speed, offset = _fit(chosen)
    my_times = np.unique(chosen[:, 0])
    details: dict[str, Any] = {
        "offset_s": round(offset, 3),
        "frames_matched": support,
        "frames_compared": shorter,
        "overlap_s": round(float(my_times[-1] - my_times[0]), 3),
    }
    if speed != 1.0:
        details["speed"] = round(speed, 3)
    return (
        float(np.median(chosen[:, 2])),
        float(my_times[0]),
        round(float(speed * my_times[0] + offset), 3),
        details,
    )


def _fit(chosen: npt.NDArray[np.float64]) -> tuple[float, float]:
    """(speed, offset) of the line their time = speed x my time + offset through the aligned
    hits, each of my frames by its closest hit; speed 1 (offset the median) unless a fitted
    speed stands clear of timing noise."""
    order = np.lexsort((chosen[:, 2], chosen[:, 0]))
    ordered = chosen[order]
    first = np.concatenate(([True], np.diff(ordered[:, 0]) > 0))
    my_t, their_t = ordered[first, 0], ordered[first, 1]
    offset = float(np.median(their_t - my_t))
    if len(my_t) < 3 or float(np.ptp(my_t)) <= 0:
        return 1.0, offset
    slope, intercept = np.polyfit(my_t, their_t, 1)
    if abs(float(slope) - 1.0) <= _SPEED_NOISE or not _SLOWEST <= slope <= _FASTEST:
        return 1.0, offset
    return float(slope), float(intercept)
