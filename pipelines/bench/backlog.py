"""`qarina bench backlog`: enqueue, lease, commit and status timings with a large backlog."""

from __future__ import annotations

import datetime as dt
import hashlib
import multiprocessing
import os
import platform
import sqlite3
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from evidence import jobs as jobq
from evidence import records
from evidence.blobs import StoredBlob
from evidence.db import utc_now
from evidence.schema import items as items_table
from evidence.schema import jobs as jobs_table
from evidence.store import Acquisition, Store
from pipelines.bench.report import finish, latency_ms, machine_info, scratch_folder, timed
from pipelines.config import QarinaConfig
from pipelines.plan import Plan

#: Items registered one at a time through `Store.register` (what ingest does), the rest of the
#: backlog is inserted in bulk.
_REGISTER_SAMPLE = 2_000
_BULK_BATCH = 5_000
_LEASE_LIMIT = 16
_LEASE_CALLS = 200
_CYCLE_JOBS = 5_000
_STATUS_CALLS = 7
_STATUS_BUDGET_S = 1.0
#: Drivers leasing and committing at once in the concurrency measurement (PostgreSQL only:
#: SQLite is one machine's store and takes one writer at a time by design).
_CONCURRENT_WORKERS = 8


def _fake_sha(prefix: str, index: int) -> str:
    return hashlib.sha256(f"qarina-bench-{prefix}-{index}".encode()).hexdigest()


def _bulk_enqueue(
    store: Store, spec: records.JobSpec, count: int, max_attempts: int, prefix: str = "bulk"
) -> float:
    """Insert `count` items with a queued first job each, in batches; returns the seconds taken.

    This is how a migration of an existing backlog would load the queue, not what ingest does
    (that is `Store.register`, measured separately). One in twenty jobs is urgent, so leasing
    meets a priority mix.
    """
    started = time.perf_counter()
    for first in range(0, count, _BULK_BATCH):
        now = utc_now()
        indexes = range(first, min(first + _BULK_BATCH, count))
        shas = [_fake_sha(prefix, index) for index in indexes]
        with store.database.writer.begin() as connection:
            connection.execute(
                sa.insert(items_table),
                [{"sha256": sha, "size_bytes": 4_000_000, "created_at": now} for sha in shas],
            )
            connection.execute(
                sa.insert(jobs_table),
                [
                    {
                        "sha256": sha,
                        "stage": spec.stage,
                        "stage_version": spec.stage_version,
                        "config_hash": spec.config_hash,
                        "state": jobq.QUEUED,
                        "priority": 5 if index % 20 == 0 else 0,
                        "max_attempts": max_attempts,
                        "created_at": now,
                        "updated_at": now,
                    }
                    for index, sha in zip(indexes, shas, strict=True)
                ],
            )
    return time.perf_counter() - started


def _register_sample(
    store: Store, spec: records.JobSpec, count: int, config: QarinaConfig
) -> list[float]:
    """`Store.register` one item at a time, as ingest does (the blob copy is not included)."""
    latencies = []
    for index in range(count):
        blob = StoredBlob(_fake_sha("register", index), 4_000_000, created=True)
        acquisition = Acquisition(
            source="bench-backlog",
            original_name=f"IMG_{index:06d}.jpg".encode(),
            original_path=f"/intake/bench/IMG_{index:06d}.jpg".encode(),
            operator=config.operator,
        )
        started = time.perf_counter()
        store.register(blob, acquisition, [spec], "qarina-bench", config.max_attempts)
        latencies.append(time.perf_counter() - started)
    return latencies


def _lease_latencies(store: Store, spec: records.JobSpec, ttl: dt.timedelta) -> list[float]:
    """Time `lease(limit=16)` calls on the full queue, then hand every lease back."""
    owner = f"bench-lease-{uuid.uuid4().hex[:8]}"
    latencies = []
    for _ in range(_LEASE_CALLS):
        started = time.perf_counter()
        leased = jobq.lease(store.database, owner, [spec.key], _LEASE_LIMIT, ttl)
        latencies.append(time.perf_counter() - started)
        if not leased:
            break
    jobq.release_owners(store.database, [owner])
    return latencies


def _probe_like_success(
    job: records.LeasedJob, follow_ups: Sequence[records.JobSpec]
) -> records.Success:
    """An outcome shaped like a real probe result: a photo, with its metadata job to queue."""
    now = dt.datetime.now(dt.UTC).isoformat()
    return records.Success(
        data={
            "kind": "photo",
            "mime": "image/jpeg",
            "format": "jpeg",
            "size_bytes": 4_000_000,
            "width": 4000,
            "height": 3000,
            "duration_s": None,
            "has_video": False,
            "has_audio": False,
            "rotation": None,
            "flags": [],
            "ffprobe": None,
        },
        provenance={
            "stage": job.stage,
            "stage_version": job.stage_version,
            "config_hash": job.config_hash,
            "params": {"max_image_pixels": 200_000_000},
            "tools": {"ffprobe": "bench", "pillow": "bench"},
            "host": platform.node(),
            "worker_pid": os.getpid(),
            "started_at": now,
            "finished_at": now,
            "duration_s": 0.0,
        },
        item_kind="photo",
        follow_ups=follow_ups,
    )


