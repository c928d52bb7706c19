"""`qarina bench`: every stage measured on a sample shaped like the backlog, as a bench file.

A plan is only as good as the figures it rests on, and a figure from one long recording did
not hold for short voice notes (issue 16: 7-10x real time on one long file, about 0.4x on
the corpus's 98 short clips). So this runs a whole sample as `qarina run` does, reusing
`backlog_mix.one_run` (fresh store, private local Ray, worker seconds of every attempt read
from custody), and turns what each stage spent on each item into the cost model of
`pipelines.sizing.costs`, the one module `qarina plan` also reads:

- per stage and kind, reserved device-seconds (worker seconds times the cores or GPUs the
  stage's actor holds) as `seconds_per_item + seconds_per_media_s * media_s`.
  For video and audio the two parts come from a least-squares line over the items (the fixed
  part is what makes short voice notes slow); with fewer than three items, durations spread
  over less than a second, or a negative part, the fit falls back to a line through the
  origin (all cost per media second) or a flat cost per item, and `sample["fits"]` says which;
- the device from the results (`cuda` in a transcript's data means a GPU), the peak RSS of
  the worker processes that ran the stage (sampled from /proc while the run goes), the peers'
  figures from the same run keyed `NAME.figure` (pdqhash/imagehash; PySceneDetect and
  `ffmpeg -f null`; direct faster-whisper; openssl's SHA-256 of the originals beside ingest's
  cost per item and per MiB, on the hashes cost since intake has no cost of its own);
- the machine (with `address`, the Ray cluster's CPUs and GPUs), the stages' tool and model
  versions (the Whisper weights by SHA-256), the sample's shape by kind and size band, and the
  store's growth per item of each kind, fitted fixed + per media second like the costs;
- with several runs, each item's seconds are the median over runs before anything is fitted.
"""

from __future__ import annotations

import functools
import html
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import ray
import sqlalchemy as sa
from rich.console import Console

from evidence.schema import artifacts, custody_events, items, metadata, results
from evidence.store import Store
from models import whisper
from pipelines.bench.backlog_mix import Observed, one_run, peer_entry
from pipelines.bench.ingest import _tool
from pipelines.bench.keyframes import _ffmpeg_decode
from pipelines.bench.report import fresh_data, machine_info, scratch_folder
from pipelines.config import QarinaConfig
from pipelines.plan import Plan
from pipelines.samples.mixed_backlog import make_backlog
from pipelines.session import open_store
from pipelines.sizing.costs import (
    KINDS,
    BenchFile,
    Device,
    Growth,
    StageCost,
    reserved_units,
    write_bench,
)
from workers import STAGES
from workers.tools import package_version

#: Items in the generated sample when no folder is given: a few minutes on two cores.
DEFAULT_SAMPLE_ITEMS = 60
#: Libraries whose versions change stage costs; the stages' own tools come from provenance.
_PACKAGES = (
    "ray", "faster-whisper", "ctranslate2", "onnxruntime", "pdqhash", "imagehash",
    "scenedetect", "pillow", "numpy", "av", "sqlalchemy",
)  # fmt: skip
#: Size bands: photos by bytes (a messenger's re-post, a phone photo, a camera original),
#: video and audio by seconds (a voice note, a clip, a longer recording).
_PHOTO_BANDS = ((200_000, "<200 KB"), (2_000_000, "200 KB-2 MB"), (None, ">2 MB"))
_MEDIA_BANDS = ((15.0, "<15 s"), (60.0, "15-60 s"), (180.0, "60-180 s"), (None, ">180 s"))
#: Columns naming the item a row belongs to, in order of preference (an artifact's own
#: `sha256` is its blob's, so its parent comes first).
_ITEM_COLUMNS = ("parent_sha256", "item_sha256", "archive_sha256", "b_sha256", "sha256")
#: stage -> (peer name, kinds): the peers `one_run` times, named as their figures are keyed.
_PEERS = {
    "hashes": ("pdqhash", ("photo",)),
    "keyframes": ("pyscenedetect", ("video",)),
    "transcript": ("faster_whisper", ("audio", "video")),
}
#: Originals per `openssl dgst` call: one process for many files, as ingest reads many.
_OPENSSL_BATCH = 256
_MIB = 2**20
_SAMPLE_S = 0.25


