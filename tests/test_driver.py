"""The driver loop steered from outside: a stop hands back what did not finish within its
grace, and intake in the same process wakes an idle service at once; and what the loop asks
of the store: one lease for every free slot of a stage, one commit for every finished batch."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from evidence import jobs as jobq
from evidence.records import LeasedJob, Outcome, Success
from evidence.schema import jobs
from evidence.store import Store
from pipelines.config import QarinaConfig
from pipelines.execute import Task
from pipelines.ingest import ingest_paths
from pipelines.plan import Plan
from pipelines.runner import LoopControl, RunSummary, SequentialExecutor, run_queue
from pipelines.samples import photos


class _NeverFinishes:
    """An executor whose batches never come back, as a stage stuck on one item would be."""

    def __init__(self) -> None:
        self.submitted: list[Task] = []

    def free_slots(self, stage: str) -> int:
        return 0 if self.submitted else 1

    def submit(self, stage: str, tasks: list[Task]) -> None:
        self.submitted += tasks

    def collect(self, timeout_s: float) -> list[tuple[list[Task], list[Outcome]]]:
        time.sleep(min(timeout_s, 0.05))
        return []

    def close(self) -> None:
        self.submitted.clear()


class _AllAtOnce:
    """An executor with room for three batches that finishes all it holds at the next look."""

    def __init__(self) -> None:
        self.held: list[list[Task]] = []
        self.batches: list[list[str]] = []  # the SHA-256s of each batch submitted

    def free_slots(self, stage: str) -> int:
        return 3 - len(self.held)

    def submit(self, stage: str, tasks: list[Task]) -> None:
        self.held.append(tasks)
        self.batches.append([task.job.sha256 for task in tasks])

    def collect(self, timeout_s: float) -> list[tuple[list[Task], list[Outcome]]]:
        done, self.held = self.held, []
        return [(tasks, [Success({}, {}) for _ in tasks]) for tasks in done]

    def close(self) -> None:
        self.held.clear()


def _states(store: Store) -> list[str]:
    with store.database.reader.connect() as connection:
        return list(connection.execute(sa.select(jobs.c.state).order_by(jobs.c.id)).scalars())


def _in_thread(action: object) -> tuple[threading.Thread, list[RunSummary]]:
    done: list[RunSummary] = []
    thread = threading.Thread(target=lambda: done.append(action()), daemon=True)  # type: ignore[operator]
    thread.start()
    return thread, done


def test_a_stop_hands_back_leases_still_running_after_the_grace(
    store: Store, config: QarinaConfig, tmp_path: Path
) -> None:
    photos.photo(tmp_path / "p.jpg", size=(64, 48))
    plan = Plan.default(settings=config)
    ingest_paths(store, plan, config, [tmp_path / "p.jpg"], source="test")
    control = LoopControl(forever=True, grace_s=0.2)
    executor = _NeverFinishes()
    thread, done = _in_thread(lambda: run_queue(store, plan, executor, config, control=control))
    deadline = time.monotonic() + 10
    while _states(store) != ["leased"]:
        assert time.monotonic() < deadline, "the job was never leased"
        time.sleep(0.01)
    control.stop.set()
    thread.join(timeout=10)
    assert not thread.is_alive(), "the driver did not stop"
    assert done[0].handed_back == 1 and done[0].committed == 0
    assert _states(store) == ["queued"]  # back in the queue, for this or another driver


def test_intake_wakes_an_idle_service_at_once(
    store: Store, config: QarinaConfig, tmp_path: Path
) -> None:
    plan = Plan.default(["probe"], settings=config)
    # A poll so slow that only the wake-up can explain a quick start.
    control = LoopControl(forever=True, idle_poll_s=30.0)
    executor = SequentialExecutor(plan, config)
    thread, done = _in_thread(lambda: run_queue(store, plan, executor, config, control=control))
    try:
        time.sleep(0.3)  # the loop is idle, waiting
        photos.photo(tmp_path / "p.jpg", size=(64, 48))
        ingest_paths(store, plan, config, [tmp_path / "p.jpg"], source="test")
        started = time.monotonic()
        control.wake.set()
        while _states(store) != ["done"]:
            assert time.monotonic() - started < 5, "the woken driver did not take the job"
            time.sleep(0.01)
    finally:
        control.stop.set()
        control.wake.set()
        thread.join(timeout=10)
        executor.close()
    assert done[0].committed == 1


def test_one_lease_fills_every_free_slot_and_one_commit_takes_every_finished_batch(
    store: Store, config: QarinaConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for index in range(40):
        (tmp_path / f"item-{index}").write_bytes(f"item {index}".encode())
    plan = Plan.default(["probe"], settings=config)
    ingest_paths(store, plan, config, sorted(tmp_path.glob("item-*")), source="test")
    leases: list[list[tuple[int, int]]] = []
    commits: list[int] = []

    def lease_each(*args: Any) -> list[list[LeasedJob]]:
        leased = real_lease_each(*args)
        leases.append([(limit, len(got)) for (_, limit), got in zip(args[2], leased, strict=True)])
        return leased

    def commit(*args: Any) -> jobq.CommitReport:
        commits.append(len(args[1]))
        return real_commit(*args)

    real_lease_each, real_commit = jobq.lease_each, jobq.commit
    monkeypatch.setattr(jobq, "lease_each", lease_each)
    monkeypatch.setattr(jobq, "commit", commit)
    executor = _AllAtOnce()
    summary = run_queue(store, plan, executor, config)
    batch = plan.stages["probe"].batch_size
    assert leases[0] == [(3 * batch, 40)]  # three slots, one lease
    assert all(got == 0 for call in leases[1:] for _, got in call)
    assert [len(tasks) for tasks in executor.batches] == [batch, batch, 40 - 2 * batch]
    assert commits == [40] and summary.committed == 40
    assert _states(store) == ["done"] * 40


def test_a_job_whose_last_attempt_timed_out_runs_in_a_batch_of_its_own(
    store: Store, config: QarinaConfig, tmp_path: Path
) -> None:
    """A tool that hung on an item once may hang on it again: its batch-mates must not wait
    out the timeout with it on every retry."""
    for index in range(40):
        (tmp_path / f"item-{index}").write_bytes(f"item {index}".encode())
    plan = Plan.default(["probe"], settings=config)
    ingest_paths(store, plan, config, sorted(tmp_path.glob("item-*")), source="test")
    with store.database.writer.begin() as connection:
        hung = list(connection.execute(sa.select(jobs.c.sha256).limit(2)).scalars())
        connection.execute(
            sa.update(jobs)
            .where(jobs.c.sha256.in_(hung))
            .values(attempts=1, error_reason="tool_timeout")
        )
    executor = _AllAtOnce()
    run_queue(store, plan, executor, config)
    batch = plan.stages["probe"].batch_size
    assert sorted(map(len, executor.batches)) == [1, 1, 40 - 2 - 2 * batch, batch, batch]
    assert sorted(tasks for tasks in executor.batches if len(tasks) == 1) == sorted(
        [sha256] for sha256 in hung
    )
    assert _states(store) == ["done"] * 40