def _lease_commit_cycle(
    store: Store,
    spec: records.JobSpec,
    follow_ups: Sequence[records.JobSpec],
    config: QarinaConfig,
    wanted: int = _CYCLE_JOBS,
) -> dict[str, Any]:
    """Lease 16, commit 16 probe-like successes, repeat: the driver loop without the stages."""
    owner = f"bench-cycle-{uuid.uuid4().hex[:8]}"
    lease_times: list[float] = []
    commit_times: list[float] = []
    committed = 0
    while committed < wanted:
        started = time.perf_counter()
        leased = jobq.lease(store.database, owner, [spec.key], _LEASE_LIMIT, config.lease_ttl)
        lease_times.append(time.perf_counter() - started)
        if not leased:
            break
        outcomes: list[tuple[records.LeasedJob, records.Outcome]] = [
            (job, _probe_like_success(job, follow_ups)) for job in leased
        ]
        started = time.perf_counter()
        report = jobq.commit(store.database, outcomes, f"qarina-bench@{owner}")
        commit_times.append(time.perf_counter() - started)
        committed += report.committed
    total = sum(lease_times) + sum(commit_times)
    return {
        "jobs_committed": committed,
        "batch_size": _LEASE_LIMIT,
        "seconds": round(total, 3),
        "jobs_per_s": round(committed / total, 1) if total else None,
        "lease_share": round(sum(lease_times) / total, 3) if total else None,
        "lease_latency": latency_ms(lease_times),
        "commit_latency_per_batch": latency_ms(commit_times) if commit_times else None,
        "follow_ups_per_job": len(follow_ups),
    }


_start_together: Any = None  # a Barrier, set in each pool process by _join_start


def _join_start(barrier: Any) -> None:
    global _start_together  # noqa: PLW0603 - per-process pool state, set once at start
    _start_together = barrier


def _cycle_worker(
    url: str, blob_root: Path, wanted: int, config: QarinaConfig
) -> tuple[int, float, float]:
    """One of several concurrent drivers: its own connection pool, owner id and leases. All
    start together once every process has imported and connected; returns jobs committed and
    the wall-clock start and end."""
    plan = Plan.default()
    store = Store.open(url, blob_root)
    try:
        _start_together.wait(timeout=300)
        started = time.time()
        cycle = _lease_commit_cycle(
            store, plan.spec("probe"), plan.follow_ups("probe", "photo"), config, wanted
        )
        return int(cycle["jobs_committed"]), started, time.time()
    finally:
        store.close()


