"""The driver loop: lease from the store, hand batches to an executor, commit what comes back.

The same loop drives the Ray runtime and the sequential runner; only the executor differs. The
driver keeps a bounded number of batches in flight, renews its leases while they run, and on
start returns the leases of drivers on this host that died (a `kill -9` leaves them behind).
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from evidence import jobs, records
from evidence.records import Outcome
from evidence.store import Store
from pipelines.config import QarinaConfig
from pipelines.execute import StageHost, Task
from pipelines.plan import Plan

log = logging.getLogger(__name__)

#: How long the loop waits for a finished batch before it looks at the queue again.
_COLLECT_TIMEOUT_S = 0.5


class Executor(Protocol):
    """Where batches run: in this process, or on a Ray cluster."""

    def free_slots(self, stage: str) -> int:
        """How many more batches of `stage` it accepts right now."""

    def submit(self, stage: str, tasks: list[Task]) -> None: ...

    def collect(self, timeout_s: float) -> list[tuple[list[Task], list[Outcome]]]:
        """Batches finished since the last call; waits up to `timeout_s` for the first one."""

    def close(self) -> None: ...


@dataclass
class RunSummary:
    committed: int = 0
    stale: int = 0
    failed: int = 0
    wall_s: float = 0.0


def owner_id() -> str:
    """host:pid:nonce. The pid lets a restarted driver on this host see that an owner died."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def release_dead_local_owners(store: Store) -> int:
    """Return the leases of drivers on this host whose process no longer exists."""
    host = socket.gethostname()
    dead = []
    for owner in jobs.lease_owners(store.database):
        owner_host, _, rest = owner.partition(":")
        pid_text = rest.partition(":")[0]
        if owner_host == host and pid_text.isdigit() and not _pid_alive(int(pid_text)):
            dead.append(owner)
    released = jobs.release_owners(store.database, dead)
    if released:
        log.warning("returned %d jobs leased by %d dead drivers to the queue", released, len(dead))
    return released


def run_queue(
    store: Store,
    plan: Plan,
    executor: Executor,
    config: QarinaConfig,
    on_progress: Callable[[int, int], None] | None = None,
    between_batches: Callable[[], None] | None = None,
) -> RunSummary:
    """Process the queue of the plan's stages until no job is open; returns what it committed.

    `between_batches` runs after each round of commits, on the driver (index upkeep).
    """
    started = time.perf_counter()
    owner = owner_id()
    actor = f"qarina-run@{owner}"
    release_dead_local_owners(store)
    jobs.release_expired(store.database)
    keys = {name: plan.keys(name) for name in plan.stages}
    every_key = [key for stage_keys in keys.values() for key in stage_keys]
    in_flight: dict[int, records.LeasedJob] = {}
    summary = RunSummary()
    renew_every = config.lease_ttl.total_seconds() / 3
    last_renewal = time.monotonic()
    while True:
        for name, stage in plan.stages.items():
            while executor.free_slots(name) > 0:
                leased = jobs.lease(
                    store.database, owner, keys[name], stage.batch_size, config.lease_ttl
                )
                if not leased:
                    break
                in_flight.update((job.id, job) for job in leased)
                executor.submit(name, _tasks(store, plan, leased))
        if not in_flight:
            if jobs.open_jobs(store.database, every_key) == 0:
                break
            # Others hold the rest; wait for them, or for their leases to expire.
            time.sleep(1.0)
            jobs.release_expired(store.database)
            continue
        for tasks, outcomes in executor.collect(_COLLECT_TIMEOUT_S):
            pairs = [(task.job, outcome) for task, outcome in zip(tasks, outcomes, strict=True)]
            report = jobs.commit(store.database, pairs, actor)
            summary.committed += report.committed
            summary.stale += report.stale
            summary.failed += sum(isinstance(outcome, records.Failure) for outcome in outcomes)
            for task in tasks:
                in_flight.pop(task.job.id, None)
            if on_progress is not None:
                on_progress(report.committed, len(in_flight))
        if between_batches is not None:
            between_batches()
        if time.monotonic() - last_renewal > renew_every:
            jobs.renew(store.database, owner, list(in_flight), config.lease_ttl)
            # Jobs of a driver or node that died elsewhere come back while we are busy too.
            jobs.release_expired(store.database)
            last_renewal = time.monotonic()
    summary.wall_s = time.perf_counter() - started
    return summary


def _tasks(store: Store, plan: Plan, leased: list[records.LeasedJob]) -> list[Task]:
    """Each job with the upstream results its plan names for the item's kind: exactly those
    keys, so an item holding results of two versions of a stage gives the one planned."""
    needs = {job.id: plan.spec_for(job).requires for job in leased}
    found = jobs.upstream_results(
        store.database, [(job.sha256, key) for job in leased for key in needs[job.id]]
    )
    tasks = []
    for job in leased:
        read = [found[(job.sha256, key)] for key in needs[job.id] if (job.sha256, key) in found]
        tasks.append(
            Task(
                job,
                str(store.blobs.path_for(job.sha256)),
                upstream={result.key.stage: result.data for result in read},
                artifacts={
                    sha256: str(store.blobs.path_for(sha256))
                    for result in read
                    for sha256 in result.artifacts
                },
                reads={
                    result.key.stage: {
                        "stage_version": result.key.stage_version,
                        "config_hash": result.key.config_hash,
                        "result_sha256": result.data_sha256,
                    }
                    for result in read
                },
            )
        )
    return tasks


class SequentialExecutor:
    """Runs each batch at once in this process: the same stages, no Ray, for tests and debugging."""

    def __init__(self, plan: Plan, config: QarinaConfig) -> None:
        self._plan = plan
        self._config = config
        self._hosts: dict[str, StageHost] = {}
        self._done: list[tuple[list[Task], list[Outcome]]] = []

    def free_slots(self, stage: str) -> int:
        return 0 if self._done else 1

    def submit(self, stage: str, tasks: list[Task]) -> None:
        host = self._hosts.get(stage)
        if host is None:
            host = StageHost(
                self._plan.stages[stage],
                self._config.blob_root,
                self._plan,
                "sequential",
                self._config.stage_environment(),
            )
            self._hosts[stage] = host
        self._done.append((tasks, host.run_batch(tasks)))

    def collect(self, timeout_s: float) -> list[tuple[list[Task], list[Outcome]]]:
        done, self._done = self._done, []
        return done

    def close(self) -> None:
        for host in self._hosts.values():
            host.close()
        self._hosts.clear()