@dataclass
class _RunRecord:
    """What `_inspect` read from one run's store before it went."""

    items: dict[str, dict[str, Any]] = field(default_factory=dict)
    devices: dict[tuple[str, str], str] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    pids: dict[str, set[int]] = field(default_factory=dict)
    rows_after: dict[str, int] = field(default_factory=dict)
    #: item sha256 -> [blob bytes, artifact bytes, rows that name it]
    growth: dict[str, list[float]] = field(default_factory=dict)
    #: Ray's totals while the run was joined: CPU, GPU, nodes, accelerator types.
    cluster: dict[str, Any] = field(default_factory=dict)
    #: stage -> peer name -> `peer_entry`: the peers backlog-mix does not time.
    peers: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    #: kind -> {"items", "bytes", "seconds", "digests_agree"}: openssl over the originals.
    openssl: dict[str, dict[str, Any]] = field(default_factory=dict)


def _row_counts(store: Store) -> dict[str, int]:
    with store.database.reader.connect() as connection:
        return {
            table.name: int(
                connection.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
            )
            for table in metadata.sorted_tables
        }


def _item_column(table: sa.Table) -> sa.Column[Any] | None:
    for name in _ITEM_COLUMNS:
        if name in table.c and (name != "sha256" or table.c.sha256.foreign_keys or table is items):
            return table.c[name]
    return None


def _inspect(store: Store, seen: Observed, record: _RunRecord, peer: bool) -> None:
    """Per item its kind, bytes and media seconds; devices, versions and worker pids from the
    results and custody; the rows, blob and artifact bytes each item added; the resources of
    the Ray it ran on (still joined); with `peer`, the peers `one_run` does not time."""
    if ray.is_initialized():
        record.cluster = _cluster_resources()
    kinds = {sha256: entry["kind"] for sha256, entry in seen.items.items()}
    with store.database.reader.connect() as connection:
        for sha256, size_bytes in connection.execute(sa.select(items.c.sha256, items.c.size_bytes)):
            record.items[sha256] = {
                "kind": kinds.get(sha256, "other"),
                "bytes": int(size_bytes),
                "media_s": 0.0,
            }
        for row in connection.execute(
            sa.select(results.c.sha256, results.c.stage, results.c.data, results.c.provenance)
        ):
            data, provenance = row.data or {}, row.provenance or {}
            item = record.items.get(row.sha256)
            if row.stage == "probe" and item is not None:
                item["media_s"] = float(data.get("duration_s") or 0.0)
            device = str(data.get("device") or "cpu")
            record.devices[(row.stage, kinds.get(row.sha256, "other"))] = (
                "gpu" if "cuda" in device else "cpu"
            )
            record.versions[f"stage.{row.stage}"] = str(provenance.get("stage_version"))
            for tool, version in (provenance.get("tools") or {}).items():
                record.versions[str(tool)] = str(version)
            if provenance.get("qarina"):
                record.versions["qarina"] = str(provenance["qarina"])
            model = data.get("model")
            if row.stage == "transcript" and isinstance(model, dict):
                record.versions["whisper_model"] = str(model.get("name"))
                record.versions["whisper_model_sha256"] = str(model.get("sha256"))
        for stage, details in connection.execute(
            sa.select(custody_events.c.stage, custody_events.c.details).where(
                custody_events.c.action.in_(("result", "skip", "failure"))
            )
        ):
            pid = _details(details).get("provenance", {}).get("worker_pid")
            if pid is not None and stage:
                record.pids.setdefault(stage, set()).add(int(pid))
        _owned_growth(connection, record)
    record.rows_after = _row_counts(store)
    if peer:
        _more_peers(store, seen, record)


def _cluster_resources() -> dict[str, Any]:
    """What Ray says the cluster holds: a bench on an existing cluster (`--address`) is
    per core and per GPU of the whole cluster, not of the driver's machine."""
    resources: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]
    nodes: list[dict[str, Any]] = ray.nodes()  # type: ignore[no-untyped-call]
    return {
        "cpus": float(resources.get("CPU", 0.0)),
        "gpus": float(resources.get("GPU", 0.0)),
        "nodes": len([node for node in nodes if node.get("Alive")]),
        "accelerators": sorted(
            key.removeprefix("accelerator_type:")
            for key in resources
            if key.startswith("accelerator_type:")
        ),
    }


