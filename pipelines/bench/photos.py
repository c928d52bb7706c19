"""`qarina bench photos`: end-to-end photo throughput, Ray against the sequential runner."""

from __future__ import annotations

import datetime as dt
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import piexif
import ray
import sqlalchemy as sa

from evidence import jobs as jobq
from evidence.schema import results as results_table
from evidence.store import Store
from pipelines.bench.report import finish, fresh_data, machine_info, median, scratch_folder, timed
from pipelines.config import QarinaConfig
from pipelines.ingest import ingest_paths
from pipelines.plan import Plan
from pipelines.ray_runtime import RayExecutor, start_ray
from pipelines.runner import Executor, RunSummary, SequentialExecutor, run_queue
from pipelines.samples import photos

#: 12 MP, the size of a typical phone photo.
PHOTO_SIZE = (4000, 3000)
#: Distinct base images rendered per photo run; every file is then made unique by its EXIF.
#: Rendering a 12 MP image takes seconds, splicing a new EXIF block into it milliseconds.
_PHOTO_BASES = 4
_DAMASCUS = dt.timezone(dt.timedelta(hours=3))
_DEVICES = (("Samsung", "SM-A515F"), ("Apple", "iPhone 11"), ("Xiaomi", "Redmi Note 8"))


def _unique_exif(index: int) -> bytes:
    """A phone-like EXIF block whose time, place and description differ for every file."""
    make, model = _DEVICES[index % len(_DEVICES)]
    taken = dt.datetime(2024, 3, 12, 8, 0, tzinfo=_DAMASCUS) + dt.timedelta(seconds=37 * index)
    gps = (36.2021 + index * 1e-4, 37.1343 - index * 1e-4, 390.0 + index % 50)
    exif = piexif.load(photos.exif_bytes(make=make, model=model, datetime_original=taken, gps=gps))
    exif["0th"][piexif.ImageIFD.ImageDescription] = f"qarina bench photo {index:06d}".encode()
    return bytes(piexif.dump(exif))


def make_photos(folder: Path, count: int, size: tuple[int, int] = PHOTO_SIZE) -> dict[str, Any]:
    """`count` distinct JPEGs with EXIF and GPS: a few rendered bases, each file re-stamped.

    Every file has distinct bytes (its own EXIF), so each is a new item, while rendering stays
    at a few seconds in all. Returns what was made, for the report.
    """
    folder.mkdir(parents=True, exist_ok=True)
    bases_dir = folder.parent / f"{folder.name}-bases"
    bases_dir.mkdir(exist_ok=True)
    started = time.perf_counter()
    bases = [
        photos.photo(bases_dir / f"base-{seed}.jpg", size=size, seed=seed).read_bytes()
        for seed in range(min(count, _PHOTO_BASES))
    ]
    shutil.rmtree(bases_dir)
    total = 0
    for index in range(count):
        target = folder / f"IMG_{index:06d}.jpg"
        piexif.insert(_unique_exif(index), bases[index % len(bases)], str(target))
        total += target.stat().st_size
    return {
        "count": count,
        "width": size[0],
        "height": size[1],
        "distinct_bases": len(bases),
        "bytes_total": total,
        "generation_s": round(time.perf_counter() - started, 2),
    }


def stage_work(store: Store) -> dict[str, dict[str, float]]:
    """Per stage: results and the sum of their `duration_s` (time inside the stage itself)."""
    work: dict[str, dict[str, float]] = {}
    with store.database.reader.connect() as connection:
        rows = connection.execute(sa.select(results_table.c.stage, results_table.c.provenance))
        for stage, provenance in rows:
            entry = work.setdefault(stage, {"results": 0, "duration_s_sum": 0.0})
            entry["results"] += 1
            entry["duration_s_sum"] += float(provenance.get("duration_s", 0.0))
    for entry in work.values():
        entry["duration_s_sum"] = round(entry["duration_s_sum"], 3)
    return work


def completion(store: Store, count: int) -> dict[str, Any]:
    """Did every item end done in every stage? A benchmark of failed items measures nothing."""
    report = store.status()
    stages = {stage.stage: stage.counts for stage in report.stages}
    all_done = (
        report.items == count
        and report.open_jobs == 0
        and not report.failures_by_reason
        and bool(stages)
        and all(
            set(counts) == {jobq.DONE} and counts[jobq.DONE] == count for counts in stages.values()
        )
    )
    return {
        "items": report.items,
        "stages": stages,
        "failures_by_reason": report.failures_by_reason,
        "all_done": all_done,
    }


