"""Operators steering the backlog: requests and their priority, requeueing failures, pausing,
and the progress, ETA and deadline verdict of a request (store and CLI)."""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from evidence import controls, jobs, records, requests
from evidence.requeue import requeue_failed
from evidence.schema import custody_events
from evidence.schema import jobs as jobs_table
from evidence.store import Acquisition, Store
from pipelines.backlog import (
    MARGIN_SHARE,
    Deadline,
    Eta,
    backlog_progress,
    deadline_verdict,
    estimate_eta,
)
from pipelines.cli import app
from pipelines.config import QarinaConfig
from pipelines.execute import Task
from pipelines.ingest import ingest_paths
from pipelines.plan import Plan
from pipelines.runner import SequentialExecutor, run_queue
from pipelines.samples import hostile, photos
from pipelines.session import open_store
from tests.flows import run_plan
from workers.base import Kind

PROBE = records.JobSpec("probe", "1", "cfg")
TTL = dt.timedelta(minutes=5)
NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
DRIVER = "test-driver"


def _arrive(
    store: Store,
    tmp_path: Path,
    name: str,
    specs: Sequence[records.JobSpec] = (PROBE,),
    request: str | None = None,
    priority: int = 0,
) -> str:
    """Register a small file as one arrival; its SHA-256."""
    path = tmp_path / name
    path.write_bytes(f"content of {name}".encode())
    blob = store.blobs.put(path)
    acquisition = Acquisition(
        source="test",
        original_name=os.fsencode(name),
        original_path=os.fsencode(path),
        operator="tester",
        priority=priority,
        request_ref=request,
    )
    store.register(blob, acquisition, specs, actor="test", max_attempts=3)
    return blob.sha256


def _priorities(store: Store) -> dict[str, int]:
    with store.database.reader.connect() as connection:
        return dict(
            connection.execute(
                sa.select(jobs_table.c.sha256, jobs_table.c.priority).where(
                    jobs_table.c.state == jobs.QUEUED
                )
            ).all()
        )


def _custody(store: Store, action: str) -> list[tuple[str, dict[str, object]]]:
    with store.database.reader.connect() as connection:
        rows = connection.execute(
            sa.select(custody_events.c.actor, custody_events.c.details)
            .where(custody_events.c.action == action)
            .order_by(custody_events.c.seq)
        ).all()
    return [(actor, json.loads(details)) for actor, details in rows]


def _states(store: Store) -> dict[tuple[str, str], str]:
    with store.database.reader.connect() as connection:
        rows = connection.execute(
            sa.select(jobs_table.c.sha256, jobs_table.c.stage, jobs_table.c.state)
        ).all()
    return {(sha, stage): state for sha, stage, state in rows}


# --- requests and priority ----------------------------------------------------------------


def test_request_priority_moves_queued_jobs_at_once(store: Store, tmp_path: Path) -> None:
    requests.create(store.database, "RFA-1", "qarina-request@anna", priority=0)
    first = _arrive(store, tmp_path, "a", request="RFA-1")
    shared = _arrive(store, tmp_path, "b", request="RFA-1")
    _arrive(store, tmp_path, "b", request="RFA-2")  # the same content from another source
    outsider = _arrive(store, tmp_path, "c", priority=7)
    leased = jobs.lease(store.database, DRIVER, [PROBE.key], 1, TTL)
    assert [job.sha256 for job in leased] == [outsider]

    requests.create(store.database, "RFA-1", "qarina-request@anna", priority=10, deadline=NOW)
    assert _priorities(store) == {first: 10, shared: 10}
    requests.create(store.database, "RFA-2", "qarina-request@anna", priority=20)
    assert _priorities(store) == {first: 10, shared: 20}
    assert requests.set_priority(store.database, "RFA-1", 30, "qarina-request@ben") == 2
    assert _priorities(store) == {first: 30, shared: 30}
    # Lowered: the item also in RFA-2 keeps that request's higher priority.
    assert requests.set_priority(store.database, "RFA-1", 5, "qarina-request@ben") == 2
    assert _priorities(store) == {first: 5, shared: 20}
    with pytest.raises(requests.UnknownRequest):
        requests.set_priority(store.database, "RFA-404", 1, "qarina-request@ben")

    found = requests.get(store.database, "RFA-1")
    assert found is not None and found.priority == 5 and found.deadline == NOW
    assert [request.ref for request in requests.all_requests(store.database)] == [
        "RFA-1",
        "RFA-2",
    ]
    changes = _custody(store, "request_priority")
    assert [(actor, details["previous"], details["priority"]) for actor, details in changes] == [
        ("qarina-request@ben", 10, 30),
        ("qarina-request@ben", 30, 5),
    ]


