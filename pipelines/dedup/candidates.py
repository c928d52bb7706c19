"""Candidate search: which indexed items an item's hashes come near, and as what kind of match.

An item is searched with more hashes than the index holds of it: the dihedral turns of its
whole pictures find mirrored and turned copies, and a photo's crop probes find cropped ones
(see the hashes stage). Still pictures keep their closest hit per pair of items; videos keep
a few hits per sampled frame and are aligned by time offset. A candidate is not yet a link:
one found between different crops must be confirmed by keypoints first (see the matcher).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from pipelines.dedup.align import HITS_KEPT, FrameHit, align, closest_per_frame
from pipelines.dedup.config import MatchConfig
from pipelines.dedup.index import PDQ_BITS, SOURCES, U8, HashIndex, pdq_bytes
from workers.hashes import DIHEDRAL, INNER, STRIPPED, HashEntry


@dataclass(frozen=True)
class Probe:
    """One query hash: which entry of the querying item, turned which way."""

    entry: HashEntry
    orientation: str
    code: U8


def matchable(entries: Iterable[HashEntry], config: MatchConfig) -> list[HashEntry]:
    return [entry for entry in entries if entry.quality >= config.min_quality]


#: The `via` name of a hit found by one of a photo's crop probes.
PROBE = "probe"


def probes_of(entries: Iterable[HashEntry]) -> list[Probe]:
    """Every hash an item is searched with: the dihedral hashes of whole pictures find
    mirrored and turned copies, crop probes find cropped ones; stored crops and sampled
    frames are searched as they are."""
    found = []
    for entry in entries:
        found.append(Probe(entry, DIHEDRAL[0], pdq_bytes(entry.pdq)))
        for name, other in zip(DIHEDRAL[1:], entry.dihedral or (), strict=False):
            found.append(Probe(entry, name, pdq_bytes(other)))
        if entry.probes:
            probing = replace(entry, variant=PROBE)
            step = PDQ_BITS // 4
            for start in range(0, len(entry.probes), step):
                code = pdq_bytes(entry.probes[start : start + step])
                found.append(Probe(probing, DIHEDRAL[0], code))
    return found


#: Sources of a video's hashes of its own frames: "sample" (one a second, what videos are
#: aligned by) and "frame" (frames between, hashed where the picture moved, and centre crops).
_VIDEO_FRAMES = frozenset({"sample", "frame"})


def _pair_kind(mine: str, theirs: str) -> str | None:
    """What a hit between two sources links: stills to stills, stills to a video's keyframes
    (stored pictures, so a crop match can be confirmed), stills to any frame of a video (the
    frame decoded again to confirm it), or videos by their sampled frames."""
    pair = {mine, theirs}
    if pair == {"photo"}:
        return "photo-photo"
    if pair == {"photo", "keyframe"}:
        return "keyframe-photo"
    if "photo" in pair and pair & _VIDEO_FRAMES:
        return "frame-photo"
    if pair <= _VIDEO_FRAMES:
        return "video-video"
    return None


def _is_plain(via: Sequence[str]) -> bool:
    """Like compared with like, of the whole picture or a centre crop: plain PDQ evidence.
    A part of a picture (`inner15`, `strip`) may be shared by two different pictures (one
    backdrop, two captions), so a hit through one is confirmed with keypoints even like
    with like."""
    return len(set(via)) == 1 and not via[0].startswith((INNER, STRIPPED))


@dataclass
class _Best:
    """The closest hit between one item and another, for still pictures."""

    distance: int
    mine: HashEntry
    theirs: tuple[str, str, float]
    orientation: str

    @property
    def rank(self) -> tuple[bool, int]:
        """Like compared with like (whole with whole, crop with the same crop) is the plain
        PDQ evidence and wins over any closer hit that would need keypoints."""
        return not _is_plain([self.mine.variant, self.theirs[1]]), self.distance


@dataclass(frozen=True)
class Candidate:
    """A match of a querying item with a stored one, before it is put in stored order."""

    other: str
    kind: str
    distance: float
    my_time_s: float | None
    other_time_s: float | None
    details: dict[str, Any]
    #: The keyframe of the querying item that matched, when one did.
    my_artifact: str | None = None

    @property
    def needs_keypoints(self) -> bool:
        """A still match between different crops must be confirmed: it is what the crop
        probes find, and the whole pictures are far apart; so must one through a part of
        the pictures (see `_is_plain`)."""
        return self.kind != "video-video" and not _is_plain(self.details.get("via", ()))


def find_matches(
    index: HashIndex, usable: Sequence[HashEntry], config: MatchConfig, exclude: str | None
) -> list[Candidate]:
    """Stored items that match an item with these `matchable` hash entries (itself,
    `exclude`, left out)."""
    probes = probes_of(usable)
    if not probes:
        return []
    codes = np.stack([probe.code for probe in probes])
    samples = sum(entry.source == "sample" for entry in usable)
    stills: dict[tuple[str, str], _Best] = {}
    frames: dict[str, list[FrameHit]] = defaultdict(list)
    excluded = index.item_number(exclude) if exclude else -1
    for row, entry_id, distance in index.search(codes, config.threshold):
        item = index.item_of[entry_id]
        if item == excluded:
            continue
        probe = probes[row]
        source = SOURCES[index.source_of[entry_id]]
        kind = _pair_kind(probe.entry.source, source)
        if kind is None:
            continue
        other = index.shas[item]
        other_time = index.time_of[entry_id]
        variant = index.variants[index.variant_of[entry_id]]
        if kind == "video-video":
            if probe.entry.t is None or probe.entry.variant != variant:
                continue  # whole with whole, crop with crop; a frame without time cannot align
            hits = frames[other]
            hits.append((float(probe.entry.t), float(other_time), distance))
            if len(hits) > HITS_KEPT * (samples + 1):
                frames[other] = closest_per_frame(hits)
            continue
        hit = _Best(distance, probe.entry, (source, variant, other_time), probe.orientation)
        best = stills.get((other, kind))
        if best is None or hit.rank < best.rank:
            stills[(other, kind)] = hit
    found = [_still_candidate(other, kind, best) for (other, kind), best in stills.items()]
    for other, hits in frames.items():
        theirs = index.samples_of[index.item_number(other)]
        aligned = align(closest_per_frame(hits), samples, theirs, config)
        if aligned is not None:
            found.append(Candidate(other, "video-video", *aligned))
    return found


def _still_candidate(other: str, kind: str, best: _Best) -> Candidate:
    source, variant, other_time = best.theirs
    details = {
        "via": [best.mine.variant, variant],
        "sources": [best.mine.source, source],
        "orientation": best.orientation,
    }
    mine_t = best.mine.t
    return Candidate(
        other,
        kind,
        float(best.distance),
        None if mine_t is None else float(mine_t),
        None if math.isnan(other_time) else round(float(other_time), 3),
        details,
        best.mine.artifact,
    )
