"""`qarina bench tiny`: the per-item floor of a backlog of tiny photos.

A backlog of thumbnails, stickers and messenger previews is bound by what every item costs
apart from its pixels: leasing and committing its jobs, Ray round trips, tool calls. This
benchmark sends thousands of tiny photos through probe, metadata and hashes on a private
local Ray, as `qarina run` does, and measures them against the floor: the same stages in a
plain loop with no store and no Ray, one process per core.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import multiprocessing
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from PIL import Image

from pipelines.bench.photos import queue_run
from pipelines.bench.report import finish, machine_info, median, scratch_folder
from pipelines.config import QarinaConfig
from pipelines.plan import Plan
from pipelines.samples import photos
from workers.base import Kind, Stage, StageInput, result_to_json

#: The stages measured: what every photo goes through.
STAGES = ("probe", "metadata", "hashes")
#: Sizes cycle from a 64 px square icon to a 320x240 preview.
_WIDTHS = (64, 96, 128, 160, 200, 240, 280, 320)
_HEIGHTS = (64, 80, 120, 160, 200, 240)
#: Every fourth photo is a PNG (a screenshot), the rest JPEGs; both carry EXIF.
_PNG_EVERY = 4
_BAGHDAD = dt.timezone(dt.timedelta(hours=3))


def tiny_size(index: int) -> tuple[int, int]:
    return _WIDTHS[index % len(_WIDTHS)], _HEIGHTS[(index // len(_WIDTHS)) % len(_HEIGHTS)]


def make_tiny_photos(folder: Path, count: int) -> dict[str, Any]:
    """`count` distinct small photos with EXIF (time, place, device), of many sizes.

    Each is rendered from its own seed, so every file is a new item with its own pixels (a
    tiny photo renders in a few milliseconds). Returns what was made, for the report.
    """
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    total = pngs = 0
    for index in range(count):
        taken = dt.datetime(2024, 5, 1, 9, 0, tzinfo=_BAGHDAD) + dt.timedelta(seconds=61 * index)
        gps = (33.3152 + index * 1e-5, 44.3661 - index * 1e-5, 34.0)
        exif = photos.exif_bytes(datetime_original=taken, gps=gps)
        jpeg = folder / f"IMG_{index:06d}.jpg"
        photos.photo(jpeg, size=tiny_size(index), seed=index, exif=exif, quality=85)
        target = jpeg
        if index % _PNG_EVERY == _PNG_EVERY - 1:
            target = jpeg.with_suffix(".png")
            with Image.open(jpeg) as image:
                image.save(target, "PNG", exif=exif)
            jpeg.unlink()
            pngs += 1
        total += target.stat().st_size
    return {
        "count": count,
        "pngs": pngs,
        "sizes": sorted({f"{w}x{h}" for w, h in map(tiny_size, range(min(count, 48)))}),
        "bytes_total": total,
        "generation_s": round(time.perf_counter() - started, 2),
    }


def _floor_worker(paths: list[str], start: Any, report: Any) -> None:
    """One core's share of the floor: the stages set up once, then run on each file in turn,
    as plainly as a script would, with no store, no Ray and no scratch folders per item."""
    plan = Plan.default(STAGES)
    stages: list[Stage[Any, Any]] = [plan.stages[name] for name in STAGES]
    for stage in stages:
        stage.setup(None)
    spent = dict.fromkeys(STAGES, 0.0)
    with tempfile.TemporaryDirectory(prefix="qarina-floor-") as scratch:
        began = _loop(stages, [Path(path) for path in paths], Path(scratch), spent, start)
    report.put((began, time.monotonic(), spent))
    for stage in stages:
        stage.teardown()


def _loop(
    stages: list[Stage[Any, Any]],
    paths: list[Path],
    workdir: Path,
    spent: dict[str, float],
    start: Any,
) -> float:
    """Run every stage on every file once all floor processes are ready; returns when the
    loop began (a monotonic clock, which every process shares)."""
    start.wait()
    began = time.monotonic()
    for path in paths:
        upstream: dict[str, dict[str, Any]] = {}
        kind = Kind.OTHER
        for stage in stages:
            clock = time.perf_counter()
            data = result_to_json(
                stage.run(StageInput("0" * 64, path, kind, upstream), workdir).result
            )
            spent[stage.name] += time.perf_counter() - clock
            if stage.decides_kind:
                kind, upstream = Kind(data["kind"]), {stage.name: data}
    return began


@contextlib.contextmanager
def _one_math_thread() -> Iterator[None]:
    """Processes started inside get one BLAS/OpenMP thread each, as Ray gives a 1-CPU actor
    (OMP_NUM_THREADS=1): one process per core with a thread pool per core each would time-
    share the cores, and the floor would measure the contention, not the stages."""
    names = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
    before = {name: os.environ.get(name) for name in names}
    os.environ.update(dict.fromkeys(names, "1"))
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _floor_run(folder: Path, workers: int) -> dict[str, Any]:
    """The stages in a plain loop, one process per core, each file in exactly one of them."""
    files = sorted(str(path) for path in folder.iterdir())
    context = multiprocessing.get_context("spawn")  # never fork a process that may hold Ray
    start, report = context.Barrier(workers), context.Queue()
    processes = [
        context.Process(target=_floor_worker, args=(files[index::workers], start, report))
        for index in range(workers)
    ]
    with _one_math_thread():
        for process in processes:
            process.start()
    finished = [report.get() for _ in processes]
    for process in processes:
        process.join()
    wall_s = max(end for _, end, _ in finished) - min(began for began, _, _ in finished)
    return {
        "processes": workers,
        "wall_s": round(wall_s, 3),
        "items_per_s": round(len(files) / wall_s, 2),
        "stage_ms_per_item": {
            name: round(sum(spent[name] for _, _, spent in finished) / len(files) * 1000, 3)
            for name in STAGES
        },
    }


def _ray_run(
    config: QarinaConfig, scratch: Path, folder: Path, count: int, cores: int
) -> dict[str, Any]:
    """Ingest into a fresh SQLite store, then work the queue off on a private local Ray."""
    run = queue_run(config, scratch, folder, count, STAGES, use_ray=True, source="bench-tiny")
    summary = run.summary
    processing_s = summary.wall_s
    return {
        "new_items": run.new_items,
        "ingest_s": round(run.ingest_s, 3),
        "ingest_items_per_s": round(count / run.ingest_s, 2),
        "ray_startup_s": round(run.ray_startup_s, 3),
        "processing_s": round(processing_s, 3),
        "processing_items_per_s": round(count / processing_s, 2),
        "jobs_committed": summary.committed,
        "jobs_failed": summary.failed,
        "driver_lease_s": round(summary.lease_s, 3),
        "driver_commit_s": round(summary.commit_s, 3),
        # The driver's time in the store, as a share of the processing wall time.
        "store_share": round((summary.lease_s + summary.commit_s) / processing_s, 3),
        "stage_work": {
            name: {**entry, "ms_per_item": round(entry["duration_s_sum"] / count * 1000, 3)}
            for name, entry in run.stage_work.items()
        },
        "stage_work_s": round(run.stage_work_s, 3),
        # Wall time inside stages as a share of what the cores held while processing: above
        # 1 when actors (and the driver) time-share the cores.
        "stage_share": round(run.stage_work_s / (processing_s * cores), 3),
        "completion": run.completion,
    }


#: Figures whose medians over the rounds are the report's headline.
_RAY_FIELDS = (
    "ingest_s",
    "ingest_items_per_s",
    "ray_startup_s",
    "processing_s",
    "processing_items_per_s",
    "driver_lease_s",
    "driver_commit_s",
    "store_share",
    "stage_work_s",
    "stage_share",
)


def _medians(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure's median over the rounds, per item where a sum depends on the count."""
    ray_runs, floors = [run["ray"] for run in rounds], [run["floor"] for run in rounds]
    return {
        "ray": {
            **{field: round(median([run[field] for run in ray_runs]), 4) for field in _RAY_FIELDS},
            "stage_ms_per_item": {
                stage: round(
                    median([run["stage_work"][stage]["ms_per_item"] for run in ray_runs]), 3
                )
                for stage in STAGES
            },
        },
        "floor": {
            "items_per_s": round(median([floor["items_per_s"] for floor in floors]), 2),
            "stage_ms_per_item": {
                stage: round(median([floor["stage_ms_per_item"][stage] for floor in floors]), 3)
                for stage in STAGES
            },
        },
        "ray_to_floor": round(median([run["ray_to_floor"] for run in rounds]), 3),
    }


