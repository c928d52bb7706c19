"""The PDQ index: every matchable hash, and which item, source, variant and time it stands for.

The index is faiss's multi-index hashing (`IndexBinaryMultiHash`): the first 253 bits of
each 256-bit PDQ hash are cut into 11 substrings of 23 bits, each with its own hash table,
and a query probes every table with each substring as it is and with one or two of its bits
flipped. Two hashes within 31 bits differ by at most two bits in at least one of the 11
substrings (11 x 3 = 33 > 31), so every pair within the default threshold is a candidate:
the search is exact, not approximate, and a query touches a few hundred candidates instead
of a million. (16 substrings of 16 bits with one flip is exact too, but its buckets fill up:
a query took 0.25 ms at 100,000 hashes and 0.5 ms at 200,000, growing with the index, where
this layout takes 0.55 ms at a million.)
"""

from __future__ import annotations

import json
import math
import os
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

from workers.hashes import HashEntry

PDQ_BITS = 256
_SUBSTRINGS = 11
_SUBSTRING_BITS = 23
#: Bits flipped per probed substring; with 11 substrings this makes the search exact to 32.
_FLIPS = 2
#: The largest threshold the search is exact for: a pair that far apart has a substring
#: with at most _FLIPS differing bits (pigeonhole).
EXACT_UP_TO = _SUBSTRINGS * (_FLIPS + 1) - 1
#: Where each index entry came from, stored as small integers beside the faiss index.
SOURCES = ("photo", "keyframe", "sample", "frame")

U8 = npt.NDArray[np.uint8]


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

    def add(self, sha256: str, entries: Sequence[HashEntry]) -> None:
        """Add an item's hashes (the caller has left out those too poor to match). An item
        with none is still recorded, so that it counts as indexed."""
        for entry in entries:
            if entry.variant not in self.variants:
                self.variants.append(entry.variant)
        codes = [pdq_bytes(entry.pdq) for entry in entries]
        self.add_codes(
            sha256,
            np.stack(codes) if codes else np.zeros((0, PDQ_BITS // 8), dtype=np.uint8),
            sources=[SOURCES.index(entry.source) for entry in entries],
            variants=[self.variants.index(entry.variant) for entry in entries],
            times=[math.nan if entry.t is None else float(entry.t) for entry in entries],
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
