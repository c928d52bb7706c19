"""What `qarina dupes` and `qarina similar` report: clusters of copies, and matches of a file
that is not in the store.

Clusters are the connected components of the stored links (a copy of a copy belongs with the
original), computed when asked; the links themselves are the record. Exact duplicates need no
hashing at all: one item with several acquisitions, from one source or many.
"""

from __future__ import annotations

import hashlib
import itertools
import shutil
import tempfile
from collections.abc import Collection, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

from evidence import matches
from evidence.matches import Link
from evidence.records import ResultKey
from evidence.store import Store
from pipelines.dedup.matcher import Matcher, Query, video_file
from pipelines.plan import Plan
from workers.base import Kind, StageInput, StageOutput, StageSkipped
from workers.hashes import HashEntry, HashesResult, HashesStage, hex_distance
from workers.keyframes import KeyframesResult, KeyframesStage
from workers.probe import ProbeResult, ProbeStage

T = TypeVar("T", int, str)


def clusters_of_pairs(pairs: Iterable[tuple[T, T]]) -> list[list[T]]:
    """Connected components of the graph the pairs draw (union-find), largest first."""
    parent: dict[T, T] = {}

    def root(node: T) -> T:
        parent.setdefault(node, node)
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    for first, second in pairs:
        a, b = root(first), root(second)
        if a != b:
            parent[b] = a
    groups: dict[T, list[T]] = {}
    for node in parent:
        groups.setdefault(root(node), []).append(node)
    return sorted((sorted(group) for group in groups.values()), key=lambda g: (-len(g), g[0]))


def clusters(links: list[Link]) -> list[list[str]]:
    """Items linked directly or through other copies, members sorted, largest first."""
    return clusters_of_pairs((link.a_sha256, link.b_sha256) for link in links)


def _link_json(link: Link) -> dict[str, Any]:
    return {key: value for key, value in asdict(link).items() if value is not None}


def dupes_report(store: Store, hashes_keys: Collection[ResultKey]) -> dict[str, Any]:
    """Near-duplicate clusters with members, their sources, the links between them and the
    pairwise distances of their stills (from the results under the current `hashes_keys`),
    and the exact duplicates (items acquired more than once)."""
    links = matches.all_links(store.database)
    groups = clusters(links)
    summaries = matches.summaries(store.database, [sha for group in groups for sha in group])
    member_of = {sha: number for number, group in enumerate(groups) for sha in group}
    pairs: list[list[dict[str, Any]]] = [[] for _ in groups]
    for link in links:
        pairs[member_of[link.a_sha256]].append(_link_json(link))
    return {
        "clusters": [
            {
                "members": [asdict(summaries[sha]) for sha in group if sha in summaries],
                "sources": sorted(
                    {s for sha in group if sha in summaries for s in summaries[sha].sources}
                ),
                "links": pairs[number],
                "distances": pairwise_distances(store, hashes_keys, group),
            }
            for number, group in enumerate(groups)
        ],
        "exact": [asdict(summary) for summary in matches.summaries(store.database).values()],
    }


#: Clusters larger than this list their links only: all pairs of a thousand copies would
#: be half a million rows nobody reads.
_PAIRWISE_MEMBERS = 50


def pairwise_distances(
    store: Store, hashes_keys: Collection[ResultKey], members: list[str]
) -> list[dict[str, Any]]:
    """PDQ distance of every pair of members that are stills, whole picture against whole
    picture in the closest orientation: what an analyst compares, linked directly or not."""
    if len(members) > _PAIRWISE_MEMBERS:
        return []
    stills = _whole_pictures(store, hashes_keys, members)
    rows = []
    for first, second in itertools.combinations(sorted(stills), 2):
        turns = stills[second]
        distance = min(hex_distance(stills[first][0], turn) for turn in turns)
        rows.append({"a_sha256": first, "b_sha256": second, "pdq": distance})
    return rows


def _whole_pictures(
    store: Store, hashes_keys: Collection[ResultKey], shas: Sequence[str]
) -> dict[str, list[str]]:
    """Per photo among `shas`: the PDQ of its whole picture, then its seven other turns."""
    found: dict[str, list[str]] = {}
    for sha256, data in matches.results_data(store.database, hashes_keys, shas).items():
        for entry in HashesResult.from_json(data).hashes:
            if entry.source == "photo" and entry.variant == "full":
                found[sha256] = [entry.pdq, *(entry.dihedral or ())]
    return found