#: What issue 13 asks of a backlog of tiny photos on two cores.
TARGET_ITEMS_PER_S = 100.0


def bench_tiny(config: QarinaConfig, count: int, output: Path, *, runs: int = 3) -> dict[str, Any]:
    """Items/s of tiny photos through probe, metadata and hashes, against the plain-loop floor.

    Each round ingests the generated photos into a fresh SQLite store (timed apart: ingest
    items/s), starts a private local Ray (timed apart), and processes the queue to the end
    (processing items/s). The driver's own time in the store (leasing, committing) gives the
    store's share of the processing time; the stored provenance (`duration_s`) gives each
    stage's work. The floor runs the same stages on the same files in a plain loop, one
    process per usable core; rounds alternate which of the two goes first.
    """
    if count < 1 or runs < 1:
        raise ValueError("count and runs must be at least 1")
    with scratch_folder(config) as scratch:
        machine = machine_info(scratch)
        folder = scratch / "tiny"
        generated = make_tiny_photos(folder, count)
        workers = machine["cpus_usable"] or 1
        rounds = []
        for index in range(runs):
            ray_first = index % 2 == 0
            measured: dict[str, Any] = {"first": "ray" if ray_first else "floor"}
            for contender in ("ray", "floor") if ray_first else ("floor", "ray"):
                load_before = os.getloadavg()[0]
                measured[contender] = (
                    _ray_run(config, scratch, folder, count, workers)
                    if contender == "ray"
                    else _floor_run(folder, workers)
                )
                # Other work on the machine skews both; the load says how quiet it was.
                measured[contender]["load_1m"] = [load_before, os.getloadavg()[0]]
            measured["ray_to_floor"] = round(
                measured["ray"]["processing_items_per_s"] / measured["floor"]["items_per_s"], 3
            )
            rounds.append(measured)
    summary = _medians(rounds)
    rate = summary["ray"]["processing_items_per_s"]
    result: dict[str, Any] = {
        "benchmark": "tiny",
        "machine": machine,
        "params": {
            "count": count,
            "runs": runs,
            "stages": list(STAGES),
            "store": "sqlite",
            "ray_address": "local",
            "floor_processes": workers,
        },
        "generated": generated,
        "target": {"processing_items_per_s": TARGET_ITEMS_PER_S, "met": rate >= TARGET_ITEMS_PER_S},
        "median": summary,
        "formulas": {
            "processing_items_per_s": "count / processing_s (Ray startup and ingest apart)",
            "store_share": "(driver_lease_s + driver_commit_s) / processing_s",
            "stage_share": "stage_work_s / (processing_s * cpus_usable)",
            "ray_to_floor": "ray.processing_items_per_s / floor.items_per_s",
        },
        "all_done": all(run["ray"]["completion"]["all_done"] for run in rounds),
        "runs": rounds,
    }
    headline = (
        f"tiny: {rate} items/s through {', '.join(STAGES)} on Ray"
        f" (floor {summary['floor']['items_per_s']} items/s, {summary['ray_to_floor']:.0%} of it;"
        f" store {summary['ray']['store_share']:.0%} of processing,"
        f" stages {summary['ray']['stage_share']:.0%} of the cores);"
        f" ingest {summary['ray']['ingest_items_per_s']} items/s; medians of {runs}"
    )
    return finish(result, output, headline)