@dataclass(frozen=True)
class QueueRun:
    """One benchmark run from a fresh store: ingest timed, Ray's startup timed apart, then the
    queue worked off; with what every item ended as and each stage's work (see `stage_work`)."""

    new_items: int
    ingest_s: float
    ray_startup_s: float
    #: Whether this run started Ray (and shut it down): not when the caller had it running.
    ray_started_here: bool
    summary: RunSummary
    completion: dict[str, Any]
    stage_work: dict[str, dict[str, float]]

    @property
    def stage_work_s(self) -> float:
        return sum(entry["duration_s_sum"] for entry in self.stage_work.values())


def queue_run(
    config: QarinaConfig,
    scratch: Path,
    folder: Path,
    count: int,
    stages: Sequence[str],
    *,
    use_ray: bool,
    source: str,
) -> QueueRun:
    """Ingest the files under `folder` into a fresh SQLite data folder, then process the queue
    of `stages` to the end, on a private local Ray as `qarina run` starts it, or sequentially."""
    run_config = fresh_data(config, scratch, "ray" if use_ray else "sequential")
    plan = Plan.default(stages)
    store = Store.open(run_config.db_url, run_config.blob_root)
    started_ray = False
    try:
        started = time.perf_counter()
        intake = ingest_paths(store, plan, run_config, [folder], source=source)
        ingest_s = time.perf_counter() - started
        startup_s = 0.0
        executor: Executor
        if use_ray:
            started_ray = not ray.is_initialized()
            startup_s = timed(lambda: start_ray(None))
            executor = RayExecutor(plan, run_config)
        else:
            executor = SequentialExecutor(plan, run_config)
        try:
            summary = run_queue(store, plan, executor, run_config)
        finally:
            executor.close()
        done = completion(store, count)
        work = stage_work(store)
    finally:
        store.close()
        if started_ray:
            ray.shutdown()
        shutil.rmtree(run_config.data_dir, ignore_errors=True)
    return QueueRun(intake.new_items, ingest_s, startup_s, started_ray, summary, done, work)


def _photo_run(
    config: QarinaConfig, scratch: Path, photos: Path, count: int, *, use_ray: bool
) -> dict[str, Any]:
    """Ingest the photos into a fresh SQLite store, then process the queue to the end."""
    # The stages this benchmark has always measured, so its figures stay comparable over time.
    run = queue_run(
        config,
        scratch,
        photos,
        count,
        ["probe", "metadata"],
        use_ray=use_ray,
        source="bench-photos",
    )
    ingest_s, startup_s, processing_s = run.ingest_s, run.ray_startup_s, run.summary.wall_s
    wall_s = ingest_s + startup_s + processing_s
    return {
        "runner": "ray" if use_ray else "sequential",
        "ray_started_here": run.ray_started_here if use_ray else None,
        "new_items": run.new_items,
        "ingest_s": round(ingest_s, 3),
        "ray_startup_s": round(startup_s, 3),
        "processing_s": round(processing_s, 3),
        "wall_s": round(wall_s, 3),
        "wall_excl_startup_s": round(ingest_s + processing_s, 3),
        "items_per_s": round(count / wall_s, 2),
        "items_per_s_excl_startup": round(count / (ingest_s + processing_s), 2),
        "ingest_items_per_s": round(count / ingest_s, 2),
        "processing_items_per_s": round(count / processing_s, 2),
        "jobs_committed": run.summary.committed,
        "jobs_failed": run.summary.failed,
        "stage_work": run.stage_work,
        "stage_work_s": round(run.stage_work_s, 3),
        # Above 1 means stages ran in parallel; the rest up to 1 is driver, store and transport.
        "stage_work_per_processing_s": round(run.stage_work_s / processing_s, 3),
        "completion": run.completion,
    }


def _overheads(ray_run: dict[str, Any], sequential: dict[str, Any]) -> dict[str, float]:
    extra = ray_run["processing_s"] - sequential["processing_s"]
    return {
        "incl_startup": round((extra + ray_run["ray_startup_s"]) / ray_run["wall_s"], 3),
        "excl_startup": round(extra / ray_run["wall_excl_startup_s"], 3),
    }


def _warm_up(config: QarinaConfig, scratch: Path) -> None:
    """Process one photo untimed, so neither contender pays for cold imports and tool caches."""
    photos = scratch / "warm-up"
    make_photos(photos, 1, (640, 480))
    _photo_run(config, scratch, photos, 1, use_ray=False)
    shutil.rmtree(photos)