@dataclass(frozen=True)
class Hashed:
    """A file hashed outside the store: its kind, hash entries and probe."""

    kind: str
    entries: list[HashEntry]
    probe: ProbeResult


def hash_outside_store(path: Path, plan: Plan) -> Hashed:
    """The kind, hash entries and probe of a file, computed in a scratch folder, storing nothing,
    by the stages `plan` names with its options: hashes made otherwise would not compare
    like for like with the stored ones.

    The file is copied under a neutral name first: tools never see a user's file name.

    Raises:
        StageError: when the file cannot be probed or hashed (the reason says why).
        StageSkipped: when it is neither a photo nor a video with pictures.
    """
    with tempfile.TemporaryDirectory(prefix="qarina-similar-") as scratch:
        folder = Path(scratch)
        copy = folder / "query"
        shutil.copyfile(path, copy)
        with open(copy, "rb") as handle:
            sha256 = hashlib.file_digest(handle, "sha256").hexdigest()
        probe_stage = plan.stage(ProbeStage.name)
        probe_stage.setup()
        try:
            probed: StageOutput[ProbeResult] = probe_stage.run(
                StageInput(sha256, copy, Kind.OTHER), folder
            )
        finally:
            probe_stage.teardown()
        kind = Kind(probed.result.kind)
        upstream: dict[str, Any] = {"probe": probed.result.to_json()}
        artifacts: dict[str, Path] = {}
        if kind is Kind.VIDEO:
            frames_dir = folder / "keyframes"
            frames_dir.mkdir()
            keyframes: StageOutput[KeyframesResult] = plan.stage(KeyframesStage.name).run(
                StageInput(sha256, copy, kind, upstream), frames_dir
            )
            upstream["keyframes"] = keyframes.result.to_json()
            # The stage lists each frame's SHA-256 in the order it wrote the files.
            artifacts = {
                frame.artifact: artifact.path
                for frame, artifact in zip(
                    keyframes.result.frames, keyframes.artifacts, strict=True
                )
            }
        elif kind is not Kind.PHOTO:
            raise StageSkipped(f"not_a_picture ({kind.value})")
        hashed: StageOutput[HashesResult] = plan.stage(HashesStage.name).run(
            StageInput(sha256, copy, kind, upstream, artifacts), folder
        )
        return Hashed(kind.value, hashed.result.hashes, probed.result)


def similar_report(
    store: Store,
    matcher: Matcher,
    path: Path,
    hashed: Hashed,
    actor: str,
) -> dict[str, Any]:
    """Stored items that match a file outside the store, hashed by `hash_outside_store`.

    The index is brought up to date with the store first, so the answer covers everything
    processed so far (that catch-up may store links between stored items; the file itself
    leaves no trace in the store)."""
    matcher.update(actor)
    kind = hashed.kind
    # A photo's own picture confirms crop matches; a video's keyframes are gone with the
    # scratch folder, so its crop matches are left out rather than made unconfirmed. A
    # video's frames are decoded from the file again to confirm a still.
    is_video = kind == Kind.VIDEO.value
    video = video_file(path, hashed.probe, matcher.hashes_config) if is_video else None
    found = matcher.similar(
        Query(hashed.entries, lambda c: None if is_video else path, lambda: video)
    )
    found.sort(key=lambda c: (c.distance, c.other))
    summaries = matches.summaries(store.database, [candidate.other for candidate in found])
    return {
        "query": {"kind": kind, "hashes": len(hashed.entries)},
        "threshold": matcher.config.threshold,
        "matches": [
            {
                "sha256": candidate.other,
                "kind": candidate.kind,
                "distance": candidate.distance,
                "query_time_s": candidate.my_time_s,
                "item_time_s": candidate.other_time_s,
                "details": candidate.details,
                "item": asdict(summaries[candidate.other])
                if candidate.other in summaries
                else None,
            }
            for candidate in found
        ],
    }
