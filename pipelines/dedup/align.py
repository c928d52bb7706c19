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


def align(
    hits: list[FrameHit], mine: int, theirs: int, config: MatchConfig
) -> tuple[float, float, float, dict[str, Any]] | None:
    """The time offset most sampled frames agree on, if enough of them do.

    Returns (median distance, my start, their start, details) of the frames aligned at the
    best offset, or None when too few agree for the shorter video.
    """
    shorter = max(1, min(mine, theirs))
    needed = max(
        min(config.video_min_frames, shorter), math.ceil(config.video_min_fraction * shorter)
    )
    offsets = np.array([their_t - my_t for my_t, their_t, _ in hits])
    best_support, best_centre, best_members = 0, 0.0, np.zeros(len(hits), dtype=bool)
    for centre in np.unique(np.round(offsets)):
        members = np.abs(offsets - centre) <= config.offset_tolerance_s
        support = len({hits[at][0] for at in np.flatnonzero(members)})
        # Ties (a static scene matches at every offset) go to the smallest shift.
        if support > best_support or (support == best_support and abs(centre) < abs(best_centre)):
            best_support, best_centre, best_members = support, float(centre), members
    if best_support < max(1, needed):
        return None
    chosen = [hits[at] for at in np.flatnonzero(best_members)]
    offset = float(np.median(offsets[best_members]))
    my_times = sorted({my_t for my_t, _, _ in chosen})
    return (
        float(np.median([distance for _, _, distance in chosen])),
        my_times[0],
        round(my_times[0] + offset, 3),
        {
            "offset_s": round(offset, 3),
            "frames_matched": best_support,
            "frames_compared": shorter,
            "overlap_s": round(my_times[-1] - my_times[0], 3),
        },
    )
