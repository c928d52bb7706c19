"""`qarina bench intake`: a drop folder taking many small files dropped at once.

Each round drops `files` small JPEGs (distinct bytes, from `pipelines.bench.photos`, made
with `pipelines.samples`) into a watched folder as an intake system would: another process
writes each file and then its `NAME.done` marker, as fast as it can. A `Watcher` polls the
folder in a thread of this process, as `qarina serve` and `qarina watch` run it. Measured:
- exactly once: one acquisition per dropped file, one intake key each, every file and marker
  in `.ingested/` and nothing left behind;
- the rate, from the first file completed to the last registration;
- per file, the time from its completion (its marker written) to its registration (the
  acquisition's time in the store, both on this host's clock): median and 99th percentile.
  With a burst, this is mostly queueing: the last file waits for all before it.

The peer, in the same round: `qarina ingest` of the same files as one folder (`ingest_paths`)
into a fresh store, the rate an operator gets without a drop folder. The ratio says what
watching costs on top: listing, settling, the intake-key check and the moves.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from evidence.db import as_utc
from evidence.schema import acquisitions
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
from pipelines.watch import INGESTED, MARKER, REFUSED, DropFolder, Watcher

#: Small photos: the per-file costs (fsyncs, a transaction, two renames) dominate, not bytes.
_SIZE = (160, 120)
#: Seconds between passes over the folder: `qarina serve`'s default.
_EVERY_S = 0.5
#: Longer than any round: only marked files are taken, as the intake protocol says.
_SETTLE_S = 3600.0
#: How long a round may wait for the watcher before it is declared stuck.
_PATIENCE_S = 3600.0


def _drop(source: str, drop: str, times: str) -> None:
    """The intake system, in a process of its own: each file, then its marker; the wall
    time of each completion goes to `times` (JSON, name as hex)."""
    completed: dict[str, float] = {}
    for name in sorted(os.listdir(os.fsencode(source))):
        with open(os.path.join(os.fsencode(source), name), "rb") as original:
            data = original.read()
        with open(os.path.join(os.fsencode(drop), name), "wb") as dropped:
            dropped.write(data)
        with open(os.path.join(os.fsencode(drop), name + MARKER), "wb"):
            pass
        completed[name.hex()] = time.time()
    Path(times).write_text(json.dumps(completed))


def _arrivals(store: Store) -> list[Any]:
    with store.database.reader.connect() as connection:
        return list(
            connection.execute(
                sa.select(
                    acquisitions.c.original_name,
                    acquisitions.c.acquired_at,
                    acquisitions.c.intake_key,
                )
            )
        )


def _count(store: Store) -> int:
    with store.database.reader.connect() as connection:
        return int(
            connection.execute(sa.select(sa.func.count()).select_from(acquisitions)).scalar_one()
        )


def _watch_round(config: QarinaConfig, scratch: Path, source: Path, files: int) -> dict[str, Any]:
    run_config = fresh_data(config, scratch, "watch")
    drop = Path(tempfile.mkdtemp(prefix="drop-", dir=scratch))
    times = scratch / "completed.json"
    store = Store.open(run_config.db_url, run_config.blob_root)
    watcher = Watcher(
        store, Plan.default(settings=run_config), run_config, DropFolder(drop, "bench-drop"),
        _SETTLE_S,
    )  # fmt: skip
    stop = threading.Event()
    thread = threading.Thread(target=watcher.run, args=(stop, _EVERY_S), name="bench-watch")
    # spawn: the dropper must not inherit this process's threads and open database.
    dropper = multiprocessing.get_context("spawn").Process(
        target=_drop, args=(str(source), str(drop), str(times))
    )
    try:
        thread.start()
        dropper.start()
        dropper.join()
        deadline = time.monotonic() + _PATIENCE_S
        while _count(store) < files:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("the watcher did not take every dropped file")
            time.sleep(0.05)
        # One more pass, so that anything taken twice would show.
        time.sleep(2 * _EVERY_S)
        stop.set()
        thread.join()
        arrivals = _arrivals(store)
    finally:
        stop.set()
        store.close()
    completed = json.loads(times.read_text())
    # From the first file dropped: the dropper's own start (an interpreter) is not intake.
    started = min(completed.values())
    latencies = [
        as_utc(row.acquired_at).timestamp() - completed[bytes(row.original_name).hex()]
        for row in arrivals
    ]
    ingested = sorted(os.listdir(os.fsencode(drop) + b"/" + INGESTED))
    left = [name for name in os.listdir(os.fsencode(drop)) if name not in (INGESTED, REFUSED)]
    left += os.listdir(os.fsencode(drop) + b"/" + REFUSED)
    dropped = sorted(bytes.fromhex(name) for name in completed)
    names = sorted(bytes(row.original_name) for row in arrivals)
    last = max(as_utc(row.acquired_at).timestamp() for row in arrivals)
    shutil.rmtree(drop)
    shutil.rmtree(run_config.data_dir)
    return {
        "dropped": len(dropped),
        "acquisitions": len(arrivals),
        "distinct_intake_keys": len({row.intake_key for row in arrivals}),
        "exactly_once": names == dropped and len({row.intake_key for row in arrivals}) == files,
        "all_moved": ingested == sorted(dropped + [name + MARKER for name in dropped]) and not left,
        "drop_s": round(max(completed.values()) - started, 3),
        "wall_s": round(last - started, 3),
        "files_per_s": round(files / (last - started), 1),
        "latency_s": {
            "median": round(median(latencies), 3),
            "p99": round(percentile(latencies, 0.99), 3),
            "max": round(max(latencies), 3),
        },
    }


def _ingest_round(config: QarinaConfig, scratch: Path, source: Path, files: int) -> dict[str, Any]:
    run_config = fresh_data(config, scratch, "ingest")
    store = Store.open(run_config.db_url, run_config.blob_root)
    try:
        started = time.perf_counter()
        summary = ingest_paths(
            store, Plan.default(settings=run_config), run_config, [source], source="bench-ingest"
        )
        wall_s = time.perf_counter() - started
    finally:
        store.close()
    shutil.rmtree(run_config.data_dir)
    return {
        "new_items": summary.new_items,
        "wall_s": round(wall_s, 3),
        "files_per_s": round(files / wall_s, 1),
    }


def bench_intake(
    config: QarinaConfig, output: Path, *, files: int = 10_000, runs: int = 3
) -> dict[str, Any]:
    """`files` small files dropped at once into a watched folder, against `qarina ingest` of
    the same files; the median of `runs` rounds (each round: the watcher, then the peer)."""
    if files < 1 or runs < 1:
        raise ValueError("files and runs must be at least 1")
    with scratch_folder(config) as scratch:
        machine = machine_info(scratch)
        source = scratch / "photos"
        generated = make_photos(source, files, _SIZE)
        rounds = []
        for _ in range(runs):
            watched = _watch_round(config, scratch, source, files)
            ingested = _ingest_round(config, scratch, source, files)
            rounds.append(
                {
                    "watch": watched,
                    "ingest": ingested,
                    "watch_to_ingest_rate": round(
                        watched["files_per_s"] / ingested["files_per_s"], 3
                    ),
                }
            )
    summary = {
        "watch_files_per_s": round(median([run["watch"]["files_per_s"] for run in rounds]), 1),
        "ingest_files_per_s": round(median([run["ingest"]["files_per_s"] for run in rounds]), 1),
        "watch_to_ingest_rate": round(median([run["watch_to_ingest_rate"] for run in rounds]), 3),
        "latency_median_s": round(
            median([run["watch"]["latency_s"]["median"] for run in rounds]), 3
        ),
        "latency_p99_s": round(median([run["watch"]["latency_s"]["p99"] for run in rounds]), 3),
    }
    result: dict[str, Any] = {
        "benchmark": "intake",
        "machine": machine,
        "params": {
            "files": files,
            "runs": runs,
            "poll_every_s": _EVERY_S,
            "completion": "NAME.done marker written after the file, by another process",
            "ingest_threads": config.ingest_threads,
        },
        "generated": generated,
        "peer": "qarina ingest of the same files as one folder (ingest_paths), fresh store",
        "median": summary,
        "exactly_once": all(run["watch"]["exactly_once"] for run in rounds),
        "all_moved": all(run["watch"]["all_moved"] for run in rounds),
        "runs": rounds,
    }
    headline = (
        f"drop folder: {files} files at {summary['watch_files_per_s']} files/s"
        f" (x{summary['watch_to_ingest_rate']} of qarina ingest at"
        f" {summary['ingest_files_per_s']} files/s); completion to registration median"
        f" {summary['latency_median_s']} s, p99 {summary['latency_p99_s']} s;"
        f" exactly once: {result['exactly_once']}"
    )
    return finish(result, output, headline)
