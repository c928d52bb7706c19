"""The matcher: keeps the PDQ index in step with the store and records the links it finds.

The index is derived data. It lives in the data folder with a watermark (the last result it
holds), grows as results arrive, and is rebuilt from the store whenever it is missing, stale
or asked for. Links are written to the store; the index never is the record.
"""

from __future__ import annotations

import fcntl
import json
import logging
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from evidence import matches
from evidence.matches import Link, StoredHashes
from evidence.records import ResultKey
from evidence.store import Store
from pipelines.dedup.candidates import Candidate, find_matches, matchable
from pipelines.dedup.config import MatchConfig
from pipelines.dedup.index import HashIndex
from pipelines.dedup.keypoints import KeypointCheck, confirm_files, open_for_keypoints
from pipelines.dedup.stills import locate_still
from workers.base import StageError
from workers.hashes import HashEntry, HashesConfig, HashesResult
from workers.probe import ProbeResult, duration_of
from workers.video import rotation_of

log = logging.getLogger(__name__)

#: Results re-read below the watermark on each update (see Matcher.update).
_RESCAN_RESULTS = 1000
_SAVE_EVERY_S = 60.0


@dataclass(frozen=True)
class VideoFile:
    """A video as the on-demand decode needs it: the file, its display rotation, and how far
    apart its samples were hashed (what a still's frame is searched within)."""

    path: Path
    rotation: int
    sample_interval_s: float


