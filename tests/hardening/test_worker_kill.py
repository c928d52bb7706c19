"""A Ray worker killed with SIGKILL in the middle of ffmpeg (issue 17): the item gets exactly
one result later, nothing half-made is stored under a hash, and no tool process outlives it.

The run is real (`qarina run` on a private local Ray). A stub `ffmpeg` first on PATH waits a
few seconds before it becomes the real ffmpeg, so the test can find a worker whose ffmpeg is
running and kill that worker, as the kernel or an operator would.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import ray
import sqlalchemy as sa

from evidence import jobs as jobs_queue
from evidence.records import Failure, Outcome, Unstarted
from evidence.schema import artifacts, custody_events, jobs, results
from pipelines import runner
from pipelines.config import QarinaConfig
from pipelines.execute import Task
from pipelines.ingest import ingest_paths
from pipelines.plan import Plan
from pipelines.ray_runtime import RayExecutor, start_ray
from pipelines.samples import audio, photos
from pipelines.session import open_store
from workers.probe import ProbeStage

pytestmark = pytest.mark.slow

QARINA = str(Path(sys.executable).parent / "qarina")


def _stub_ffmpeg(folder: Path) -> None:
    real = shutil.which("ffmpeg")
    assert real is not None
    folder.mkdir()
    stub = folder / "ffmpeg"
    # One process all along (exec, no child): the worker's death signal reaches it.
    stub.write_text(
        textwrap.dedent(f"""
            #!{sys.executable}
            import os, sys, time
            if "-version" not in sys.argv:
                time.sleep(4)
            os.execv({real!r}, [{real!r}, *sys.argv[1:]])
        """).lstrip()
    )
    stub.chmod(0o755)


def _stub_processes() -> list[tuple[int, int, int]]:
    """(pid, parent pid, process group) of every stub ffmpeg still sleeping: one a batch runs,
    not a stage's setup asking its version (a worker killed there never ran a batch)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes()
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if b"/stubs/ffmpeg" in argv and b"-version" not in argv and fields[0] != "Z":
            found.append((int(entry.name), int(fields[1]), int(fields[2])))
    return found


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_worker_killed_mid_ffmpeg_leaves_one_result_and_no_tool_behind(
    tmp_path: Path, models_dir: Path
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for index in range(3):
        audio.speech(folder / f"note-{index}.wav", f"{audio.GREETING} {index}")
    photos.photo(folder / "photo.jpg", size=(320, 240))
    _stub_ffmpeg(tmp_path / "stubs")
    env = {
        **os.environ,
        "PATH": f"{tmp_path / 'stubs'}{os.pathsep}{os.environ['PATH']}",
        "QARINA_MODELS_DIR": str(models_dir),
    }
    data = tmp_path / "data"
    ingest = subprocess.run(
        [QARINA, "--data", str(data), "ingest", str(folder), "--source", "kill"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert ingest.returncode == 0, ingest.stderr

    driver = subprocess.Popen(
        [QARINA, "--data", str(data), "run"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 180
    while not (running := _stub_processes()):
        assert driver.poll() is None, driver.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "no ffmpeg started"
        time.sleep(0.1)
    ffmpeg_pid, worker_pid, group = running[0]
    assert group == ffmpeg_pid  # the tool leads its own process group
    os.kill(worker_pid, signal.SIGKILL)
    gone_by = time.monotonic() + 10
    while _group_alive(group) and time.monotonic() < gone_by:
        time.sleep(0.1)
    assert not _group_alive(group), "the killed worker's ffmpeg outlived it"

    _, stderr = driver.communicate(timeout=300)
    assert driver.returncode == 0, stderr[-3000:]

    engine = sa.create_engine(f"sqlite:///{data / 'qarina.sqlite3'}")
    try:
        with engine.connect() as connection:
            states = connection.execute(sa.select(jobs.c.stage, jobs.c.state)).all()
            lost = (
                connection.execute(
                    sa.select(custody_events.c.details).where(
                        custody_events.c.stage == "transcript", custody_events.c.action == "failure"
                    )
                )
                .scalars()
                .all()
            )
            twice = connection.execute(
                sa.select(results.c.sha256, results.c.stage)
                .group_by(results.c.sha256, results.c.stage)
                .having(sa.func.count() > 1)
            ).all()
            transcripts = connection.execute(
                sa.select(sa.func.count()).where(results.c.stage == "transcript")
            ).scalar_one()
            stored = connection.execute(sa.select(artifacts.c.sha256)).scalars().all()
    finally:
        engine.dispose()
    assert all(state == "done" for _, state in states), states
    assert twice == []
    assert transcripts == 3
    # The killed worker's jobs were tried again; a loss under a batch counts against none.
    reasons = [json.loads(details) for details in lost]
    assert reasons and {details["reason"] for details in reasons} == {"tool_crash"}
    # Nothing half-written under a hash: every blob file holds the bytes its name says.
    blobs = [path for path in (data / "blobs" / "sha256").rglob("*") if path.is_file()]
    assert blobs and set(stored) <= {path.name for path in blobs}
    for path in blobs:
        assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name
    assert not _stub_processes()
    verdict = subprocess.run(
        [QARINA, "--data", str(data), "verify", "--fixity"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert verdict.returncode == 0, verdict.stdout


def _stub_ffprobe(folder: Path, pids: Path, *, in_setup: bool) -> None:
    """An ffprobe that leaves its worker's pid in `pids` and waits until it is killed: on
    the version question the stage asks in its setup too, or only on the files it probes."""
    real = shutil.which("ffprobe")
    assert real is not None
    answer = "" if in_setup else f'case "$*" in *-version*) exec {real} "$@";; esac\n'
    folder.mkdir()
    stub = folder / "ffprobe"
    stub.write_text(f'#!/bin/sh\n{answer}echo $PPID > "{pids}/$$"\nexec sleep 100000\n')
    stub.chmod(0o755)


@pytest.mark.parametrize("in_setup", [False, True], ids=["running", "in-setup"])
def test_batches_queued_behind_a_lost_worker_go_back_unstarted(
    sqlite_config: QarinaConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, in_setup: bool
) -> None:
    """Three single-job batches on one real Ray actor; its worker is killed while it runs the
    first, or before that, in the stage's setup. Only a batch that was running can have
    caused the loss and counts it; batches that waited go back to the queue as they were (a
    soak with a kill every 30 s once made every job queued on a killed worker pay for it,
    until jobs that never ran neared their limit of losses)."""
    folder, pids = tmp_path / "in", tmp_path / "pids"
    folder.mkdir()
    pids.mkdir()
    for index in range(3):
        audio.tone(folder / f"tone-{index}.wav", seconds=1.0 + index)
    _stub_ffprobe(tmp_path / "stubs", pids, in_setup=in_setup)
    monkeypatch.setenv("PATH", f"{tmp_path / 'stubs'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    plan = Plan({"probe": ProbeStage()})
    store = open_store(sqlite_config)
    try:
        ingest_paths(store, plan, sqlite_config, [folder], source="kill")
        leased = jobs_queue.lease(
            store.database, "test", [plan.key("probe")], 3, dt.timedelta(minutes=5)
        )
        start_ray(None, num_cpus=1)
        executor = RayExecutor(plan, sqlite_config)
        try:
            for task in runner._tasks(store, plan, leased):
                executor.submit("probe", [task])
            deadline = time.monotonic() + 120
            while not (marks := list(pids.iterdir())):
                assert time.monotonic() < deadline, "the first probe never started"
                time.sleep(0.1)
            assert len(marks) == 1
            os.kill(int(marks[0].read_text()), signal.SIGKILL)
            finished: list[tuple[list[Task], list[Outcome]]] = []
            while sum(len(tasks) for tasks, _ in finished) < len(leased):
                assert time.monotonic() < deadline, "the lost batches never came back"
                finished += executor.collect(1.0)
        finally:
            executor.close()
            ray.shutdown()
        by_job = {
            task.job.id: outcome
            for tasks, outcomes in finished
            for task, outcome in zip(tasks, outcomes, strict=True)
        }
        first, *waiting = (by_job[job.id] for job in leased)
        assert all(isinstance(outcome, Unstarted) for outcome in waiting), waiting
        assert len(list(pids.iterdir())) == 1  # the batches behind the kill never ran
        if in_setup:
            assert isinstance(first, Unstarted)
        else:
            assert isinstance(first, Failure) and first.counts_against == "worker_losses"

        report = jobs_queue.commit(
            store.database, [(job, by_job[job.id]) for job in leased], "test"
        )
        assert (report.committed, report.returned) == ((0, 3) if in_setup else (1, 2))
        with store.database.reader.connect() as connection:
            rows = connection.execute(
                sa.select(jobs.c.id, jobs.c.state, jobs.c.worker_losses, jobs.c.error_reason)
            ).all()
    finally:
        store.close()
    counted = {row.id: (row.state, row.worker_losses, row.error_reason) for row in rows}
    first_counted = ("queued", 0, None) if in_setup else ("queued", 1, "tool_crash")
    assert [counted[job.id] for job in leased] == [
        first_counted,
        ("queued", 0, None),
        ("queued", 0, None),
    ]