def test_intake_for_a_request_takes_its_priority(store: Store, tmp_path: Path) -> None:
    requests.create(store.database, "RFA-7", "qarina-request@anna", priority=15)
    urgent = _arrive(store, tmp_path, "a", request="RFA-7")
    named_first = _arrive(store, tmp_path, "b", request="RFA-8", priority=4)
    assert _priorities(store) == {urgent: 15, named_first: 4}
    created = requests.get(store.database, "RFA-8")
    assert created is not None and created.priority == 4 and created.created_by == "test"
    [(actor, details)] = [entry for entry in _custody(store, "request") if entry[1].get("implicit")]
    assert actor == "test" and details["ref"] == "RFA-8"


# --- requeue --------------------------------------------------------------------------------


def test_requeue_failed_and_dead_jobs(store: Store, tmp_path: Path) -> None:
    corrupt = _arrive(store, tmp_path, "corrupt", request="RFA-1")
    slow = _arrive(store, tmp_path, "slow", request="RFA-1")
    other = _arrive(store, tmp_path, "other")
    fine = _arrive(store, tmp_path, "fine")
    store_leases = jobs.lease(store.database, DRIVER, [PROBE.key], 10, TTL)
    outcomes: list[tuple[records.LeasedJob, records.Outcome]] = []
    for job in store_leases:
        if job.sha256 == fine:
            outcomes.append((job, records.Success({"kind": "photo"}, {"node": "test"})))
        elif job.sha256 == slow:
            failure = records.Failure("tool_timeout", "ffprobe took too long", retryable=True)
            outcomes.append((job, failure))
        else:
            outcomes.append((job, records.Failure("corrupt_media", "no frames", retryable=False)))
    jobs.commit(store.database, outcomes, DRIVER)
    # The timeout is retried until the job dies.
    for _ in range(2):
        [again] = jobs.lease(store.database, DRIVER, [PROBE.key], 10, TTL)
        failure = records.Failure("tool_timeout", "ffprobe took too long", retryable=True)
        jobs.commit(store.database, [(again, failure)], DRIVER)
    states = _states(store)
    assert states[(corrupt, "probe")] == states[(other, "probe")] == jobs.FAILED
    assert states[(slow, "probe")] == jobs.DEAD

    # Raised after the failures: requeued jobs must not keep the priority they failed with.
    requests.create(store.database, "RFA-1", "qarina-request@anna", priority=40)
    elsewhere = records.JobSpec("probe", "2", "cfg")
    assert requeue_failed(store.database, [elsewhere.key], "qarina-requeue@ben", "x") == 0
    assert (
        requeue_failed(
            store.database, [PROBE.key], "qarina-requeue@ben", "ffprobe fixed", request_ref="RFA-1"
        )
        == 2
    )
    states = _states(store)
    assert states[(corrupt, "probe")] == states[(slow, "probe")] == jobs.QUEUED
    assert states[(other, "probe")] == jobs.FAILED and states[(fine, "probe")] == jobs.DONE
    assert _priorities(store) == {corrupt: 40, slow: 40}
    events = {
        details["ended"]["state"]: (actor, details) for actor, details in _custody(store, "requeue")
    }
    assert set(events) == {jobs.FAILED, jobs.DEAD}
    actor, dead = events[jobs.DEAD]
    assert actor == "qarina-requeue@ben" and dead["reason"] == "ffprobe fixed"
    assert dead["ended"] == {
        "state": "dead",
        "attempts": 3,
        "reason": "tool_timeout",
        "detail": "ffprobe took too long",
    }
    with store.database.reader.connect() as connection:
        attempts = connection.execute(
            sa.select(jobs_table.c.attempts).where(jobs_table.c.sha256 == slow)
        ).scalar_one()
    assert attempts == 0
    assert (
        requeue_failed(store.database, [PROBE.key], "qarina-requeue@ben", "all", stage="probe") == 1
    )


