"""The one per-stage cost model: what `qarina bench --json` records and `qarina plan` reads.

A cost is measured on one machine, for one stage, one kind of item and one device class, and
is split into a fixed part per item and a part per second of media. The split is why a figure
from one long recording cannot stand for short voice notes (issue 16: 7-10x real time on one
long file, about 0.4x on 98 short clips): the fixed part (model warm-up per item, container
parsing) dominates short media, so a plan must weigh both by the backlog's shape.

Costs are device-seconds: CPU core-seconds or GPU-seconds, so that dividing work by the
seconds a cluster has gives the number of cores or GPUs directly. They are the seconds a stage
*holds* of the cluster, not the seconds its worker ran: Ray admits an actor only when its
reserved CPUs (or GPUs) are free, so a transcription actor that reserves two cores for ten
seconds keeps twenty core-seconds from every other stage whatever its threads did. Counting
worker wall-seconds instead made a 2-core plan 36% optimistic, measured (issue 16).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, cast

#: The kinds of item a backlog is planned for; archives are expanded into these.
KINDS = ("photo", "video", "audio")
DEVICES = ("cpu", "gpu")
#: Bumped when a field's meaning changes; `load_bench` refuses files of another version.
FORMAT_VERSION = 2

Device = Literal["cpu", "gpu"]


class BenchFileError(ValueError):
    """A bench file that cannot be read as this cost model (wrong version, missing field)."""


@dataclass(frozen=True)
class StageCost:
    """One stage's cost for one kind on one device class, measured on one machine.

    `seconds_per_item` and `seconds_per_media_s` are reserved device-seconds (CPU core-seconds,
    or GPU-seconds): an item of `m` media seconds costs `seconds_per_item +
    seconds_per_media_s * m`. `reserved` is how many cores (or GPUs) one of the stage's actors
    held while the worker seconds were measured: the worker's wall-seconds times `reserved`
    are the figures here, and the factor is kept so a reader can get the wall-seconds back.
    Photos have no duration, so their `seconds_per_media_s` is 0. `items` says how many items
    the figure rests on, so a reader can weigh a figure from three items accordingly. `peer`
    holds the peer tool's figures from the same run (e.g. `{"seconds_per_item": ...}` for
    openssl beside the hashes stage), kept beside ours rather than mixed in.
    """

    stage: str
    kind: str
    device: Device
    seconds_per_item: float
    seconds_per_media_s: float
    peak_rss_bytes: int | None
    items: int
    peer: dict[str, float] | None = None
    reserved: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise BenchFileError(f"unknown kind {self.kind!r} for stage {self.stage!r}")
        if self.device not in DEVICES:
            raise BenchFileError(f"unknown device {self.device!r} for stage {self.stage!r}")
        if self.seconds_per_item < 0 or self.seconds_per_media_s < 0:
            raise BenchFileError(f"negative cost for stage {self.stage!r}, kind {self.kind!r}")
        if self.reserved <= 0:
            raise BenchFileError(f"no reservation for stage {self.stage!r}, kind {self.kind!r}")

    def seconds_for(self, media_s: float) -> float:
        """Device-seconds one item of `media_s` seconds of media costs."""
        return self.seconds_per_item + self.seconds_per_media_s * media_s

    def peers_per_item(self) -> dict[str, float]:
        """Each peer's seconds per item, by peer name (`pdqhash`, `openssl_sha256`, ...)."""
        suffix = ".seconds_per_item"
        return {
            name.removesuffix(suffix): value
            for name, value in (self.peer or {}).items()
            if name.endswith(suffix)
        }


@dataclass(frozen=True)
class Growth:
    """What one item of a kind adds to the store, on average over the bench's sample.

    Blobs are the originals (stored once by SHA-256), artifacts what stages write beside them
    (keyframes, transcripts), rows every database row the item's processing adds. Like a cost,
    each has a fixed part per item and an optional part per second of media, because a
    two-minute video's blob and transcript rows are not a ten-second one's; a bench that only
    measured averages leaves the per-second parts at 0.
    """

    kind: str
    blob_bytes: float
    artifact_bytes: float
    db_rows: float
    blob_bytes_per_media_s: float = 0.0
    artifact_bytes_per_media_s: float = 0.0
    db_rows_per_media_s: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise BenchFileError(f"unknown kind {self.kind!r} in growth")


