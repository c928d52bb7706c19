"""`qarina bench serve`: a warm `qarina serve` against the sequential runner, and how soon a
registered item starts its first stage.

The peer is the sequential runner on the same photos in the same round: no Ray, no service,
the stages one after another in one process. A warm service pays neither Ray's start nor an
actor's setup per batch, so what is left of its overhead is the driver, the store and the
transport; the issue's bar is 10% of wall time, where a cold `qarina run` paid about 20%.

Each round starts a real `qarina serve` (a subprocess on a fresh SQLite data folder, local Ray),
warms it with one photo, then:
1. registers single photos one at a time from this process, as another intake would, and
   measures registration to first stage result (the acquisition's time to the probe
   result's, both written by the store on this host);
2. registers the batch and measures from the start of its registration to its last job done.
The sequential runner then does the same batch on its own fresh folder (ingest, then run).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from evidence.store import Store
from pipelines.bench.photos import make_photos
from pipelines.bench.report import (
    finish,
    fresh_data,
    machine_info,
    median,
    percentile,
    scratch_folder,
)
from pipelines.config import QarinaConfig
from pipelines.ingest import ingest_paths
from pipelines.plan import Plan
from pipelines.runner import run_plan
from pipelines.samples import photos

#: Single registrations timed per round for the first-stage latency.
_SINGLES = 20
#: How long a round may wait for the service before it is declared stuck.
_PATIENCE_S = 1800.0


def _open_jobs(store: Store) -> int:
    with store.database.reader.connect() as connection:
        return int(
            connection.execute(
                sa.text("SELECT count(*) FROM jobs WHERE state IN ('queued', 'leased')")
            ).scalar_one()
        )


def _wait(condition: Any, what: str, service: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + _PATIENCE_S
    while not condition():
        if service.poll() is not None:
            raise RuntimeError(f"the service ended ({service.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the service did not finish {what} in {_PATIENCE_S:g} s")
        time.sleep(0.02)


def _first_stage_latency(
    store: Store,
    plan: Plan,
    config: QarinaConfig,
    scratch: Path,
    service: subprocess.Popen[bytes],
) -> float:
    folder = Path(tempfile.mkdtemp(prefix="single-", dir=scratch))
    photos.photo(folder / "single.jpg", size=(640, 480), seed=int(time.time_ns() % 100_000))
    [sha] = ingest_paths(store, plan, config, [folder], source="bench-single").sha256s
    query = sa.text(
        "SELECT r.created_at, a.acquired_at FROM results r JOIN acquisitions a"
        " ON a.sha256 = r.sha256 WHERE r.stage = 'probe' AND r.sha256 = :sha"
    )

    def probed() -> Any:
        with store.database.reader.connect() as connection:
            return connection.execute(query, {"sha": sha}).first()

    _wait(lambda: probed() is not None, "a single registration", service)
    result_at, acquired_at = probed()
    shutil.rmtree(folder)
    return float((_as_time(result_at) - _as_time(acquired_at)).total_seconds())


def _as_time(value: Any) -> Any:
    import datetime as dt

    return value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(str(value))


def _serve_round(config: QarinaConfig, scratch: Path, batch: Path, count: int) -> dict[str, Any]:
    run_config = fresh_data(config, scratch, "serve")
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    env["QARINA_MODELS_DIR"] = str(config.models_dir)
    service = subprocess.Popen(
        [str(Path(sys.executable).parent / "qarina"), "--data", str(run_config.data_dir), "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    store = Store.open(run_config.db_url, run_config.blob_root)
    plan = Plan.default(settings=run_config)
    try:
        started = time.perf_counter()
        warm = _first_stage_latency(store, plan, run_config, scratch, service)
        warm_s = time.perf_counter() - started
        _wait(lambda: _open_jobs(store) == 0, "the warm-up", service)
        singles = [
            _first_stage_latency(store, plan, run_config, scratch, service) for _ in range(_SINGLES)
        ]
        _wait(lambda: _open_jobs(store) == 0, "the single registrations", service)
        started = time.perf_counter()
        intake = ingest_paths(store, plan, run_config, [batch], source="bench-batch")
        ingest_s = time.perf_counter() - started
        _wait(lambda: _open_jobs(store) == 0, "the batch", service)
        wall_s = time.perf_counter() - started
    finally:
        service.send_signal(signal.SIGTERM)
        service.wait(timeout=300)
        store.close()
        shutil.rmtree(run_config.data_dir, ignore_errors=True)
    return {
        "service_exit": service.returncode,
        "cold_first_item_s": round(warm, 3),
        "cold_start_s": round(warm_s, 3),
        "first_stage_latency_s": {
            "samples": len(singles),
            "median": round(median(singles), 3),
            "p90": round(percentile(singles, 0.9), 3),
            "max": round(max(singles), 3),
        },
        "new_items": intake.new_items,
        "ingest_s": round(ingest_s, 3),
        "wall_s": round(wall_s, 3),
        "items_per_s": round(count / wall_s, 2),
    }


def _sequential_round(
    config: QarinaConfig, scratch: Path, batch: Path, count: int
) -> dict[str, Any]:
    run_config = fresh_data(config, scratch, "sequential")
    plan = Plan.default(settings=run_config)
    store = Store.open(run_config.db_url, run_config.blob_root)
    try:
        started = time.perf_counter()
        ingest_paths(store, plan, run_config, [batch], source="bench-batch")
        ingest_s = time.perf_counter() - started
        run_plan(store, plan, run_config)
        wall_s = time.perf_counter() - started
    finally:
        store.close()
        shutil.rmtree(run_config.data_dir, ignore_errors=True)
    return {
        "ingest_s": round(ingest_s, 3),
        "wall_s": round(wall_s, 3),
        "items_per_s": round(count / wall_s, 2),
    }


def bench_serve(
    config: QarinaConfig,
    output: Path,
    *,
    count: int = 500,
    runs: int = 3,
    size: tuple[int, int] = (4000, 3000),
) -> dict[str, Any]:
    """A batch of `count` photos through a warm service against the sequential runner, with
    the service's registration-to-first-result latency; the median of `runs` rounds.

    overhead = (serve.wall_s - sequential.wall_s) / serve.wall_s, both timed from the start
    of the batch's registration to its last job done (negative when the service's
    parallelism wins).
    """
    if count < 1 or runs < 1:
        raise ValueError("count and runs must be at least 1")
    with scratch_folder(config) as scratch:
        machine = machine_info(scratch)
        batch = scratch / "photos"
        generated = make_photos(batch, count, size)
        rounds = []
        for _ in range(runs):
            serve = _serve_round(config, scratch, batch, count)
            sequential = _sequential_round(config, scratch, batch, count)
            overhead = (serve["wall_s"] - sequential["wall_s"]) / serve["wall_s"]
            rounds.append(
                {"serve": serve, "sequential": sequential, "overhead": round(overhead, 4)}
            )
    latency = [run["serve"]["first_stage_latency_s"]["median"] for run in rounds]
    summary = {
        "serve_wall_s": round(median([run["serve"]["wall_s"] for run in rounds]), 3),
        "sequential_wall_s": round(median([run["sequential"]["wall_s"] for run in rounds]), 3),
        "overhead": round(median([run["overhead"] for run in rounds]), 4),
        "first_stage_latency_median_s": round(median(latency), 3),
        "cold_start_s": round(median([run["serve"]["cold_start_s"] for run in rounds]), 3),
    }
    result: dict[str, Any] = {
        "benchmark": "serve",
        "machine": machine,
        "params": {"count": count, "runs": runs, "store": "sqlite", "ray_address": "local"},
        "generated": generated,
        "median": summary,
        "targets": {"overhead_below": 0.10, "first_stage_latency_below_s": 2.0},
        "met": {
            "overhead": summary["overhead"] < 0.10,
            "first_stage_latency": summary["first_stage_latency_median_s"] < 2.0,
        },
        "formulas": {"overhead": "(serve.wall_s - sequential.wall_s) / serve.wall_s"},
        "runs": rounds,
    }
    headline = (
        f"serve: {count} photos in {summary['serve_wall_s']} s warm,"
        f" sequential {summary['sequential_wall_s']} s: overhead {summary['overhead']:+.1%};"
        f" registration to first result {summary['first_stage_latency_median_s']} s (median)"
    )
    return finish(result, output, headline)