@dataclass(frozen=True)
class Query:
    """What the matcher knows of the item it searches with: its matchable hash entries, where
    its pictures are (a photo, or a keyframe artifact) and, for a video, its file."""

    entries: Sequence[HashEntry]
    picture: Callable[[Candidate], Path | None]
    #: The video's file, looked up only when a still needs its frames decoded.
    video: Callable[[], VideoFile | None] = lambda: None


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
        hashes_keys: Collection[ResultKey],
        config: MatchConfig | None = None,
        *,
        probe_keys: Collection[ResultKey] = (),
        hashes_config: HashesConfig | None = None,
    ) -> None:
        """`hashes_keys` are the current keys of the hashes results to index; `probe_keys`
        and `hashes_config` (the stage's options) let a video's frames be decoded and hashed
        again to confirm a still."""
        self.store = store
        self.folder = folder
        self.hashes_keys = frozenset(hashes_keys)
        self.config = config or MatchConfig()
        self.probe_keys = frozenset(probe_keys)
        self.hashes_config = hashes_config or HashesConfig()
        self.index = HashIndex()
        self.watermark = 0
        self._in_memory = False
        #: The watermark of the saved index when this process last loaded or saved it.
        self._synced_watermark = -1
        self._saved_at = time.monotonic()

    def _identity(self) -> dict[str, Any]:
        """What the saved index must agree with to be reused: the matcher's settings and the
        hashes results it holds, since either changes what its entries and links mean."""
        keys = sorted(self.hashes_keys)
        return {"config": asdict(self.config), "hashes": [key.as_json() for key in keys]}

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
            for page in matches.hashes_after(self.store.database, self.hashes_keys, start):
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
        artifact = self._keyframe_at(sha256, t)
        return None if artifact is None else self.store.blobs.path_for(artifact)

    def _keyframe_at(self, sha256: str, t: float | None) -> str | None:
        """The SHA-256 of a video's keyframe at `t` seconds: the hash entry made from it, in
        the item's current hashes result, names the picture it was made from."""
        if t is None:
            return None
        data = matches.results_data(self.store.database, self.hashes_keys, [sha256])
        if sha256 not in data:
            return None
        for entry in HashesResult.from_json(data[sha256]).hashes:
            if entry.source == "keyframe" and entry.t is not None and abs(entry.t - t) < 1e-3:
                return entry.artifact
        return None

    def confirmed(self, found: list[Candidate], query: Query) -> list[Candidate]:
        """The candidates that need no check, and those that pass theirs: keypoints for a
        crop match, the frame decoded again for a still in a video. A still that matched a
        keyframe already needs no second link to the same video."""
        kept = []
        for candidate in found:
            if candidate.kind == "frame-photo":
                checked = self._confirm_still(candidate, query)
            elif candidate.needs_keypoints:
                checked = self._confirm_crop(candidate, query)
            else:
                checked = candidate
            if checked is not None:
                kept.append(checked)
        by_keyframe = {c.other for c in kept if c.kind == "keyframe-photo"}
        return [c for c in kept if c.kind != "frame-photo" or c.other not in by_keyframe]

    def _confirm_crop(self, candidate: Candidate, query: Query) -> Candidate | None:
        mine = query.picture(candidate)
        theirs = self._picture(
            candidate.other, candidate.details["sources"][1], candidate.other_time_s
        )
        if mine is None or theirs is None:
            return None
        try:
            check = confirm_files(mine, theirs)
        except StageError as error:
            # A picture that hashed but no longer decodes: no confirmation, no link.
            log.warning("keypoint check of %s skipped: %s", candidate.other[:16], error.reason)
            return None
        return self._if_agrees(candidate, check, candidate.distance, {})

    def _if_agrees(
        self,
        candidate: Candidate,
        check: KeypointCheck,
        distance: float,
        found: dict[str, Any],
        times: tuple[float | None, float | None] | None = None,
    ) -> Candidate | None:
        """The candidate with its evidence when keypoints agree, or, where a picture is too
        plain for keypoints to judge, when the hashes are close; None otherwise."""
        plain = not check.conclusive
        if not (check.agrees or (plain and distance <= self.config.untextured_threshold)):
            return None
        details = {**candidate.details, **found, "keypoints": asdict(check)}
        mine_t, other_t = times or (candidate.my_time_s, candidate.other_time_s)
        return replace(
            candidate, distance=distance, details=details, my_time_s=mine_t, other_time_s=other_t
        )

    def _confirm_still(self, candidate: Candidate, query: Query) -> Candidate | None:
        """Decode the video around the hit, find the frame the photo is, and check it."""
        mine_is_photo = candidate.details["sources"][0] == "photo"
        if mine_is_photo:
            picture = query.picture(candidate)
            entries = [entry for entry in query.entries if entry.source == "photo"]
            video = self._video(candidate.other)
            around = candidate.other_time_s
        else:
            picture = self.store.blobs.path_for(candidate.other)
            entries = self._entries(candidate.other)
            video = query.video()
            around = candidate.my_time_s
        if picture is None or video is None or around is None or not entries:
            return None
        try:
            photo = open_for_keypoints(picture)
            found = locate_still(
                (photo, entries),
                (video.path, video.rotation),
                around,
                video.sample_interval_s,
                self.hashes_config,
            )
        except StageError as error:
            log.warning("still check against %s skipped: %s", candidate.other[:16], error.reason)
            return None
        if found is None:
            return None
        frame = {"frame": {"t": found.t, "pdq": found.distance, "searched_s": found.searched_s}}
        times = (None, found.t) if mine_is_photo else (found.t, None)
        return self._if_agrees(candidate, found.keypoints, found.distance, frame, times)

    def _entries(self, sha256: str) -> list[HashEntry]:
        data = matches.results_data(self.store.database, self.hashes_keys, [sha256])
        return HashesResult.from_json(data[sha256]).hashes if sha256 in data else []

    def _video(self, sha256: str) -> VideoFile | None:
        """A stored video's file, rotation and sample interval, from its current probe."""
        data = matches.results_data(self.store.database, self.probe_keys, [sha256])
        if sha256 not in data:
            return None
        return video_file(
            self.store.blobs.path_for(sha256), ProbeResult.from_json(data[sha256]),
            self.hashes_config,
        )  # fmt: skip

    def _link(self, stored: StoredHashes, report: UpdateReport) -> list[Link]:
        """Query with an item's hashes, then add them: each pair is found once, by the later."""
        entries = matchable(HashesResult.from_json(stored.data).hashes, self.config)

        def my_picture(candidate: Candidate) -> Path | None:
            if candidate.my_artifact is not None:
                return self.store.blobs.path_for(candidate.my_artifact)
            return self.store.blobs.path_for(stored.sha256)

        is_video = any(entry.source == "sample" for entry in entries)
        query = Query(
            entries, my_picture, (lambda: self._video(stored.sha256)) if is_video else lambda: None
        )
        found = self.confirmed(
            find_matches(self.index, entries, self.config, exclude=stored.sha256), query
        )
        self.index.add(stored.sha256, entries)
        report.entries_added += len(entries)
        algorithm = f"pdq<={self.config.threshold}"
        # The link says which results it was found among: the index holds those of these
        # keys only, so a link made before a new hashes version can be told apart.
        made_from = {"hashes_keys": [key.as_json() for key in sorted(self.hashes_keys)]}
        return [
            matches.link_between(
                stored.sha256,
                candidate.other,
                candidate.kind,
                algorithm,
                candidate.distance,
                (candidate.my_time_s, candidate.other_time_s),
                {**candidate.details, **made_from},
            )
            for candidate in found
        ]

    def similar(self, query: Query) -> list[Candidate]:
        """Stored items matching a file that is not in the store, as of the last `update`."""
        usable = matchable(query.entries, self.config)
        found = find_matches(self.index, usable, self.config, None)
        return self.confirmed(found, replace(query, entries=usable))


def video_file(path: Path, probe: ProbeResult, config: HashesConfig) -> VideoFile:
    """How a video was sampled, as the hashes stage worked it out from the same probe."""
    return VideoFile(path, rotation_of(probe), config.interval_for(duration_of(probe)))