@dataclass(frozen=True)
class BenchFile:
    """What one `qarina bench --json` run records: the machine, versions, sample and costs.

    `machine` holds at least `cores` (int) and `gpus` (a list of `{name, memory_bytes}`); the
    plan uses them as the node shape when it charts days to clear against nodes. `sample`
    describes the material measured (items and media seconds by kind, size bands), so a plan
    can be checked against the backlog's shape.
    """

    machine: dict[str, Any]
    versions: dict[str, str]
    sample: dict[str, Any]
    costs: list[StageCost]
    growth: list[Growth]

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "machine": self.machine,
            "versions": self.versions,
            "sample": self.sample,
            "costs": [asdict(cost) for cost in self.costs],
            "growth": [asdict(growth) for growth in self.growth],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BenchFile:
        """Read what `to_json` wrote; raises `BenchFileError` naming what is wrong."""
        if not isinstance(data, dict):
            raise BenchFileError("a bench file is a JSON object")
        if data.get("format") != FORMAT_VERSION:
            raise BenchFileError(
                f"bench file format {data.get('format')!r}, this Qarina reads {FORMAT_VERSION}"
            )
        try:
            return cls(
                machine=dict(data["machine"]),
                versions={str(k): str(v) for k, v in data.get("versions", {}).items()},
                sample=dict(data.get("sample", {})),
                costs=[_cost_from_json(c) for c in data["costs"]],
                growth=[_growth_from_json(g) for g in data.get("growth", [])],
            )
        except BenchFileError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise BenchFileError(f"bench file field missing or malformed: {error!r}") from error

    @property
    def gpus(self) -> int:
        """How many GPUs the benched machine has (0 for a CPU node)."""
        return len(self.machine.get("gpus") or [])

    @property
    def cores(self) -> int:
        return int(self.machine.get("cores") or 0)


def _cost_from_json(c: dict[str, Any]) -> StageCost:
    rss = c.get("peak_rss_bytes")
    peer = c.get("peer")
    return StageCost(
        stage=str(c["stage"]),
        kind=str(c["kind"]),
        device=cast(Device, c["device"]),
        seconds_per_item=float(c["seconds_per_item"]),
        seconds_per_media_s=float(c["seconds_per_media_s"]),
        peak_rss_bytes=None if rss is None else int(rss),
        items=int(c["items"]),
        peer=None if peer is None else {str(k): float(v) for k, v in peer.items()},
        reserved=float(c["reserved"]),
    )


def _growth_from_json(g: dict[str, Any]) -> Growth:
    return Growth(
        kind=str(g["kind"]),
        blob_bytes=float(g["blob_bytes"]),
        artifact_bytes=float(g["artifact_bytes"]),
        db_rows=float(g["db_rows"]),
        blob_bytes_per_media_s=float(g.get("blob_bytes_per_media_s", 0.0)),
        artifact_bytes_per_media_s=float(g.get("artifact_bytes_per_media_s", 0.0)),
        db_rows_per_media_s=float(g.get("db_rows_per_media_s", 0.0)),
    )


def reserved_units(stage: str, device: Device) -> float:
    """Cores (device `cpu`) or GPUs (`gpu`) one actor of the registered `stage` reserves on a
    cluster of that device class: what each of its worker seconds costs the cluster.

    Read from the stage's own `Resources`, as the Ray runtime asks for them, so a changed
    reservation changes the bench's figures with it. Raises `KeyError` for an unknown stage.
    """
    from workers import STAGES  # the registry; imported here to keep this module's import light

    for stage_class, _ in STAGES:
        if stage_class.name == stage:
            wanted = stage_class.resources.on_cluster({"GPU": 1.0} if device == "gpu" else {})
            return wanted.num_gpus if device == "gpu" else wanted.num_cpus
    raise KeyError(stage)


def reserved_seconds(work: Mapping[tuple[str, str], float], device: Device = "cpu") -> float:
    """Worker seconds by (stage, item), as custody records them, in reserved device-seconds."""
    factors: dict[str, float] = {}
    total = 0.0
    for (stage, _), seconds in work.items():
        if stage not in factors:
            factors[stage] = reserved_units(stage, device)
        total += seconds * factors[stage]
    return total


def load_bench(path: Path) -> BenchFile:
    """Read one bench file; raises `BenchFileError` with the path when it cannot be used."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return BenchFile.from_json(data)
    except (OSError, json.JSONDecodeError, BenchFileError) as error:
        raise BenchFileError(f"{path}: {error}") from error


def write_bench(bench: BenchFile, path: Path) -> None:
    """Write a bench file as `load_bench` reads it."""
    text = json.dumps(bench.to_json(), indent=2, ensure_ascii=False)
    path.write_text(text + "\n", encoding="utf-8")