def _more_peers(store: Store, seen: Observed, record: _RunRecord) -> None:
    """`ffmpeg -f null` decoding the videos the keyframes stage ran on (`bench keyframes`'s
    yardstick, beside PySceneDetect), and `openssl dgst -sha256` over each kind's originals
    (`bench ingest`'s peer for intake's hashing), timed from the blob store after the run."""
    videos = sorted(sha256 for sha256, item in seen.items.items() if "keyframes" in item["stages"])
    if videos:
        ffmpeg = _tool("ffmpeg")
        record.peers["keyframes"] = {
            "ffmpeg_decode": peer_entry(
                f"{ffmpeg} -threads 2 -i CLIP -f null - (`bench keyframes`' decode yardstick)",
                videos, store.blobs, seen, "keyframes",
                lambda: functools.partial(_ffmpeg_decode, ffmpeg),
            )
        }  # fmt: skip
    openssl = _tool("openssl")
    for kind in KINDS:
        shas = sorted(sha256 for sha256, item in record.items.items() if item["kind"] == kind)
        if shas:
            record.openssl[kind] = _openssl_sha256(
                openssl, {sha256: store.blobs.path_for(sha256) for sha256 in shas}
            )


def _openssl_sha256(openssl: str, originals: dict[str, Path]) -> dict[str, Any]:
    """`openssl dgst -sha256 -r` over the originals (SHA-256 -> path), a batch of files per
    process: the seconds, the bytes, and whether every digest is the one the store gave."""
    named = list(originals.items())
    agree = True
    started = time.perf_counter()
    for start in range(0, len(named), _OPENSSL_BATCH):
        batch = named[start : start + _OPENSSL_BATCH]
        listed = subprocess.run(
            [openssl, "dgst", "-sha256", "-r", *(str(path) for _, path in batch)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        digests = [line.split()[0].lower() for line in listed.stdout.splitlines() if line]
        agree = agree and digests == [sha256 for sha256, _ in batch]
    seconds = time.perf_counter() - started
    return {
        "items": len(named),
        "bytes": sum(path.stat().st_size for _, path in named),
        "seconds": seconds,
        "digests_agree": agree,
    }


def _owned_growth(connection: sa.Connection, record: _RunRecord) -> None:
    """Per item: its blob bytes, its artifacts' bytes, and the rows of every table that name
    it (directly, or through the result they belong to); fitted per media second later."""
    growth = record.growth
    for sha256, item in record.items.items():
        growth[sha256] = [float(item["bytes"]), 0.0, 0.0]
    for row in connection.execute(sa.select(artifacts.c.parent_sha256, artifacts.c.size_bytes)):
        if row.parent_sha256 in growth:
            growth[row.parent_sha256][1] += float(row.size_bytes)
    result_items = dict(connection.execute(sa.select(results.c.id, results.c.sha256)).all())
    for table in metadata.sorted_tables:
        column = _item_column(table)
        if column is None and "result_id" in table.c:
            owners: Iterable[Any] = (
                result_items.get(value)
                for value in connection.execute(sa.select(table.c.result_id)).scalars()
            )
        elif column is not None:
            owners = connection.execute(sa.select(column)).scalars()
        else:
            continue
        for owner in owners:
            if owner in growth:
                growth[owner][2] += 1


def _details(details: Any) -> dict[str, Any]:
    return cast(dict[str, Any], json.loads(details) if isinstance(details, str) else details or {})


class _RssWatch:
    """Peak RSS (the kernel's VmHWM) of every process descending from this one, sampled from
    /proc a few times a second: Ray's workers are grandchildren of the driver, and each keeps
    its own high-water mark, so a sample only has to come before the process ends."""

    def __init__(self) -> None:
        self.peaks: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-rss", daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(_SAMPLE_S):
            self.sample()

    def sample(self) -> None:
        parents: dict[int, int] = {}
        peaks: dict[int, int] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
            pid = int(entry.name)
            parents[pid] = int(fields.get("PPid", "0").strip() or 0)
            if "VmHWM" in fields:
                peaks[pid] = int(fields["VmHWM"].split()[0]) * 1024
        me = os.getpid()
        for pid, peak in peaks.items():
            ancestor, hops = pid, 0
            while ancestor not in (0, 1, me) and hops < 64:
                ancestor, hops = parents.get(ancestor, 0), hops + 1
            if ancestor == me:
                self.peaks[pid] = max(peak, self.peaks.get(pid, 0))

    def __enter__(self) -> _RssWatch:
        if Path("/proc/self/status").exists():
            self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


def gpu_info() -> list[dict[str, Any]]:
    """The GPUs nvidia-smi lists (name, memory), or none when it is absent or fails."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        listed = subprocess.run(
            [smi, "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=20, check=True,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in listed.stdout.splitlines():
        name, _, memory = line.rpartition(",")
        if name.strip():
            gpus.append({"name": name.strip(), "memory_bytes": int(float(memory)) * 2**20})
    return gpus


def fit(points: Sequence[tuple[float, float]]) -> tuple[float, float, str]:
    """(seconds per item, seconds per media second, method) for (media s, seconds) points.

    Least squares when at least three items span a second or more of media and both parts
    come out non-negative; otherwise a line through the origin (`proportional`: media seconds
    then carry the whole cost, the safer reading when lengths cannot be told apart), or a
    flat mean per item (`per-item`) when the items have no duration or cost fell with length.
    """
    xs = [x for x, _ in points]
    ys = [y for _, y in points]
    mean_y = statistics.fmean(ys) if ys else 0.0
    if len(points) >= 3 and max(xs) - min(xs) >= 1.0:
        mean_x = statistics.fmean(xs)
        spread = sum((x - mean_x) ** 2 for x in xs)
        slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / spread
        intercept = mean_y - slope * mean_x
        if slope >= 0 and intercept >= 0:
            return intercept, slope, "least-squares"
        if slope < 0:
            return mean_y, 0.0, "per-item"
    total_x = sum(xs)
    if total_x > 0:
        return 0.0, sum(x * y for x, y in points) / sum(x * x for x in xs), "proportional"
    return mean_y, 0.0, "per-item"


def _band(kind: str, item: dict[str, Any]) -> str:
    value, bands = (
        (item["bytes"], _PHOTO_BANDS) if kind == "photo" else (item["media_s"], _MEDIA_BANDS)
    )
    return next(name for limit, name in bands if limit is None or value < limit)


def _shape(record: _RunRecord) -> dict[str, Any]:
    by_kind: dict[str, dict[str, Any]] = {}
    for item in record.items.values():
        entry = by_kind.setdefault(
            item["kind"], {"items": 0, "bytes": 0, "media_s": 0.0, "bands": {}}
        )
        entry["items"] += 1
        entry["bytes"] += item["bytes"]
        entry["media_s"] = round(entry["media_s"] + item["media_s"], 2)
        if item["kind"] in KINDS:
            band = _band(item["kind"], item)
            entry["bands"][band] = entry["bands"].get(band, 0) + 1
    return {
        "items": len(record.items),
        "bytes": sum(item["bytes"] for item in record.items.values()),
        "by_kind": dict(sorted(by_kind.items())),
    }


def _peer_figures(name: str, entry: dict[str, Any] | None, media_s: float) -> dict[str, float]:
    """One `peer_entry` as cost figures keyed `NAME.figure` (a cost's `peer` holds floats, so
    the peer's name travels in the keys: `pyscenedetect.seconds_per_item`)."""
    if not entry or not entry.get("items"):
        return {}
    figures = {
        "seconds_per_item": entry["peer_s"] / entry["items"],
        "setup_s": float(entry["setup_s"]),
        "items": float(entry["items"]),
    }
    if media_s > 0:
        figures["seconds_per_media_s"] = entry["peer_s"] / media_s
    if entry.get("stage_over_peer") is not None:
        figures["stage_over_peer"] = float(entry["stage_over_peer"])
    return {f"{name}.{key}": value for key, value in figures.items()}


def _openssl_figures(run: dict[str, Any], record: _RunRecord, kind: str) -> dict[str, float]:
    """openssl's SHA-256 of this kind's originals beside ingest's cost (hash, copy, fsync,
    database; timed over the whole sample, so the same for every kind), per item and per MiB.

    Intake is no Ray stage and so has no cost of its own: these ride on the hashes stage's
    cost (perceptual hashes, the stage named for hashing), the place a reader looks."""
    hashed = record.openssl.get(kind)
    if not hashed or not hashed["items"]:
        return {}
    figures = {"openssl_sha256.seconds_per_item": hashed["seconds"] / hashed["items"]}
    if hashed["bytes"]:
        figures["openssl_sha256.seconds_per_mib"] = hashed["seconds"] / hashed["bytes"] * _MIB
    count = len(record.items)
    size = sum(item["bytes"] for item in record.items.values())
    if count:
        figures["ingest.seconds_per_item"] = run["ingest_s"] / count
    if size:
        figures["ingest.seconds_per_mib"] = run["ingest_s"] / size * _MIB
    return figures


def _run_peers(
    run: dict[str, Any], record: _RunRecord, stage: str, kind: str, media_s: float
) -> dict[str, float] | None:
    """Every peer's figures for one stage and kind in one run, or None when none ran."""
    figures: dict[str, float] = {}
    if stage in _PEERS and kind in _PEERS[stage][1]:
        name = _PEERS[stage][0]
        figures.update(_peer_figures(name, run.get("peers", {}).get(stage), media_s))
    for name, entry in record.peers.get(stage, {}).items():
        figures.update(_peer_figures(name, entry, media_s))
    if stage == "hashes":
        figures.update(_openssl_figures(run, record, kind))
    return figures or None


def _median_peer(figures: list[dict[str, float] | None]) -> dict[str, float] | None:
    present = [entry for entry in figures if entry]
    if not present:
        return None
    keys = set().union(*present)
    return {
        key: round(statistics.median([entry[key] for entry in present if key in entry]), 6)
        for key in sorted(keys)
    }


def _costs(
    wanted: Sequence[str],
    runs: list[tuple[dict[str, Any], Observed, _RunRecord]],
    rss: dict[int, int],
    any_peak: bool = True,
) -> tuple[list[StageCost], list[dict[str, Any]], list[dict[str, Any]]]:
    """Costs per (stage, kind), the fit each rests on, and per size band the mean seconds.

    A stage whose workers were not seen gets the run's largest peak when `any_peak` (a local
    Ray's workers all descend from this process), none otherwise (on a cluster, the only
    processes seen are this driver's, peers included)."""
    last = runs[-1][2]
    costs: list[StageCost] = []
    fits: list[dict[str, Any]] = []
    bands: list[dict[str, Any]] = []
    for stage in wanted:
        stage_pids = set().union(*(record.pids.get(stage, set()) for _, _, record in runs))
        peaks = [rss[pid] for pid in stage_pids if pid in rss]
        peak = max(peaks) if peaks else (max(rss.values()) if rss and any_peak else None)
        peer_media = sum(
            item["media_s"]
            for sha256, item in last.items.items()
            if (stage, sha256) in runs[-1][1].work and item["kind"] in ("audio", "video")
        )
        for kind in KINDS:
            shas = sorted(
                sha256
                for sha256, item in last.items.items()
                if item["kind"] == kind and (stage, sha256) in runs[-1][1].work
            )
            if not shas:
                continue
            device = cast(Device, last.devices.get((stage, kind), "cpu"))
            reserved = reserved_units(stage, device)
            seconds = {
                sha256: reserved
                * statistics.median(seen.work.get((stage, sha256), 0.0) for _, seen, _ in runs)
                for sha256 in shas
            }
            media = {sha256: last.items[sha256]["media_s"] for sha256 in shas}
            if kind == "photo":
                per_item, per_media, method = statistics.fmean(seconds.values()), 0.0, "mean"
            else:
                per_item, per_media, method = fit([(media[s], seconds[s]) for s in shas])
            peer = _median_peer(
                [_run_peers(run, record, stage, kind, peer_media) for run, _, record in runs]
            )
            costs.append(
                StageCost(
                    stage,
                    kind,
                    device,
                    round(per_item, 6),
                    round(per_media, 6),
                    peak,
                    len(shas),
                    peer,
                    reserved,
                )
            )
            fits.append({"stage": stage, "kind": kind, "method": method, "items": len(shas)})
            by_band: dict[str, list[float]] = {}
            for sha256 in shas:
                by_band.setdefault(_band(kind, last.items[sha256]), []).append(seconds[sha256])
            bands.extend(
                {
                    "stage": stage,
                    "kind": kind,
                    "band": band,
                    "items": len(values),
                    "seconds_per_item": round(statistics.fmean(values), 6),
                }
                for band, values in by_band.items()
            )
    return costs, fits, bands


def _growth(
    runs: list[_RunRecord], before: dict[str, int]
) -> tuple[list[Growth], dict[str, int], list[dict[str, Any]]]:
    """Per kind what an item adds (blob and artifact bytes, rows it owns plus an even share of
    the rows no item owns: the run's own custody, controls), and the fits behind it.

    Each item's figures are medians over runs; for video and audio they are fitted like the
    costs (`fit`: fixed + per media second, the same fallbacks), since a two-minute video's
    blob and transcript rows are not a ten-second one's; photos get a mean per item."""
    added = {name: count - before.get(name, 0) for name, count in runs[-1].rows_after.items()}
    last = runs[-1]
    shared = statistics.median(
        max(0.0, sum(record.rows_after.values()) - sum(before.values())
            - sum(values[2] for values in record.growth.values()))
        / max(1, len(record.items))
        for record in runs
    )  # fmt: skip
    growths: list[Growth] = []
    fits: list[dict[str, Any]] = []
    for kind in KINDS:
        shas = sorted(sha256 for sha256, item in last.items.items() if item["kind"] == kind)
        if not shas:
            continue
        values = {
            sha256: [
                statistics.median(
                    record.growth[sha256][index] for record in runs if sha256 in record.growth
                )
                for index in range(3)
            ]
            for sha256 in shas
        }
        fixed, per_media = [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]
        for index, quantity in enumerate(("blob_bytes", "artifact_bytes", "db_rows")):
            if kind == "photo":
                fixed[index], method = statistics.fmean(v[index] for v in values.values()), "mean"
            else:
                fixed[index], per_media[index], method = fit(
                    [(last.items[sha256]["media_s"], values[sha256][index]) for sha256 in shas]
                )
            fits.append({"kind": kind, "quantity": quantity, "method": method, "items": len(shas)})
        growths.append(
            Growth(
                kind,
                blob_bytes=round(fixed[0], 3),
                artifact_bytes=round(fixed[1], 3),
                db_rows=round(fixed[2] + shared, 3),
                blob_bytes_per_media_s=round(per_media[0], 3),
                artifact_bytes_per_media_s=round(per_media[1], 3),
                db_rows_per_media_s=round(per_media[2], 6),
            )
        )
    return growths, added, fits


@contextmanager
def _sample_folder(sample: Path | None, scratch: Path, count: int) -> Iterator[Path]:
    if sample is not None:
        if not sample.is_dir():
            raise FileNotFoundError(f"no sample folder at {sample}")
        yield sample.resolve()
        return
    folder = Path(tempfile.mkdtemp(prefix="sample-", dir=scratch))
    make_backlog(folder, count, shape="phone")
    yield folder


def bench_stages(
    config: QarinaConfig,
    *,
    sample: Path | None = None,
    stages: Sequence[str] | None = None,
    runs: int = 1,
    items_count: int = DEFAULT_SAMPLE_ITEMS,
    peer: bool = True,
    json_out: Path | None = None,
    html_out: Path | None = None,
    progress: Console | None = None,
    address: str | None = None,
) -> BenchFile:
    """Measure every stage (or `stages`: every stage still runs, since later stages read the
    earlier ones' results, but only these are costed and peered) on `sample`, or on a generated
    phone-shaped backlog of `items_count` items, `runs` times; write the bench file.

    With `address` (HOST:PORT) the runs join that Ray cluster instead of a private local one,
    and the machine is the cluster: `cores` and `gpus` are Ray's totals, so figures per core
    and per GPU divide by the cluster's units. The cluster's workers read the originals from
    this process's scratch data folder by path, so it must be on storage every node mounts
    (as `qarina run --address` needs of the data folder).

    Raises:
        ValueError: runs below 1, or an unknown stage name.
        FileNotFoundError: the sample folder is not there.
        ModelMissing: no Whisper model, checked before anything is timed.
    """
    if runs < 1:
        raise ValueError("runs must be at least 1")
    names = [stage_class.name for stage_class, _ in STAGES]
    wanted = list(stages) if stages else names
    unknown = sorted(set(wanted) - set(names))
    if unknown:
        raise ValueError(f"unknown stages {unknown}; stages are {names}")
    wanted = [name for name in names if name in wanted]
    config = config.with_overrides(models_root=config.models_dir)
    if "transcript" in Plan.default(settings=config).stages:
        whisper.resolve(config.models_dir, config.whisper_model)
    measured: list[tuple[dict[str, Any], Observed, _RunRecord]] = []
    with scratch_folder(config) as scratch, _sample_folder(sample, scratch, items_count) as folder:
        machine = machine_info(scratch)
        baseline = fresh_data(config, scratch, "baseline")
        empty = open_store(baseline)
        try:
            before = _row_counts(empty)
        finally:
            empty.close()
        with _RssWatch() as watch:
            for index in range(runs):
                record = _RunRecord()
                run, seen = one_run(
                    config, scratch, folder, index, peer, progress or Console(quiet=True),
                    inspect=functools.partial(_inspect, record=record, peer=peer),
                    address=address,
                )  # fmt: skip
                measured.append((run, seen, record))
    costs, fits, bands = _costs(wanted, measured, watch.peaks, any_peak=address is None)
    growth, rows_added, growth_fits = _growth([record for _, _, record in measured], before)
    last_run = measured[-1][0]
    cluster = measured[-1][2].cluster
    if address is None:
        cores, gpus = int(machine["cpus_usable"] or 0), gpu_info()
    else:
        cores, gpus = int(cluster.get("cpus", 0)), _cluster_gpus(cluster)
    versions = {
        **{name: str(package_version(name)) for name in _PACKAGES},
        **measured[-1][2].versions,
    }
    bench = BenchFile(
        machine={
            **machine,
            "cores": cores,
            "gpus": gpus,
            "peak_rss_bytes_run": max(watch.peaks.values(), default=None),
            # The CPU model, RAM and cpus_usable above are the driver's; this is what ran.
            "ray": {"address": address or "local", **cluster},
        },
        versions=dict(sorted(versions.items())),
        sample={
            **_shape(measured[-1][2]),
            "folder": "generated" if sample is None else str(folder),
            "generated_items": None if sample is not None else items_count,
            "runs": runs,
            "stages": wanted,
            "fits": fits,
            "bands": bands,
            "rows_added": rows_added,
            "wall_s": [run["wall_s"] for run, _, _ in measured],
            "processing_s": [run["processing_s"] for run, _, _ in measured],
            "worker_s": [run["worker_s"] for run, _, _ in measured],
            "ray_address": address or "local",
            "peers": {
                **{_PEERS[name][0]: entry["peer"] for name, entry in last_run["peers"].items()},
                **{
                    name: entry["peer"]
                    for entries in measured[-1][2].peers.values()
                    for name, entry in entries.items()
                },
            },
            "ingest": _ingest_figures(measured),
            "per_unit": _per_unit(measured, cores, len(gpus)),
            "growth_fits": growth_fits,
        },
        costs=costs,
        growth=growth,
    )
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        write_bench(bench, json_out)
    if html_out is not None:
        html_out.parent.mkdir(parents=True, exist_ok=True)
        html_out.write_text(render_html(bench), encoding="utf-8")
    return bench


def _cluster_gpus(cluster: dict[str, Any]) -> list[dict[str, Any]]:
    """The cluster's GPUs as a bench file lists them: this machine's own (nvidia-smi) when
    they are all there are, else one entry per GPU Ray counts, named by its accelerator type
    when the cluster has one, memory unknown."""
    count = int(cluster.get("gpus", 0))
    local = gpu_info()
    if len(local) == count:
        return local
    accelerators = cluster.get("accelerators") or ["GPU"]
    return [{"name": "/".join(accelerators), "memory_bytes": None} for _ in range(count)]


def _ingest_figures(
    measured: list[tuple[dict[str, Any], Observed, _RunRecord]],
) -> dict[str, Any]:
    """Intake (hash, copy, fsync, rows) per item and per MiB beside `openssl dgst -sha256`
    over the same originals, by kind: medians over runs."""
    record = measured[-1][2]
    count = len(record.items)
    size = sum(item["bytes"] for item in record.items.values())
    ingest_s = statistics.median(run["ingest_s"] for run, _, _ in measured)
    figures: dict[str, Any] = {
        "items": count,
        "bytes": size,
        "ingest_s": round(ingest_s, 4),
        "seconds_per_item": round(ingest_s / count, 6) if count else None,
        "seconds_per_mib": round(ingest_s / size * _MIB, 6) if size else None,
    }
    openssl: dict[str, Any] = {}
    for kind in KINDS:
        hashed = [rec.openssl[kind] for _, _, rec in measured if kind in rec.openssl]
        if not hashed:
            continue
        seconds = statistics.median(entry["seconds"] for entry in hashed)
        openssl[kind] = {
            "items": hashed[-1]["items"],
            "bytes": hashed[-1]["bytes"],
            "seconds": round(seconds, 4),
            "seconds_per_item": round(seconds / hashed[-1]["items"], 6),
            "seconds_per_mib": (
                round(seconds / hashed[-1]["bytes"] * _MIB, 6) if hashed[-1]["bytes"] else None
            ),
            "digests_agree": all(entry["digests_agree"] for entry in hashed),
        }
    if openssl:
        hashed_s = sum(entry["seconds"] for entry in openssl.values())
        figures["openssl_sha256"] = openssl
        figures["ingest_over_openssl"] = round(ingest_s / hashed_s, 3) if hashed_s else None
    return figures


def _per_unit(
    measured: list[tuple[dict[str, Any], Observed, _RunRecord]], cores: int, gpus: int
) -> dict[str, Any]:
    """Throughput per unit of what ran the sample (this machine, or the whole cluster with
    `--address`): items per core-second and per GPU-second of processing wall time, and the
    share of the cores' time that went to stage work."""
    items = len(measured[-1][2].items)
    processing_s = statistics.median(run["processing_s"] for run, _, _ in measured)
    worker_s = statistics.median(run["worker_s"] for run, _, _ in measured)
    figures: dict[str, Any] = {"cores": cores, "gpus": gpus, "processing_s": processing_s}
    if processing_s > 0 and cores:
        figures["items_per_core_s"] = round(items / (processing_s * cores), 6)
        figures["worker_s_per_core_s"] = round(worker_s / (processing_s * cores), 4)
    if processing_s > 0 and gpus:
        figures["items_per_gpu_s"] = round(items / (processing_s * gpus), 6)
    return figures


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def render_html(bench: BenchFile) -> str:
    """One static page: the machine, the sample, a row per stage and kind, growth."""
    machine = bench.machine
    gpus = ", ".join(gpu["name"] for gpu in machine.get("gpus") or []) or "none"
    rows = "".join(
        "<tr>" + "".join(f"<td>{_cell(value)}</td>" for value in (
            cost.stage, cost.kind, cost.device, cost.reserved, cost.items, cost.seconds_per_item,
            cost.seconds_per_media_s,
            None if cost.peak_rss_bytes is None else round(cost.peak_rss_bytes / 2**20, 1),
            ", ".join(
                f"{name} {value:.4g}" for name, value in cost.peers_per_item().items()
            ) or None,
        )) + "</tr>"
        for cost in bench.costs
    )  # fmt: skip
    growth = "".join(
        f"<tr><td>{_cell(g.kind)}</td><td>{_cell(g.blob_bytes)}</td>"
        f"<td>{_cell(g.artifact_bytes)}</td><td>{_cell(g.db_rows)}</td></tr>"
        for g in bench.growth
    )
    kinds = ", ".join(
        f"{entry['items']} {kind} ({entry['media_s']} s)"
        for kind, entry in bench.sample.get("by_kind", {}).items()
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>qarina bench</title>
<style>body{{font-family:sans-serif}}td,th{{padding:2px 8px;text-align:right}}</style></head>
<body><h1>qarina bench</h1>
<p>{_cell(machine.get("cpu_model"))}, {_cell(machine.get("cores"))} cores,
{_cell((machine.get("ram_bytes") or 0) / 2**30)} GiB RAM, GPUs: {_cell(gpus)};
measured {_cell(machine.get("measured_at"))}</p>
<p>sample: {_cell(kinds)}; runs: {_cell(bench.sample.get("runs"))}</p>
<p>s: reserved device-seconds, the worker's seconds times the cores or GPUs its actor held;
the peers' figures are their wall seconds.</p>
<table><tr><th>stage</th><th>kind</th><th>device</th><th>held</th><th>items</th><th>s/item</th>
<th>s/media s</th><th>peak RSS MiB</th><th>peers s/item</th></tr>{rows}</table>
<h2>Store growth per item</h2>
<table><tr><th>kind</th><th>blob bytes</th><th>artifact bytes</th><th>DB rows</th></tr>
{growth}</table></body></html>
"""