def test_requeue_broken_media_under_the_current_keys(
    store: Store, config: QarinaConfig, tmp_path: Path
) -> None:
    folder = tmp_path / "drive"
    folder.mkdir()
    hostile.corrupt_video(folder / "clip.mp4")
    photos.photo(folder / "fine.jpg", size=(96, 72), seed=3)
    plan = Plan.default(settings=config)
    summary = ingest_paths(store, plan, config, [folder], source="drive", request_ref="RFA-9")
    run_plan(store, plan, config)
    current = plan.current_keys()
    failures = store.status(current=current).failures_by_stage
    assert failures == {("probe", "corrupt_media"): 1}
    keys = [key for name in plan.stages for key in current[name]]
    assert requeue_failed(store.database, keys, "qarina-requeue@ben", "x", stage="hashes") == 0
    assert requeue_failed(store.database, keys, "qarina-requeue@ben", "new ffmpeg") == 1
    assert store.status(current=current).open_jobs == 1
    [(actor, details)] = _custody(store, "requeue")
    assert actor == "qarina-requeue@ben" and details["reason"] == "new ffmpeg"
    assert details["ended"]["reason"] == "corrupt_media"
    assert len(summary.sha256s) == 2


# --- pause ------------------------------------------------------------------------------------


class _PausingExecutor(SequentialExecutor):
    """Pauses the store while its first batch runs, as an operator would in the middle of a
    run; that batch still finishes."""

    def __init__(self, plan: Plan, config: QarinaConfig, store: Store) -> None:
        super().__init__(plan, config)
        self.store = store
        self.batches: list[list[str]] = []

    def submit(self, stage: str, tasks: list[Task]) -> None:
        if not self.batches:
            controls.set_paused(self.store.database, True, "qarina-pause@anna", "maintenance")
            time.sleep(1.1)  # drivers read the switch at most once a second
        self.batches.append([task.job.sha256 for task in tasks])
        super().submit(stage, tasks)


def test_pause_stops_new_leases_and_resume_finishes(
    store: Store, config: QarinaConfig, tmp_path: Path
) -> None:
    folder = tmp_path / "drive"
    folder.mkdir()
    for index in range(3):
        photos.photo(folder / f"p{index}.jpg", size=(96, 72), seed=index)
    plan = Plan.default(settings=config)
    ingest_paths(store, plan, config, [folder], source="drive")
    current = plan.current_keys()
    executor = _PausingExecutor(plan, config, store)
    try:
        summary = run_queue(store, plan, executor, config)
    finally:
        executor.close()
    # The batch running when the pause came finished and was committed; nothing else ran.
    assert summary.paused and summary.committed == len(executor.batches[0]) == 3
    assert len(executor.batches) == 1
    assert store.status(current=current).open_jobs > 0
    # Pausing again changes nothing but custody: the pause keeps its reason and author.
    assert not controls.set_paused(store.database, True, "qarina-pause@ben", "again")
    paused = controls.pause_state(store.database)
    assert paused.paused and paused.reason == "maintenance" and paused.by == "qarina-pause@anna"

    sequential = SequentialExecutor(plan, config)
    try:
        again = run_queue(store, plan, sequential, config)
    finally:
        sequential.close()
    assert again.paused and again.committed == 0

    assert controls.set_paused(store.database, False, "qarina-resume@ben")
    assert not controls.set_paused(store.database, False, "qarina-resume@ben")
    run_plan(store, plan, config)
    assert store.status(current=current).open_jobs == 0
    assert [actor for actor, _ in _custody(store, "pause")] == [
        "qarina-pause@anna",
        "qarina-pause@ben",
    ]
    assert [details["was_paused"] for _, details in _custody(store, "resume")] == [True, False]


