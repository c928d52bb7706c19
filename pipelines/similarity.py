"""Near-duplicate linking: a PDQ index over every stored hash, and the links it finds.

The index is faiss's multi-index hashing (`IndexBinaryMultiHash`): the first 253 bits of
each 256-bit PDQ hash are cut into 11 substrings of 23 bits, each with its own hash table,
and a query probes every table with each substring as it is and with one or two of its bits
flipped. Two hashes within 31 bits differ by at most two bits in at least one of the 11
substrings (11 x 3 = 33 > 31), so every pair within the default threshold is a candidate:
the search is exact, not approximate, and a query touches a few hundred candidates instead
of a million. (16 substrings of 16 bits with one flip is exact too, but its buckets fill up:
a query took 0.25 ms at 100,000 hashes and 0.5 ms at 200,000, growing with the index, where
this layout takes 0.55 ms at a million.)

The index is derived data. It lives in the data folder with a watermark (the last result it
holds), grows as results arrive, and is rebuilt from the store whenever it is missing, stale
or asked for. Links are written to the store; the index never is the record.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import time
from array import array
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt
from PIL import Image

from evidence import matches
from evidence.matches import Link, StoredHashes
from evidence.store import Store
from workers.base import StageError
from workers.hashes import DIHEDRAL
from workers.images import DEFAULT_MAX_PIXELS, decode_for_analysis
from workers.keypoints import COMPARE_SIDE, confirm_copy

log = logging.getLogger(__name__)

PDQ_BITS = 256
_SUBSTRINGS = 11
_SUBSTRING_BITS = 23
#: Bits flipped per probed substring; with 11 substrings this makes the search exact to 32.
_FLIPS = 2
#: The largest threshold the search is exact for: a pair that far apart has a substring
#: with at most _FLIPS differing bits (pigeonhole).
_EXACT_UP_TO = _SUBSTRINGS * (_FLIPS + 1) - 1
#: Hits kept per sampled frame when aligning two videos.
_HITS_KEPT = 8
#: Results re-read below the watermark on each update (see Matcher.update).
_RESCAN_RESULTS = 1000
_SAVE_EVERY_S = 60.0
#: Where each index entry came from, stored as small integers beside the faiss index.
SOURCES = ("photo", "keyframe", "sample")

U8 = npt.NDArray[np.uint8]


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
        if not 0 <= self.threshold <= _EXACT_UP_TO:
            raise ValueError(
                f"threshold must be 0..{_EXACT_UP_TO} for an exact search, got {self.threshold}"
            )


def pdq_bytes(hex_digest: str) -> U8:
    return np.frombuffer(bytes.fromhex(hex_digest), dtype=np.uint8)


def new_faiss_index() -> Any:
    index = faiss.IndexBinaryMultiHash(PDQ_BITS, _SUBSTRINGS, _SUBSTRING_BITS)
    index.nflip = _FLIPS
    return index


@dataclass
class HashIndex:
    """The faiss index and, per entry, which item, source, variant and time it stands for."""

    index: Any = field(default_factory=new_faiss_index)
    shas: list[str] = field(default_factory=list)
    item_of: array[int] = field(default_factory=lambda: array("i"))
    source_of: array[int] = field(default_factory=lambda: array("b"))
    variant_of: array[int] = field(default_factory=lambda: array("b"))
    time_of: array[float] = field(default_factory=lambda: array("d"))
    #: Per item: how many sampled video frames it has in the index (videos match by share).
    samples_of: array[int] = field(default_factory=lambda: array("i"))
    variants: list[str] = field(default_factory=lambda: ["full"])
    _item_ids: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._item_ids = {sha: number for number, sha in enumerate(self.shas)}

    def item_number(self, sha256: str) -> int:
        """The item's number in this index, -1 when it has nothing indexed."""
        return self._item_ids.get(sha256, -1)

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    def add(self, sha256: str, entries: Sequence[dict[str, Any]]) -> None:
        """Add an item's hashes (the caller has left out those too poor to match). An item
        with none is still recorded, so that it counts as indexed."""
        for entry in entries:
            if entry["variant"] not in self.variants:
                self.variants.append(entry["variant"])
        codes = [pdq_bytes(entry["pdq"]) for entry in entries]
        self.add_codes(
            sha256,
            np.stack(codes) if codes else np.zeros((0, PDQ_BITS // 8), dtype=np.uint8),
            sources=[SOURCES.index(entry["source"]) for entry in entries],
            variants=[self.variants.index(entry["variant"]) for entry in entries],
            times=[math.nan if entry.get("t") is None else float(entry["t"]) for entry in entries],
        )

    def add_codes(
        self,
        sha256: str,
        codes: U8,
        *,
        sources: Sequence[int],
        variants: Sequence[int],
        times: Sequence[float],
    ) -> None:
        """Add packed hashes (n x 32 bytes) of one item with their per-entry descriptions."""
        item = self._item_ids.setdefault(sha256, len(self.shas))
        if item == len(self.shas):
            self.shas.append(sha256)
            self.samples_of.append(0)
        self.samples_of[item] += sum(source == SOURCES.index("sample") for source in sources)
        if not len(codes):
            return
        self.index.add(np.ascontiguousarray(codes))
        self.item_of.extend([item] * len(codes))
        self.source_of.extend(sources)
        self.variant_of.extend(variants)
        self.time_of.extend(times)

    def search(self, codes: U8, radius: int) -> Iterator[tuple[int, int, int]]:
        """(query row, entry id, distance) of every entry within `radius` bits."""
        if not len(codes) or not self.size:
            return
        limits, distances, ids = self.index.range_search(np.ascontiguousarray(codes), radius + 1)
        for row in range(len(codes)):
            for at in range(int(limits[row]), int(limits[row + 1])):
                yield row, int(ids[at]), int(distances[at])

    def self_join(self, radius: int, batch: int = 20_000) -> Iterator[tuple[int, int, int]]:
        """Every pair of entries (i < j) within `radius` bits, with its distance: the whole
        index searched against itself in batches (faiss spreads each batch over its threads).
        """
        for start in range(0, self.size, batch):
            stop = min(start + batch, self.size)
            codes = self.index.storage.reconstruct_n(start, stop - start)
            for row, entry, distance in self.search(codes, radius):
                if entry > start + row:
                    yield start + row, entry, distance

    def save(self, folder: Path, state: dict[str, Any]) -> None:
        """Write the index, its entry table and `state` (written last: it vouches for both)."""
        folder.mkdir(parents=True, exist_ok=True)
        faiss.write_index_binary(self.index, str(folder / "pdq.faiss.tmp"))
        with open(folder / "entries.npz.tmp", "wb") as handle:
            np.savez(
                handle,
                shas=np.array(self.shas, dtype="S64"),
                item_of=np.frombuffer(self.item_of, dtype=np.int32),
                source_of=np.frombuffer(self.source_of, dtype=np.int8),
                variant_of=np.frombuffer(self.variant_of, dtype=np.int8),
                time_of=np.frombuffer(self.time_of, dtype=np.float64),
            )
        state = {**state, "entries": self.size, "variants": self.variants}
        (folder / "state.json.tmp").write_text(json.dumps(state, sort_keys=True))
        for name in ("pdq.faiss", "entries.npz", "state.json"):
            _fsync_file(folder / f"{name}.tmp")
            os.replace(folder / f"{name}.tmp", folder / name)

    @classmethod
    def load(cls, folder: Path) -> tuple[HashIndex, dict[str, Any]] | None:
        """The saved index and its state, or None when it is missing or does not add up."""
        try:
            state = json.loads((folder / "state.json").read_text())
            index = faiss.read_index_binary(str(folder / "pdq.faiss"))
            with np.load(folder / "entries.npz") as saved:
                # How many samples each item has is derived, not saved: count them.
                sampled = saved["item_of"][saved["source_of"] == SOURCES.index("sample")]
                counts = np.bincount(sampled, minlength=len(saved["shas"])).astype(np.int32)
                loaded = cls(
                    index=index,
                    shas=[sha.decode() for sha in saved["shas"]],
                    item_of=array("i", saved["item_of"].tobytes()),
                    source_of=array("b", saved["source_of"].tobytes()),
                    variant_of=array("b", saved["variant_of"].tobytes()),
                    time_of=array("d", saved["time_of"].tobytes()),
                    samples_of=array("i", counts.tobytes()),
                    variants=list(state["variants"]),
                )
        except (OSError, ValueError, KeyError, RuntimeError):
            return None
        if loaded.size != state.get("entries") or len(loaded.item_of) != loaded.size:
            return None
        return loaded, state


def _fsync_file(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@dataclass(frozen=True)
class Probe:
    """One query hash: which entry of the querying item, turned which way."""

    entry: dict[str, Any]
    orientation: str
    code: U8


def matchable(entries: Iterable[dict[str, Any]], config: MatchConfig) -> list[dict[str, Any]]:
    return [entry for entry in entries if entry["quality"] >= config.min_quality]


#: The `via` name of a hit found by one of a photo's crop probes.
PROBE = "probe"


def probes_of(entries: Iterable[dict[str, Any]]) -> list[Probe]:
    """Every hash an item is searched with: the dihedral hashes of whole pictures find
    mirrored and turned copies, crop probes find cropped ones; stored crops and sampled
    frames are searched as they are."""
    found = []
    for entry in entries:
        found.append(Probe(entry, DIHEDRAL[0], pdq_bytes(entry["pdq"])))
        for name, other in zip(DIHEDRAL[1:], entry.get("dihedral", ()), strict=False):
            found.append(Probe(entry, name, pdq_bytes(other)))
        grid = entry.get("probes", "")
        step = PDQ_BITS // 4
        for start in range(0, len(grid), step):
            found.append(
                Probe(
                    {**entry, "variant": PROBE}, DIHEDRAL[0], pdq_bytes(grid[start : start + step])
                )
            )
    return found


def _pair_kind(mine: str, theirs: str) -> str | None:
    """What a hit between two sources links: stills to stills, stills to a video's keyframes
    (stored pictures, so a crop match can be confirmed), or videos by their sampled frames."""
    pair = {mine, theirs}
    if pair == {"photo"}:
        return "photo-photo"
    if pair == {"photo", "keyframe"}:
        return "keyframe-photo"
    if pair == {"sample"}:
        return "video-video"
    return None


@dataclass
class _Best:
    """The closest hit between one item and another, for still pictures."""

    distance: int
    mine: dict[str, Any]
    theirs: tuple[str, str, float]
    orientation: str

    @property
    def rank(self) -> tuple[bool, int]:
        """Like compared with like (whole with whole, crop with the same crop) is the plain
        PDQ evidence and wins over any closer hit that would need keypoints."""
        return self.mine["variant"] != self.theirs[1], self.distance


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
        probes find, and the whole pictures are far apart."""
        via = self.details.get("via", ())
        return self.kind != "video-video" and len(set(via)) > 1


def find_matches(
    index: HashIndex, usable: Sequence[dict[str, Any]], config: MatchConfig, exclude: str | None
) -> list[Candidate]:
    """Stored items that match an item with these `matchable` hash entries (itself,
    `exclude`, left out)."""
    probes = probes_of(usable)
    if not probes:
        return []
    codes = np.stack([probe.code for probe in probes])
    samples = sum(entry["source"] == "sample" for entry in usable)
    stills: dict[tuple[str, str], _Best] = {}
    frames: dict[str, list[tuple[float, float, int]]] = defaultdict(list)
    excluded = index.item_number(exclude) if exclude else -1
    for row, entry_id, distance in index.search(codes, config.threshold):
        item = index.item_of[entry_id]
        if item == excluded:
            continue
        probe = probes[row]
        source = SOURCES[index.source_of[entry_id]]
        kind = _pair_kind(probe.entry["source"], source)
        if kind is None:
            continue
        other = index.shas[item]
        other_time = index.time_of[entry_id]
        if kind == "video-video":
            hits = frames[other]
            hits.append((float(probe.entry["t"]), float(other_time), distance))
            if len(hits) > _HITS_KEPT * (samples + 1):
                frames[other] = _closest_per_frame(hits)
            continue
        variant = index.variants[index.variant_of[entry_id]]
        hit = _Best(distance, probe.entry, (source, variant, other_time), probe.orientation)
        best = stills.get((other, kind))
        if best is None or hit.rank < best.rank:
            stills[(other, kind)] = hit
    found = [_still_candidate(other, kind, best) for (other, kind), best in stills.items()]
    for other, hits in frames.items():
        theirs = index.samples_of[index.item_number(other)]
        aligned = _align(_closest_per_frame(hits), samples, theirs, config)
        if aligned is not None:
            found.append(Candidate(other, "video-video", *aligned))
    return found


def _still_candidate(other: str, kind: str, best: _Best) -> Candidate:
    source, variant, other_time = best.theirs
    details = {
        "via": [best.mine["variant"], variant],
        "sources": [best.mine["source"], source],
        "orientation": best.orientation,
    }
    mine_t = best.mine.get("t")
    return Candidate(
        other,
        kind,
        float(best.distance),
        None if mine_t is None else float(mine_t),
        None if math.isnan(other_time) else round(float(other_time), 3),
        details,
        best.mine.get("artifact"),
    )


def _closest_per_frame(hits: list[tuple[float, float, int]]) -> list[tuple[float, float, int]]:
    """At most `_HITS_KEPT` hits per sampled frame of the querying video, the closest: a
    static scene matches every frame of a long static video, and voting needs only a few."""
    by_frame: dict[float, list[tuple[float, float, int]]] = defaultdict(list)
    for hit in hits:
        by_frame[hit[0]].append(hit)
    return [
        hit
        for frame_hits in by_frame.values()
        for hit in sorted(frame_hits, key=lambda h: h[2])[:_HITS_KEPT]
    ]


def _align(
    hits: list[tuple[float, float, int]], mine: int, theirs: int, config: MatchConfig
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


@dataclass
class UpdateReport:
    results_read: int = 0
    entries_added: int = 0
    links_new: int = 0
    rebuilt: bool = False


class Matcher:
    """Keeps the index in step with the store and records the links it finds.

    Concurrent drivers on one data folder take turns through a file lock; drivers on other
    hosts keep their own index, and a pair they both find is stored once (the store refuses
    the second copy).
    """

    def __init__(
        self,
        store: Store,
        folder: Path,
        hashes_key: tuple[str, str, str],
        config: MatchConfig | None = None,
    ) -> None:
        """`hashes_key` is the (stage, version, config hash) of the results to index."""
        self.store = store
        self.folder = folder
        self.hashes_key = hashes_key
        self.config = config or MatchConfig()
        self.index = HashIndex()
        self.watermark = 0
        self._in_memory = False
        #: The watermark of the saved index when this process last loaded or saved it.
        self._synced_watermark = -1
        self._saved_at = time.monotonic()

    def _identity(self) -> dict[str, Any]:
        """What the saved index must agree with to be reused: the matcher's settings and the
        hashes results it holds, since either changes what its entries and links mean."""
        return {"config": asdict(self.config), "hashes": list(self.hashes_key)}

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / "lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _load(self) -> bool:
        """Bring the saved index in, unless what is in memory is already it or ahead of it;
        False when there is none to use (missing, damaged, or made with other settings)."""
        try:
            state: dict[str, Any] | None = json.loads((self.folder / "state.json").read_text())
        except (OSError, ValueError):
            state = None
        current = state is not None and state.get("identity") == self._identity()
        unchanged = current and state is not None and state["watermark"] == self._synced_watermark
        if self._in_memory and (unchanged or not current):
            return True  # nobody saved a usable index since we last did: memory is ahead
        if not current:
            return False
        loaded = HashIndex.load(self.folder)
        if loaded is None:
            return False
        self.index, self.watermark = loaded[0], int(loaded[1]["watermark"])
        self._in_memory, self._synced_watermark = True, self.watermark
        return True

    def update(self, actor: str, rebuild: bool = False, save: bool = True) -> UpdateReport:
        """Index the hashes stored since the last update and link what they match.

        `rebuild` (or a missing, damaged or outdated index) starts from an empty index and
        reads every stored result again; links already stored are kept as they are. Results
        a little below the watermark are read again: on PostgreSQL a result with a lower id
        can commit after a higher one was read, and must not be missed. Without `save` the
        index is written only once a minute (a million entries take seconds to write).
        """
        report = UpdateReport()
        with self._locked():
            if rebuild or not self._load():
                self.index, self.watermark, self._in_memory = HashIndex(), 0, True
                report.rebuilt = True
            start = max(0, self.watermark - _RESCAN_RESULTS)
            for page in matches.hashes_after(self.store.database, self.hashes_key, start):
                links = []
                for stored in page:
                    if self.index.item_number(stored.sha256) < 0:
                        links += self._link(stored, report)
                        report.results_read += 1
                report.links_new += matches.record(self.store.database, links, actor)
                self.watermark = max(self.watermark, page[-1].result_id)
            due = save or time.monotonic() - self._saved_at >= _SAVE_EVERY_S
            if (report.results_read or report.rebuilt) and due:
                state = {"watermark": self.watermark, "identity": self._identity()}
                self.index.save(self.folder, state)
                self._saved_at, self._synced_watermark = time.monotonic(), self.watermark
        if report.results_read:
            log.info(
                "indexed %d hash results (%d entries), %d new links",
                report.results_read, report.entries_added, report.links_new,
            )  # fmt: skip
        return report

    def _picture(self, sha256: str, source: str, t: float | None) -> Path | None:
        """The stored picture a hash was made from: the photo itself, or a video's keyframe."""
        if source == "photo":
            return self.store.blobs.path_for(sha256)
        artifact = matches.keyframe_at(self.store.database, sha256, t)
        return None if artifact is None else self.store.blobs.path_for(artifact)

    def confirmed(
        self, found: list[Candidate], my_picture: Callable[[Candidate], Path | None]
    ) -> list[Candidate]:
        """The candidates that need no keypoint check, and those that pass it."""
        kept = []
        for candidate in found:
            if not candidate.needs_keypoints:
                kept.append(candidate)
                continue
            mine = my_picture(candidate)
            theirs = self._picture(
                candidate.other, candidate.details["sources"][1], candidate.other_time_s
            )
            if mine is None or theirs is None:
                continue
            try:
                check = confirm_copy(_open_picture(mine), _open_picture(theirs))
            except StageError as error:
                # A picture that hashed but no longer decodes: no confirmation, no link.
                log.warning("keypoint check of %s skipped: %s", candidate.other[:16], error.reason)
                continue
            # Too little texture for keypoints to judge: only a close hash then links.
            plain = not check.conclusive
            if check.agrees or (plain and candidate.distance <= self.config.untextured_threshold):
                details = {**candidate.details, "keypoints": asdict(check)}
                kept.append(replace(candidate, details=details))
        return kept

    def _link(self, stored: StoredHashes, report: UpdateReport) -> list[Link]:
        """Query with an item's hashes, then add them: each pair is found once, by the later."""
        entries = matchable(stored.data.get("hashes", []), self.config)

        def my_picture(candidate: Candidate) -> Path | None:
            if candidate.my_artifact is not None:
                return self.store.blobs.path_for(candidate.my_artifact)
            return self.store.blobs.path_for(stored.sha256)

        found = self.confirmed(
            find_matches(self.index, entries, self.config, exclude=stored.sha256), my_picture
        )
        self.index.add(stored.sha256, entries)
        report.entries_added += len(entries)
        algorithm = f"pdq<={self.config.threshold}"
        return [
            matches.link_between(
                stored.sha256,
                candidate.other,
                candidate.kind,
                algorithm,
                candidate.distance,
                (candidate.my_time_s, candidate.other_time_s),
                candidate.details,
            )
            for candidate in found
        ]

    def similar(
        self, entries: Sequence[dict[str, Any]], my_picture: Callable[[Candidate], Path | None]
    ) -> list[Candidate]:
        """Stored items matching hashes of a file that is not in the store, as of the last
        `update`; `my_picture` finds the file's pictures for keypoint checks."""
        found = find_matches(self.index, matchable(entries, self.config), self.config, None)
        return self.confirmed(found, my_picture)


def _open_picture(path: Path) -> Image.Image:
    return decode_for_analysis(path, min_side=COMPARE_SIDE, max_pixels=DEFAULT_MAX_PIXELS).image
