"""The driver loop: lease from the store, hand batches to an executor, commit what comes back.

The same loop drives the Ray runtime and the sequential runner; only the executor differs. The
driver keeps a bounded number of batches in flight, renews its leases while they run, and on
start returns the leases of drivers on this host that died (a `kill -9` leaves them behind).
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from evidence import archives, controls, jobs, records
from evidence.records import Outcome
from evidence.store import Store
from pipelines.config import QarinaConfig
from pipelines.execute import StageHost, Task
from pipelines.plan import Plan
from workers.base import FailureReason, Kind

log = logging.getLogger(__name__)

#: How long the loop waits for a finished batch before it looks at the queue again.
_COLLECT_TIMEOUT_S = 0.5
#: An idle driver returns expired leases (of drivers that died elsewhere) this often: a
#: lease outlives its driver by minutes, so a few seconds more cost nothing.
_RELEASE_EVERY_S = 5.0
#: Failures after which a job's next attempt runs in a batch of its own (`_batches`).
_RUN_ALONE = frozenset(
    {FailureReason.TOOL_TIMEOUT, FailureReason.TOOL_CRASH, FailureReason.RESOURCE_LIMIT}
)


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
    #: The run ended because leasing was paused (`qarina pause`), with work left.
    paused: bool = False
    #: Leases handed back unfinished when a stop's grace ran out.
    handed_back: int = 0
    #: Driver seconds spent in the store: leasing (with the upstream reads a batch needs) and
    #: committing. What is left of `wall_s` is waiting for stages and Ray: the split says
    #: whether a backlog of small items is bound by the store or by the stages.
    lease_s: float = 0.0
    commit_s: float = 0.0


@dataclass
class LoopControl:
    """How a driver loop is steered from outside it: a service runs it until `stop` (its
    SIGTERM), and wakes it at once when intake registers something (`wake`); `qarina run`
    uses the defaults and ends when the queue is empty.

    After `stop`, no new job is leased; jobs in flight get `grace_s` to finish and commit,
    then their leases are handed back to the queue (their late outcomes are refused by the
    fencing token), so stopping never loses or doubles work.
    """

    forever: bool = False
    stop: threading.Event = field(default_factory=threading.Event)
    wake: threading.Event = field(default_factory=threading.Event)
    #: A service idle this long looks at the queue again (new work from other hosts);
    #: intake in the same process wakes it at once.
    idle_poll_s: float = 0.25
    grace_s: float = 30.0


class _PauseSwitch:
    """The store's pause switch, read at most once a second: drivers ask every round."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._read_at = -math.inf
        self._paused = False

    @property
    def paused(self) -> bool:
        now = time.monotonic()
        if now - self._read_at >= 1.0:
            self._paused = controls.pause_state(self._store.database).paused
            self._read_at = now
        return self._paused


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
    control: LoopControl | None = None,
) -> RunSummary:
    """Process the queue of the plan's stages; returns what it committed.

    Without `control`, until no job is open (or leasing is paused and nothing is in flight);
    with one, as it says. `on_progress` hears of each commit (committed, still in flight);
    `between_batches` runs after each round of commits, on the driver (index upkeep).
    """
    driver = _Driver(store, plan, executor, config, control or LoopControl())
    return driver.run(on_progress, between_batches)


def run_plan(store: Store, plan: Plan, config: QarinaConfig) -> RunSummary:
    """Process every open job of `plan` in this process, without Ray: what evaluations and
    tests need, where one process is the point."""
    executor = SequentialExecutor(plan, config)
    try:
        return run_queue(store, plan, executor, config)
    finally:
        executor.close()