# --- progress, ETA, deadline ------------------------------------------------------------------


def test_eta_is_the_slowest_stage_at_its_throughput() -> None:
    eta = estimate_eta(
        {"probe": 100.0, "metadata": 50.0, "transcript": 30.0, "keyframes": 0.0},
        {"probe": 10.0, "metadata": 1.0, "transcript": 0.1, "hashes": 5.0},
        300,
        NOW,
    )
    assert eta.seconds == pytest.approx(300.0) and eta.bottleneck == "transcript"
    assert eta.finish_at == NOW + dt.timedelta(seconds=300)
    assert eta.throughput_per_s == {"probe": 10.0, "metadata": 1.0, "transcript": 0.1}
    assert eta.unmeasured == () and eta.window_s == 300
    # A stage with work and no throughput leaves only a lower bound.
    partial = estimate_eta({"probe": 100.0, "transcript": 3.0}, {"probe": 10.0}, 300, NOW)
    assert partial.seconds is None and partial.finish_at is None
    assert partial.at_least_s == pytest.approx(10.0) and partial.unmeasured == ("transcript",)
    unknown_work = estimate_eta({"probe": 1.0, "hashes": None}, {"probe": 1.0}, 300, NOW)
    assert unknown_work.seconds is None and unknown_work.unestimated == ("hashes",)
    assert estimate_eta({"probe": 0.0}, {}, 300, NOW).seconds == 0


def _eta(seconds: float | None, at_least: float = 0.0) -> Eta:
    return Eta(seconds, at_least if seconds is None else seconds, None, None, 300, {}, ())


def test_deadline_verdicts() -> None:
    day = dt.timedelta(days=1)
    deadline = NOW + day
    assert deadline_verdict(None, NOW, _eta(10), True).state is Deadline.NO_DEADLINE
    holds = deadline_verdict(deadline, NOW, _eta(3600), True)
    assert holds.state is Deadline.HOLDS and holds.slack_s == pytest.approx(82_800)
    # Within the margin, or after the deadline: at risk.
    tight = day.total_seconds() * (1 - MARGIN_SHARE / 2)
    assert deadline_verdict(deadline, NOW, _eta(tight), True).state is Deadline.AT_RISK
    late = deadline_verdict(deadline, NOW, _eta(2 * day.total_seconds()), True)
    assert late.state is Deadline.AT_RISK and late.slack_s == pytest.approx(-86_400)
    assert deadline_verdict(NOW - day, NOW, _eta(10), True).state is Deadline.MISSED
    assert deadline_verdict(deadline, NOW, _eta(None), True).state is Deadline.UNKNOWN
    # What could be measured already runs past it.
    beyond = _eta(None, at_least=2 * day.total_seconds())
    assert deadline_verdict(deadline, NOW, beyond, True).state is Deadline.AT_RISK
    done = deadline_verdict(deadline, NOW, _eta(0), False, last_finished=NOW - day)
    assert done.state is Deadline.HOLDS and done.slack_s == pytest.approx(2 * 86_400)
    after = deadline_verdict(NOW - day, NOW, _eta(0), False, last_finished=NOW)
    assert after.state is Deadline.MISSED