def bench_photos(
    config: QarinaConfig,
    count: int,
    output: Path,
    *,
    runs: int = 3,
    size: tuple[int, int] = PHOTO_SIZE,
) -> dict[str, Any]:
    """End-to-end photo throughput (ingest + probe + metadata), Ray against sequential.

    Each round ingests the same generated JPEGs into two fresh SQLite data folders and
    processes one on a private local Ray instance and one with the sequential runner; rounds
    alternate which goes first so neither always meets the warmer cache. Ray's startup
    (`ray.init`) is timed apart from its processing, and "Ray overhead" is the extra time the
    Ray run spent processing, as a share of its wall time:

        (ray_processing_s [+ ray_startup_s] - sequential_processing_s) / ray_wall_s

    Negative when Ray's parallelism wins. The per-stage sums of `duration_s` from the stored
    provenance show how much of the processing wall time was stage work at all.
    """
    if count < 1 or runs < 1:
        raise ValueError("count and runs must be at least 1")
    with scratch_folder(config) as scratch:
        machine = machine_info(scratch)
        photos = scratch / "photos"
        generated = make_photos(photos, count, size)
        _warm_up(config, scratch)
        rounds = []
        for index in range(runs):
            _warm_folder(photos)
            order = (True, False) if index % 2 == 0 else (False, True)
            measured: dict[str, Any] = {
                ("ray" if use_ray else "sequential"): _photo_run(
                    config, scratch, photos, count, use_ray=use_ray
                )
                for use_ray in order
            }
            measured["ray_overhead"] = _overheads(measured["ray"], measured["sequential"])
            measured["first"] = "ray" if order[0] else "sequential"
            rounds.append(measured)
    summary = _photo_summary(rounds)
    result: dict[str, Any] = {
        "benchmark": "photos",
        "machine": machine,
        "params": {"count": count, "runs": runs, "store": "sqlite", "ray_address": "local"},
        "generated": generated,
        "median": summary,
        "formulas": {
            "ray_overhead_incl_startup": "(ray.processing_s + ray.ray_startup_s"
            " - sequential.processing_s) / ray.wall_s",
            "ray_overhead_excl_startup": "(ray.processing_s - sequential.processing_s)"
            " / ray.wall_excl_startup_s",
            "wall_s": "ingest_s + ray_startup_s + processing_s",
        },
        "all_done": all(
            run[name]["completion"]["all_done"] for run in rounds for name in ("ray", "sequential")
        ),
        "runs": rounds,
    }
    headline = (
        f"photos: ray {summary['ray']['items_per_s']} items/s end to end"
        f" ({summary['ray']['items_per_s_excl_startup']} without startup),"
        f" sequential {summary['sequential']['items_per_s']} items/s;"
        f" ray overhead {summary['ray_overhead']['incl_startup']:+.1%} incl. startup,"
        f" {summary['ray_overhead']['excl_startup']:+.1%} excl."
    )
    return finish(result, output, headline)


def _warm_folder(folder: Path) -> None:
    """Read every generated file once, so both runners ingest from the page cache."""
    for path in sorted(folder.iterdir()):
        path.read_bytes()


_PHOTO_FIELDS = (
    "ingest_s",
    "ray_startup_s",
    "processing_s",
    "wall_s",
    "items_per_s",
    "items_per_s_excl_startup",
    "processing_items_per_s",
    "stage_work_s",
    "stage_work_per_processing_s",
)


def _photo_summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {
        name: {
            field: round(median([run[name][field] for run in rounds]), 4) for field in _PHOTO_FIELDS
        }
        for name in ("ray", "sequential")
    }
    for name in ("ray", "sequential"):
        stages = sorted({stage for run in rounds for stage in run[name]["stage_work"]})
        summary[name]["stage_work_by_stage_s"] = {
            stage: round(
                median(
                    [
                        run[name]["stage_work"].get(stage, {}).get("duration_s_sum", 0.0)
                        for run in rounds
                    ]
                ),
                4,
            )
            for stage in stages
        }
    summary["ray_overhead"] = {
        key: round(median([run["ray_overhead"][key] for run in rounds]), 4)
        for key in ("incl_startup", "excl_startup")
    }
    summary["speedup_ray_vs_sequential"] = {
        "end_to_end_incl_startup": round(
            median([run["sequential"]["wall_s"] / run["ray"]["wall_s"] for run in rounds]), 3
        ),
        "processing_only": round(
            median(
                [run["sequential"]["processing_s"] / run["ray"]["processing_s"] for run in rounds]
            ),
            3,
        ),
    }
    return summary
