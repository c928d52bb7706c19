"""`qarina bench soak`: a long run through faults, then proof that nothing was lost or doubled.

A generated backlog (the messenger shape: photos, re-posts, voice notes, videos) is processed
by `qarina run` drivers on a Ray cluster of their own (`local_cluster`: a head and a worker
raylet started with `ray start`, as real nodes are), while the soak kills a random Ray worker
process of that cluster every `kill_every_s` seconds and, at even steps of progress, the driver
itself; a killed driver is started again, as a supervisor would. The cluster outlives its
drivers, as a real one does.

What it reports is what the issue asks: every item kept and processed (no job left open,
none given up on), no result or custody event stored twice, the custody chain and every
blob verified, the wall time, and the retries by reason (counted against attempts or not).
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from rich.console import Console

from evidence import jobs as jobq
from evidence.schema import custody_events, jobs, results
from evidence.store import Store
from models import whisper
from pipelines.bench.report import finish, fresh_data, machine_info, scratch_folder
from pipelines.config import QarinaConfig
from pipelines.ingest import ingest_paths
from pipelines.local_cluster import LocalCluster, local_cluster, stage_actor_pids
from pipelines.plan import Plan
from pipelines.samples.mixed_backlog import make_backlog
from pipelines.session import open_store

_QARINA = str(Path(sys.executable).parent / "qarina")
_LOOK_EVERY_S = 1.0
#: A soak in which no job has ended this long after the first driver started is stopped: the
#: drivers are failing before they get anywhere (their logs say why).
_FIRST_JOB_WITHIN_S = 600.0


def _job_states(connection: sa.Connection) -> dict[str, int]:
    rows = connection.execute(sa.select(jobs.c.state, sa.func.count()).group_by(jobs.c.state))
    return {state: count for state, count in rows}


def _progress(store: Store) -> tuple[int, int]:
    """(jobs ended, jobs in all): ended is done, failed or dead."""
    with store.database.reader.connect() as connection:
        counts = _job_states(connection)
    ended = sum(counts.get(state, 0) for state in (jobq.DONE, jobq.FAILED, jobq.DEAD))
    return ended, sum(counts.values())


class _Drivers:
    """The `qarina run` processes, one at a time: started, killed, restarted."""

    def __init__(self, config: QarinaConfig, cluster: LocalCluster, logs: Path) -> None:
        self._argv = [_QARINA, "--data", str(config.data_dir), "run", "--address", cluster.address]
        self._env = {
            **cluster.env,
            "QARINA_DB_URL": config.db_url,
            "QARINA_MODELS_DIR": str(config.models_dir),
        }
        self._logs = logs
        self.started = 0
        self.unexpected_exits: list[int] = []
        self.process = self._start()

    def _start(self) -> subprocess.Popen[bytes]:
        self.started += 1
        with (self._logs / f"driver-{self.started}.log").open("wb") as log:
            return subprocess.Popen(
                self._argv,
                env=self._env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def kill_and_restart(self) -> None:
        self.stop()
        self.process = self._start()

    def finished(self) -> bool:
        """Whether the driver ended well; one that failed is started again and noted."""
        code = self.process.poll()
        if code is None:
            return False
        if code == 0:
            return True
        self.unexpected_exits.append(code)
        self.process = self._start()
        return False

    def stop(self) -> None:
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


def _soak(
    config: QarinaConfig,
    store: Store,
    cluster: LocalCluster,
    logs: Path,
    kill_every_s: float,
    driver_kills: int,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """Run drivers until the backlog is done, killing as told; what was done to it."""
    chooser = random.Random(0x50A4)  # noqa: S311 - which worker dies, repeatably; no secret
    kill_points = [(step + 1) / (driver_kills + 1) for step in range(driver_kills)]
    worker_kills = 0
    started = time.monotonic()
    next_kill = started + kill_every_s
    drivers = _Drivers(config, cluster, logs)
    try:
        while not drivers.finished():
            time.sleep(_LOOK_EVERY_S)
            ended, total = _progress(store)
            now = time.monotonic()
            if ended == 0 and now - started > _FIRST_JOB_WITHIN_S:
                raise RuntimeError(f"no job ended: see the driver logs in {logs}")
            if now >= next_kill:
                next_kill = now + kill_every_s
                actors = stage_actor_pids(cluster)
                if actors:
                    with suppress(ProcessLookupError):
                        os.kill(chooser.choice(actors), signal.SIGKILL)
                    worker_kills += 1
            if kill_points and total and ended / total >= kill_points[0]:
                kill_points.pop(0)
                say(f"killing the driver at {ended}/{total} jobs ended")
                drivers.kill_and_restart()
    finally:
        drivers.stop()
    return {
        "wall_s": round(time.monotonic() - started, 1),
        "worker_kills": worker_kills,
        "driver_kills": driver_kills - len(kill_points),
        "drivers_started": drivers.started,
        "unexpected_driver_exits": drivers.unexpected_exits,
    }


def _verdict(store: Store, ingested: int, actor: str) -> dict[str, Any]:
    """Lost, doubled, verified, retried: read from the store alone."""
    with store.database.reader.connect() as connection:
        states = _job_states(connection)
        item_count = connection.execute(sa.text("SELECT count(*) FROM items")).scalar_one()
        doubled_results = connection.execute(
            sa.select(sa.func.count()).select_from(
                sa.select(results.c.sha256)
                .group_by(
                    results.c.sha256,
                    results.c.stage,
                    results.c.stage_version,
                    results.c.config_hash,
                )
                .having(sa.func.count() > 1)
                .subquery()
            )
        ).scalar_one()
        events = custody_events.c
        result_events = connection.execute(
            sa.select(events.item_sha256, events.stage, events.details).where(
                events.action.in_(["result", "skip"])
            )
        ).all()
        failures = connection.execute(
            sa.select(custody_events.c.details).where(custody_events.c.action == "failure")
        ).scalars()
        retries: Counter[str] = Counter()
        for text in failures:
            details = json.loads(text)
            against = details.get("counts_against", "attempts")
            retries[f"{details['reason']} (against {against})"] += 1
        ended_badly = connection.execute(
            sa.select(jobs.c.stage, jobs.c.error_reason, sa.func.count())
            .where(jobs.c.state.in_([jobq.FAILED, jobq.DEAD]))
            .group_by(jobs.c.stage, jobs.c.error_reason)
        ).all()
    stored_twice: Counter[tuple[str, str, str]] = Counter()
    for sha256, stage, text in result_events:
        details = json.loads(text)
        if not details.get("already_stored"):
            stored_twice[sha256, stage, details["config_hash"]] += 1
    report = store.verify(fixity=True, actor=actor)
    open_jobs = states.get(jobq.QUEUED, 0) + states.get(jobq.LEASED, 0)
    # A final failure (`failed`) is a classified refusal of the item, kept; a `dead` job is
    # one whose retries ran out, which a soak's kills must not cause.
    dead = states.get(jobq.DEAD, 0)
    return {
        "items": item_count,
        "ingested_items": ingested,
        "jobs": states,
        "open_jobs": open_jobs,
        "failed_or_dead": [
            {"stage": stage, "reason": reason, "jobs": count}
            for stage, reason, count in ended_badly
        ],
        "doubled_results": doubled_results,
        "doubled_result_events": sum(1 for count in stored_twice.values() if count > 1),
        "retries": dict(sorted(retries.items())),
        "verify_ok": report.ok,
        "blobs_checked": report.blobs_checked,
        "lost": (ingested - item_count) + open_jobs + dead,
    }


def bench_soak(
    config: QarinaConfig,
    output: Path,
    *,
    items: int = 10_000,
    kill_every_s: float = 30.0,
    driver_kills: int = 2,
    progress: Console | None = None,
) -> dict[str, Any]:
    """Generate `items`, ingest them into a fresh store and soak them through faults.

    Raises:
        ModelMissing: no Whisper model, checked before anything is generated.
    """
    if items < 1 or kill_every_s <= 0 or driver_kills < 0:
        raise ValueError("items >= 1, kill_every_s > 0 and driver_kills >= 0")
    config = config.with_overrides(models_root=config.models_dir)
    whisper.resolve(config.models_dir, config.whisper_model)
    console = progress or Console(quiet=True)
    logs = output.parent / f"{output.stem}-drivers"
    logs.mkdir(parents=True, exist_ok=True)
    with scratch_folder(config) as scratch:
        machine = machine_info(scratch)
        folder = scratch / "backlog"
        folder.mkdir()
        console.print(f"generating {items} items")
        shape = make_backlog(folder, items)
        run_config = fresh_data(config, scratch, "soak")
        store = open_store(run_config)
        try:
            plan = Plan.default(settings=run_config)
            summary = ingest_paths(store, plan, run_config, [folder], source="soak")
            console.print(f"{summary.new_items} items ingested; soaking")
            with local_cluster(1, os.cpu_count() or 2) as cluster:
                soak = _soak(
                    run_config, store, cluster, logs, kill_every_s, driver_kills, console.print
                )
            verdict = _verdict(store, summary.new_items, f"qarina-soak@{config.operator}")
        finally:
            store.close()
    result: dict[str, Any] = {
        "benchmark": "soak",
        "machine": machine,
        "params": {"items": items, "kill_every_s": kill_every_s, "driver_kills": driver_kills},
        "backlog": dataclasses.asdict(shape),
        "soak": soak,
        "verdict": verdict,
        "passed": verdict["lost"] == 0
        and verdict["doubled_results"] == 0
        and verdict["doubled_result_events"] == 0
        and verdict["verify_ok"]
        and not soak["unexpected_driver_exits"],
    }
    headline = (
        f"soak of {verdict['items']} items, {soak['worker_kills']} worker kills and"
        f" {soak['driver_kills']} driver kills in {soak['wall_s']:.0f} s: lost {verdict['lost']},"
        f" doubled {verdict['doubled_results'] + verdict['doubled_result_events']},"
        f" custody and fixity {'verified' if verdict['verify_ok'] else 'BROKEN'};"
        f" retries {sum(verdict['retries'].values())}"
    )
    return finish(result, output, headline)