def _work_off(
    store: Store, plan: Plan, kinds: Mapping[str, Kind], stages: set[str] | None = None
) -> int:
    """Play a driver without stages: lease every queued job under the plan's keys, commit a
    success for those of items in `kinds` (of `stages`), and hand the rest back."""
    keys = [key for name in plan.stages for key in plan.keys(name)]
    leased = jobs.lease(store.database, DRIVER, keys, 10_000, TTL)
    outcomes: list[tuple[records.LeasedJob, records.Outcome]] = []
    for job in leased:
        kind = kinds.get(job.sha256)
        if kind is not None and (stages is None or job.stage in stages):
            success = records.Success(
                {"value": 1},
                {"node": "test"},
                item_kind=kind.value if job.stage == "probe" else None,
                follow_ups=plan.follow_ups(job.stage, kind.value),
            )
            outcomes.append((job, success))
    jobs.commit(store.database, outcomes, DRIVER)
    jobs.release_owners(store.database, [DRIVER])
    return len(outcomes)


def test_progress_counts_work_to_come_and_work_ahead(
    store: Store, config: QarinaConfig, tmp_path: Path
) -> None:
    plan = Plan.default(settings=config)
    first = plan.initial_jobs()
    deadline = dt.datetime.now(dt.UTC) + dt.timedelta(days=30)
    requests.create(store.database, "RFA-1", "tester", priority=5, deadline=deadline)
    mine = [_arrive(store, tmp_path, f"r{index}", first, request="RFA-1") for index in range(4)]
    urgent = [_arrive(store, tmp_path, f"o{index}", first, priority=9) for index in range(4)]
    later = [_arrive(store, tmp_path, f"l{index}", first, priority=1) for index in range(2)]
    probed = {mine[0]: Kind.PHOTO, mine[1]: Kind.VIDEO, urgent[3]: Kind.VIDEO}
    assert _work_off(store, plan, probed, {"probe"}) == 3

    progress = backlog_progress(store, plan, "RFA-1")
    assert progress.items.total == 4 and progress.items.in_progress == 4
    assert progress.kind_mix == {"photo": 1, "video": 2} and progress.kind_mix_source == "store"
    stages = {stage.stage: stage for stage in progress.stages}
    # Two unprobed items; the urgent ones' three probes go first; later ones come after.
    assert stages["probe"].counts == {"done": 2, "queued": 2}
    assert (stages["probe"].to_come, stages["probe"].ahead) == (0, 3)
    # Every kind seen needs metadata: two more to come. Ahead: the urgent video's, and what
    # the three urgent probes will queue.
    assert stages["metadata"].open == 2
    assert stages["metadata"].to_come == pytest.approx(2)
    assert stages["metadata"].ahead == pytest.approx(1 + 3)
    # Two thirds of the kinds seen are videos.
    assert stages["keyframes"].open == 1
    assert stages["keyframes"].to_come == pytest.approx(2 * 2 / 3)
    assert stages["keyframes"].ahead == pytest.approx(1 + 3 * 2 / 3)
    # Hashes: the photo's is queued; the video's waits for its keyframes; unprobed ones.
    assert stages["hashes"].open == 1
    assert stages["hashes"].to_come == pytest.approx(1 + 2)
    assert stages["hashes"].ahead == pytest.approx(3 + 1)
    # Only the probe has ended jobs: the rest have no throughput, so no ETA yet.
    assert set(progress.eta.throughput_per_s) == {"probe"}
    assert progress.eta.seconds is None and "metadata" in progress.eta.unmeasured
    assert progress.verdict.state is Deadline.UNKNOWN
    assert not progress.pause.paused

    everything = backlog_progress(store, plan)
    assert everything.request is None and everything.verdict.state is Deadline.NO_DEADLINE
    assert everything.items.total == 10
    assert {stage.stage: stage.ahead for stage in everything.stages}["probe"] == 0
    assert {stage.stage: stage.open for stage in everything.stages}["probe"] == 7
    with pytest.raises(requests.UnknownRequest):
        backlog_progress(store, plan, "RFA-404")
    requests.create(store.database, "RFA-0", "tester", priority=1, deadline=deadline)
    empty = backlog_progress(store, plan, "RFA-0")
    assert empty.items.total == 0 and empty.verdict.state is Deadline.UNKNOWN

    # Work everything off: the request holds its deadline, and the JSON says so.
    kinds = dict.fromkeys([*mine, *urgent, *later], Kind.PHOTO) | probed
    while _work_off(store, plan, kinds):
        pass
    done = backlog_progress(store, plan, "RFA-1")
    assert done.items.finished == 4 and done.items.in_progress == 0
    assert done.eta.seconds == 0 and done.verdict.state is Deadline.HOLDS
    report = done.to_json()
    assert report["deadline_verdict"] == "holds" and report["items"]["finished"] == 4
    assert report["eta"]["window_s"] == 300 and report["stages"]["probe"]["counts"]["done"] == 4
    json.dumps(report)