class _Driver:
    """One driver loop's state: its owner id, the keys it leases, what it has in flight."""

    def __init__(
        self,
        store: Store,
        plan: Plan,
        executor: Executor,
        config: QarinaConfig,
        control: LoopControl,
    ) -> None:
        self.store, self.plan, self.executor = store, plan, executor
        self.config, self.control = config, control
        self.owner = owner_id()
        self.actor = f"qarina-run@{self.owner}"
        self.keys = {name: plan.keys(name) for name in plan.stages}
        self.every_key = [key for stage_keys in self.keys.values() for key in stage_keys]
        self.in_flight: dict[int, records.LeasedJob] = {}
        self.summary = RunSummary()
        self.switch = _PauseSwitch(store)
        self.stopping_since: float | None = None
        self.last_upkeep = self.last_release = time.monotonic()

    def run(
        self,
        on_progress: Callable[[int, int], None] | None,
        between_batches: Callable[[], None] | None,
    ) -> RunSummary:
        started = time.perf_counter()
        release_dead_local_owners(self.store)
        jobs.release_expired(self.store.database)
        while True:
            if self.control.stop.is_set() and self.stopping_since is None:
                self.stopping_since = time.monotonic()
            if self.stopping_since is None and not self.switch.paused:
                self._lease()
            if not self.in_flight:
                if self._finished_when_idle():
                    break
                self._wait()
                continue
            if self._grace_over():
                break
            self._commit(on_progress)
            if between_batches is not None:
                between_batches()
            self._upkeep()
        self.summary.wall_s = time.perf_counter() - started
        return self.summary

    def _lease(self) -> None:
        """Lease what the executor has room for, every stage in one transaction, and submit
        it in the stages' batches. Each lease is a write transaction (on SQLite an fsync), so
        leasing batch by batch and stage by stage cost one per batch; an idle service's poll
        is one read-only look whether anything is queued, not one per stage."""
        room = [
            (name, self.executor.free_slots(name) * stage.batch_size)
            for name, stage in self.plan.stages.items()
        ]
        wanted = [(name, count) for name, count in room if count > 0]
        if not wanted:
            return
        started = time.perf_counter()
        leased = jobs.lease_each(
            self.store.database,
            self.owner,
            [(self.keys[name], count) for name, count in wanted],
            self.config.lease_ttl,
        )
        every = [job for stage_jobs in leased for job in stage_jobs]
        tasks = {task.job.id: task for task in _tasks(self.store, self.plan, every)}
        self.summary.lease_s += time.perf_counter() - started
        self.in_flight.update((job.id, job) for job in every)
        for (name, _), stage_jobs in zip(wanted, leased, strict=True):
            for batch in _batches(stage_jobs, self.plan.stages[name].batch_size):
                self.executor.submit(name, [tasks[job.id] for job in batch])

    def _finished_when_idle(self) -> bool:
        """With nothing in flight: whether the loop is done (stopping, or, for a run, no
        work left that it may lease)."""
        if self.stopping_since is not None:
            return True
        if self.control.forever:
            return False
        left = jobs.open_jobs(self.store.database, self.every_key)
        if self.switch.paused:
            self.summary.paused = left > 0
            return True
        return left == 0

    def _wait(self) -> None:
        """Others hold the rest, or nothing is queued yet: wait for them, for their leases
        to expire (looked for every few seconds, since on SQLite each look takes the write
        lock), or for intake to wake us."""
        self.control.wake.wait(self.control.idle_poll_s if self.control.forever else 1.0)
        self.control.wake.clear()
        if time.monotonic() - self.last_release >= _RELEASE_EVERY_S:
            jobs.release_expired(self.store.database)
            self.last_release = time.monotonic()

    def _grace_over(self) -> bool:
        """After a stop: once jobs in flight had their grace, hand their leases back."""
        if self.stopping_since is None:
            return False
        if time.monotonic() - self.stopping_since <= self.control.grace_s:
            return False
        self.summary.handed_back = jobs.release_owners(self.store.database, [self.owner])
        log.warning("stopping: handed %d unfinished jobs back", self.summary.handed_back)
        return True

    def _commit(self, on_progress: Callable[[int, int], None] | None) -> None:
        """Commit every batch that finished since the last look in one transaction: the
        fixed cost of a commit (the transaction, SQLite's fsync) is paid once for all of them,
        and the longer a commit takes, the more batches the next one gathers."""
        finished = self.executor.collect(_COLLECT_TIMEOUT_S)
        pairs = [
            (task.job, outcome)
            for tasks, outcomes in finished
            for task, outcome in zip(tasks, outcomes, strict=True)
        ]
        if not pairs:
            return
        started = time.perf_counter()
        report = jobs.commit(self.store.database, pairs, self.actor)
        self.summary.commit_s += time.perf_counter() - started
        self.summary.committed += report.committed
        self.summary.stale += report.stale
        self.summary.failed += sum(isinstance(outcome, records.Failure) for _, outcome in pairs)
        for job, _ in pairs:
            self.in_flight.pop(job.id, None)
        if on_progress is not None:
            on_progress(report.committed, len(self.in_flight))

    def _upkeep(self) -> None:
        """Every third of a lease while busy: renew ours, and return expired ones of drivers
        or nodes that died elsewhere."""
        if time.monotonic() - self.last_upkeep <= self.config.lease_ttl.total_seconds() / 3:
            return
        jobs.renew(self.store.database, self.owner, list(self.in_flight), self.config.lease_ttl)
        jobs.release_expired(self.store.database)
        self.last_upkeep = time.monotonic()


def _batches(leased: list[records.LeasedJob], size: int) -> list[list[records.LeasedJob]]:
    """The stage's batches of `size`, except that a job whose last attempt timed out, crashed
    or ran out of memory runs alone: a tool that hung on it once is likely to hang again, and
    its batch-mates would wait out the whole timeout with it on every retry; and of a batch
    whose worker was lost only a job that ran alone can be held to account (`ray_runtime`)."""
    alone = [[job] for job in leased if job.last_error in _RUN_ALONE]
    rest = [job for job in leased if job.last_error not in _RUN_ALONE]
    return [rest[first : first + size] for first in range(0, len(rest), size)] + alone


def _tasks(store: Store, plan: Plan, leased: list[records.LeasedJob]) -> list[Task]:
    """Each job with the upstream results its plan names for the item's kind: exactly those
    keys, so an item holding results of two versions of a stage gives the one planned."""
    # One spec per stage and kind: working one out hashes the stage's options each time.
    requires: dict[tuple[str, str | None], tuple[records.ResultKey, ...]] = {}
    for job in leased:
        if (job.stage, job.kind) not in requires:
            requires[job.stage, job.kind] = plan.spec_for(job).requires
    needs = {job.id: requires[job.stage, job.kind] for job in leased}
    # Only archives are expanded, and how deep one lies caps how deep expansion goes.
    depths = archives.depths(
        store.database, [job.sha256 for job in leased if job.kind == Kind.ARCHIVE.value]
    )
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
                depth=depths.get(job.sha256, 0),
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