def _concurrent_cycles(
    store: Store, url: str, blob_root: Path, count: int, config: QarinaConfig
) -> dict[str, Any]:
    """`_CONCURRENT_WORKERS` processes leasing and committing from one queue at once: what
    the store sustains when many nodes' drivers share it. Each must commit its share; a job
    leased twice would show as a stale commit and fewer committed jobs. The jobs are fresh
    ones, enqueued for this measurement."""
    share = max(1, min(_CYCLE_JOBS, count) // _CONCURRENT_WORKERS)
    probe = Plan.default().spec("probe")
    _bulk_enqueue(store, probe, share * _CONCURRENT_WORKERS, config.max_attempts, "concurrent")
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(_CONCURRENT_WORKERS)
    with context.Pool(_CONCURRENT_WORKERS, _join_start, (barrier,)) as pool:
        runs = pool.starmap(
            _cycle_worker, [(url, blob_root, share, config)] * _CONCURRENT_WORKERS
        )
    committed = sum(run[0] for run in runs)
    elapsed = max(run[2] for run in runs) - min(run[1] for run in runs)
    return {
        "workers": _CONCURRENT_WORKERS,
        "jobs_committed": committed,
        "jobs_wanted": share * _CONCURRENT_WORKERS,
        "seconds": round(elapsed, 3),
        "jobs_per_s": round(committed / elapsed, 1),
    }


def _backlog_on(url: str, blob_root: Path, count: int, config: QarinaConfig) -> dict[str, Any]:
    """Every backlog measurement on one fresh database at `url`."""
    plan = Plan.default()
    probe = plan.spec("probe")
    follow_ups = plan.follow_ups("probe", "photo")
    sample = min(_REGISTER_SAMPLE, max(1, count // 10))
    bulk = count - sample
    store = Store.open(url, blob_root)
    try:
        enqueue_s = _bulk_enqueue(store, probe, bulk, config.max_attempts)
        register = _register_sample(store, probe, sample, config)
        queued = jobq.open_jobs(store.database, [probe.key])
        lease = _lease_latencies(store, probe, config.lease_ttl)
        cycle = _lease_commit_cycle(store, probe, follow_ups, config)
        concurrent = (
            None
            if store.database.is_sqlite
            else _concurrent_cycles(store, url, blob_root, count, config)
        )
        # As `qarina status` and the metrics endpoint ask: under the plan's current keys, with
        # the count of items holding only superseded results.
        current = plan.current_keys()
        status_times = [timed(lambda: store.status(current=current)) for _ in range(_STATUS_CALLS)]
        final = store.status(current=current)
        backend = store.database.writer.dialect.name
        with store.database.reader.connect() as connection:
            server = (
                sqlite3.sqlite_version
                if store.database.is_sqlite
                else str(connection.execute(sa.text("SELECT version()")).scalar_one())
            )
    finally:
        store.close()
    status = latency_ms(status_times)
    return {
        "backend": backend,
        "server_version": server,
        "enqueue_bulk": {
            "jobs": bulk,
            "batch": _BULK_BATCH,
            "seconds": round(enqueue_s, 3),
            "jobs_per_s": round(bulk / enqueue_s, 1) if bulk else None,
        },
        "register_per_item": {
            "items": sample,
            "seconds": round(sum(register), 3),
            "items_per_s": round(sample / sum(register), 1),
            "latency": latency_ms(register),
        },
        "queued_before_lease": queued,
        "lease_limit_16": latency_ms(lease),
        "lease_commit_cycle": cycle,
        "lease_commit_concurrent": concurrent,
        "status": {
            **status,
            "under_1s": status["median_ms"] < _STATUS_BUDGET_S * 1000,
            "jobs_in_table": sum(sum(stage.counts.values()) for stage in final.stages),
            "open_jobs": final.open_jobs,
        },
    }


@contextmanager
def scratch_postgres_database(admin_url: str) -> Iterator[str]:
    """A database of our own on the server at `admin_url`, dropped afterwards whatever happens."""
    name = f"qarina_bench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
        try:
            yield sa.make_url(admin_url).set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as connection:
                connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def _concurrent_headline(concurrent: dict[str, Any] | None) -> str:
    if not concurrent:
        return ""
    return f" {concurrent['workers']} drivers at once {concurrent['jobs_per_s']} jobs/s,"


def bench_backlog(
    config: QarinaConfig, jobs: int, output: Path, *, pg_url: str | None = None
) -> dict[str, Any]:
    """Enqueue, lease, commit and status timings with a backlog of `jobs` queued jobs.

    Runs on a fresh SQLite store in the data folder and, when `pg_url` (or the environment
    variable QARINA_BENCH_PG_URL) names a PostgreSQL server, also on a database created there
    for the run and dropped after it. The peer in the same run is the other path into the same
    table: bulk inserts (what the table can take) against `Store.register` (what ingest pays
    per item), and lease+commit cycles against lease alone.
    """
    if jobs < 2:
        raise ValueError("jobs must be at least 2")
    admin_url = pg_url if pg_url is not None else config.bench_pg_url
    backends: dict[str, Any] = {}
    with scratch_folder(config) as scratch:
        machine = machine_info(scratch)
        sqlite_url = f"sqlite:///{scratch / 'backlog.sqlite3'}"
        backends["sqlite"] = _backlog_on(sqlite_url, scratch / "blobs", jobs, config)
        if admin_url:
            with scratch_postgres_database(admin_url) as url:
                backends["postgresql"] = _backlog_on(url, scratch / "blobs", jobs, config)
    result: dict[str, Any] = {
        "benchmark": "backlog",
        "machine": machine,
        "params": {
            "jobs": jobs,
            "register_sample": min(_REGISTER_SAMPLE, max(1, jobs // 10)),
            "lease_limit": _LEASE_LIMIT,
            "lease_calls": _LEASE_CALLS,
            "cycle_jobs": _CYCLE_JOBS,
            "status_calls": _STATUS_CALLS,
        },
        "backends": backends,
    }
    headline = "; ".join(
        f"{name}: enqueue {figures['enqueue_bulk']['jobs_per_s']} jobs/s,"
        f" register {figures['register_per_item']['items_per_s']} items/s,"
        f" lease p50 {figures['lease_limit_16']['median_ms']} ms"
        f" p95 {figures['lease_limit_16']['p95_ms']} ms,"
        f" lease+commit {figures['lease_commit_cycle']['jobs_per_s']} jobs/s,"
        f"{_concurrent_headline(figures['lease_commit_concurrent'])}"
        f" status {figures['status']['median_ms']} ms"
        for name, figures in backends.items()
    )
    return finish(result, output, headline)
