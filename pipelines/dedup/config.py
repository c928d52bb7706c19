"""The matching settings, in a module of their own: candidate search and video alignment
both read them, and the saved index is valid only for the settings it was built with."""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.dedup.index import EXACT_UP_TO


@dataclass(frozen=True)
class MatchConfig:
    """When two items count as the same picture.

    `threshold`: PDQ Hamming distance (ThreatExchange's default, 31; at most 32 keeps the index
    exact). `min_quality`: hashes under it (flat or blank pictures) are kept but never matched.
    A match between different crops needs keypoints to agree, or, where a picture is too
    plain to have keypoints, a distance within `untextured_threshold`.
    Videos match when at least `video_min_fraction` of the shorter one's sampled frames, and
    at least `video_min_frames` of them, agree on one time offset within `offset_tolerance_s`.
    """

    threshold: int = 31
    min_quality: int = 50
    video_min_frames: int = 3
    video_min_fraction: float = 0.5
    offset_tolerance_s: float = 1.0
    #: A crop match between pictures too plain for a keypoint check links only this close.
    untextured_threshold: int = 16

    def __post_init__(self) -> None:
        if not 0 <= self.threshold <= EXACT_UP_TO:
            raise ValueError(
                f"threshold must be 0..{EXACT_UP_TO} for an exact search, got {self.threshold}"
            )