def test_progress_eta_and_verdicts_from_measured_throughput(
    store: Store, config: QarinaConfig, tmp_path: Path
) -> None:
    plan = Plan.default(settings=config)
    first = plan.initial_jobs()
    items = [_arrive(store, tmp_path, f"p{index}", first, request="RFA-2") for index in range(30)]
    kinds = dict.fromkeys(items, Kind.PHOTO)
    # Three photos go through every stage: each photo stage now has a throughput.
    _work_off(store, plan, dict(list(kinds.items())[:3]))
    _work_off(store, plan, dict(list(kinds.items())[:3]))
    _work_off(store, plan, {items[3]: Kind.PHOTO}, {"probe"})
    progress = backlog_progress(store, plan, "RFA-2")
    rates = store.status(current=plan.current_keys()).throughput_by_stage
    stages = {stage.stage: stage for stage in progress.stages}
    assert progress.eta.seconds is not None
    for name in ("probe", "metadata", "hashes"):
        assert stages[name].throughput_per_s == pytest.approx(rates[name], rel=0.5)
        assert stages[name].time_s == pytest.approx(
            (stages[name].open + (stages[name].to_come or 0)) / stages[name].throughput_per_s
        )
    assert progress.eta.seconds == pytest.approx(
        max(stage.time_s or 0 for stage in stages.values())
    )
    assert progress.verdict.state is Deadline.NO_DEADLINE

    # The same work (seconds of it at a few jobs a second) against deadlines: one far away
    # holds, one sooner than the ETA is at risk, one gone is missed.
    assert progress.eta.seconds > 5
    for deadline, verdict in [
        (dt.timedelta(days=30), Deadline.HOLDS),
        (dt.timedelta(seconds=progress.eta.seconds * 0.9), Deadline.AT_RISK),
        (dt.timedelta(days=-1), Deadline.MISSED),
    ]:
        requests.create(
            store.database, "RFA-2", "t", priority=0, deadline=dt.datetime.now(dt.UTC) + deadline
        )
        assert backlog_progress(store, plan, "RFA-2").verdict.state is verdict

    controls.set_paused(store.database, True, "qarina-pause@anna", "disk swap")
    paused = backlog_progress(store, plan, "RFA-2").to_json()
    assert paused["paused"] and paused["pause"]["reason"] == "disk swap"


# --- the CLI ----------------------------------------------------------------------------------


def test_cli_requests_requeue_pause_and_status(sqlite_config: QarinaConfig, tmp_path: Path) -> None:
    folder = tmp_path / "drive"
    folder.mkdir()
    photos.photo(folder / "fine.jpg", size=(96, 72), seed=1)
    hostile.corrupt_video(folder / "clip.mp4")
    runner = CliRunner(env={"QARINA_OPERATOR": "anna"})
    base = ["--data", str(sqlite_config.data_dir)]

    def qarina(*args: str, code: int = 0) -> str:
        result = runner.invoke(app, [*base, *args])
        assert result.exit_code == code, result.output
        return result.stdout

    created = json.loads(
        qarina(
            "request",
            "create",
            "RFA-2291",
            "--priority",
            "10",
            "--deadline",
            "2026-12-05T09:00:00+0200",
            "--json",
        )
    )
    assert created["deadline"] == "2026-12-05T07:00:00+00:00" and created["priority"] == 10
    assert created["created_by"] == "qarina-request@anna"
    # What is not given is kept.
    assert "priority 10, 2026-12-06 00:00 UTC" in qarina(
        "request", "create", "RFA-2291", "--deadline", "2026-12-06"
    )
    assert "no deadline" in qarina("request", "create", "RFA-2291", "--no-deadline")
    qarina("ingest", str(folder), "--source", "drive", "--request", "RFA-2291")
    assert "2 queued jobs re-prioritised" in qarina("request", "priority", "RFA-2291", "15")
    moved = json.loads(qarina("request", "priority", "RFA-2291", "20", "--json"))
    assert moved == {"ref": "RFA-2291", "priority": 20, "queued_jobs_changed": 2}
    assert (
        "no request RFA-1"
        in runner.invoke(app, [*base, "request", "priority", "RFA-1", "3"]).output
    )
    listed = json.loads(qarina("request", "list", "--json"))
    assert [(found["ref"], found["priority"]) for found in listed] == [("RFA-2291", 20)]

    assert "paused" in qarina("pause", "--reason", "disk swap")
    assert "already paused" in qarina("pause")
    ran = qarina("run", "--sequential")
    assert "committed 0 outcomes" in ran and "leasing is paused" in ran and "disk swap" in ran
    status = json.loads(qarina("status", "--json", "--request", "RFA-2291"))
    assert status["paused"] and status["progress"]["pause"]["reason"] == "disk swap"
    assert status["progress"]["items"]["total"] == 2
    assert "PAUSED" in qarina("status")
    assert json.loads(qarina("resume", "--json")) == {"paused": False, "changed": True}
    qarina("run", "--sequential")

    dry = json.loads(qarina("requeue", "--failed", "--dry-run", "--json"))
    assert dry == {
        "requeued": 1,
        "dry_run": True,
        "by_stage_and_reason": [{"stage": "probe", "reason": "corrupt_media", "jobs": 1}],
    }
    qarina("requeue", code=2)
    qarina("requeue", "--failed", "--stage", "nonsense", code=2)
    qarina("requeue", "--failed", "--reason", "not-a-reason", code=2)
    # A filter by failure reason takes only what ended that way.
    assert (
        json.loads(
            qarina("requeue", "--failed", "--reason", "tool_timeout", "--dry-run", "--json")
        )["requeued"]
        == 0
    )
    qarina("requeue", "--failed", "--request", "RFA-404", code=1)
    assert "requeued 1 failed" in qarina(
        "requeue", "--failed", "--request", "RFA-2291", "--note", "ffmpeg upgraded"
    )
    shown = qarina("status", "--request", "RFA-2291")
    assert "request RFA-2291: priority 20, no deadline" in shown and "ETA" in shown
    assert "items: 2 total, 1 finished, 0 failed, 1 in progress" in shown
    qarina("status", "--request", "RFA-404", code=1)

    watched = qarina(
        "status", "--request", "RFA-2291", "--watch", "--every", "0.01", "--refreshes", "2"
    )
    assert "open jobs" in watched and "request RFA-2291" in watched
    qarina("status", "--watch", "--json", code=2)

    store = open_store(sqlite_config)
    try:
        actors = {
            action: actor
            for action in ("request", "pause", "resume", "requeue")
            for actor, _ in _custody(store, action)
        }
    finally:
        store.close()
    assert actors == {
        "request": "qarina-request@anna",
        "pause": "qarina-pause@anna",
        "resume": "qarina-resume@anna",
        "requeue": "qarina-requeue@anna",
    }
