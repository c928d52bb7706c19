"""`qarina serve` for real: a subprocess on a warm Ray, fed by a drop folder and by another
process's intake; SIGTERM mid-backlog, SIGKILL mid-ingest, and two services on one store."""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa

from evidence.db import as_utc
from evidence.schema import acquisitions, results
from evidence.store import Store
from pipelines.config import QarinaConfig
from pipelines.ingest import ingest_paths
from pipelines.plan import Plan
from pipelines.samples import photos

pytestmark = pytest.mark.slow

QARINA = str(Path(sys.executable).parent / "qarina")


def _environment(models_dir: Path, db_url: str | None = None) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    env["QARINA_MODELS_DIR"] = str(models_dir)
    if db_url is not None:
        env["QARINA_DB_URL"] = db_url
    return env


def _start(data: Path, env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [QARINA, "--data", str(data), "serve", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@contextmanager
def _serving(data: Path, env: dict[str, str], *args: str) -> Iterator[subprocess.Popen[bytes]]:
    """A service for the block; SIGTERM at its end, which it must answer by exiting 0."""
    service = _start(data, env, *args)
    try:
        yield service
    finally:
        if service.poll() is None:
            service.send_signal(signal.SIGTERM)
        _, errors = service.communicate(timeout=180)
        service.stderr_text = errors.decode(errors="replace")  # type: ignore[attr-defined]
    assert service.returncode == 0, service.stderr_text  # type: ignore[attr-defined]


class _Counts:
    """Read-only counts from the store the service writes."""

    def __init__(self, url: str) -> None:
        self.engine = sa.create_engine(url)

    def __call__(self, query: str) -> int:
        """The count, 0 while the service has not created the store yet."""
        try:
            with self.engine.connect() as connection:
                return int(connection.execute(sa.text(query)).scalar_one())
        except (sa.exc.OperationalError, sa.exc.ProgrammingError):
            return 0

    def close(self) -> None:
        self.engine.dispose()


@pytest.fixture
def counts(sqlite_config: QarinaConfig) -> Iterator[_Counts]:
    counter = _Counts(sqlite_config.db_url)
    yield counter
    counter.close()


def test_a_warm_service_starts_what_arrives_at_once_and_stops_cleanly(
    sqlite_config: QarinaConfig, models_dir: Path, counts: _Counts, tmp_path: Path
) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    env = _environment(models_dir)
    args = ("--watch", str(drop), "--source", "drop", "--settle-s", "0.2")
    with _serving(sqlite_config.data_dir, env, *args) as service:
        # Through the drop folder: the first item also waits for Ray's start.
        photos.photo(drop / "warm.jpg", size=(96, 72), seed=99)
        _until(lambda: counts("SELECT count(*) FROM results") >= 3, 180, "the first item")
        latencies = _first_stage_latencies(sqlite_config, counts, tmp_path)
        assert statistics.median(latencies) < 2.0, latencies
        # A backlog, then SIGTERM while it is being worked on.
        for index in range(40):
            photos.photo(drop / f"batch-{index:03d}.jpg", size=(320, 240), seed=100 + index)
        _until(lambda: counts("SELECT count(*) FROM acquisitions") >= 46, 60, "the batch")
        _until(lambda: counts("SELECT count(*) FROM results") >= 30, 120, "some results")
    assert "stopping intake" in service.stderr_text  # type: ignore[attr-defined]
    assert counts("SELECT count(*) FROM jobs WHERE state = 'leased'") == 0
    finished = subprocess.run(
        [QARINA, "--data", str(sqlite_config.data_dir), "run", "--sequential"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert finished.returncode == 0, finished.stderr
    assert counts("SELECT count(*) FROM jobs WHERE state NOT IN ('done', 'failed', 'dead')") == 0
    assert counts("SELECT count(*) FROM jobs WHERE stage = 'hashes' AND state = 'done'") == 46
    assert counts("SELECT count(*) FROM results") == counts(
        "SELECT count(*) FROM jobs WHERE state = 'done'"
    )
    assert counts("SELECT count(*) FROM custody_events WHERE action = 'result'") == counts(
        "SELECT count(*) FROM results"
    )


def _first_stage_latencies(
    config: QarinaConfig, counts: _Counts, tmp_path: Path, samples: int = 5
) -> list[float]:
    """Items registered by another process's intake, one at a time: seconds from each
    acquisition to its probe result, as the store recorded them."""
    store = Store.open(config.db_url, config.blob_root)
    plan = Plan.default(settings=config)
    latencies = []
    try:
        for seed in range(samples):
            one = tmp_path / f"one-{seed}"
            one.mkdir()
            photos.photo(one / "p.jpg", size=(96, 72), seed=seed)
            [sha] = ingest_paths(store, plan, config, [one], source="cli").sha256s
            probed = f"SELECT count(*) FROM results WHERE stage = 'probe' AND sha256 = '{sha}'"
            _until(lambda probed=probed: counts(probed) == 1, 30, "a probe result")
            with store.database.reader.connect() as connection:
                result_at, acquired_at = connection.execute(
                    sa.select(results.c.created_at, acquisitions.c.acquired_at)
                    .join(acquisitions, acquisitions.c.sha256 == results.c.sha256)
                    .where(results.c.stage == "probe", results.c.sha256 == sha)
                ).one()
            latencies.append((as_utc(result_at) - as_utc(acquired_at)).total_seconds())
    finally:
        store.close()
    return latencies


def test_a_service_killed_mid_ingest_takes_every_dropped_file_once_after_restart(
    sqlite_config: QarinaConfig, models_dir: Path, counts: _Counts, tmp_path: Path
) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    for index in range(150):
        photos.photo(drop / f"p{index:03d}.jpg", size=(64, 48), seed=index)
    env = _environment(models_dir)
    args = ("--sequential", "--watch", str(drop), "--source", "drop", "--settle-s", "0")
    killed = _start(sqlite_config.data_dir, env, *args)
    _until(lambda: counts("SELECT count(*) FROM acquisitions") >= 20, 120, "intake to start")
    killed.send_signal(signal.SIGKILL)
    killed.communicate()
    assert counts("SELECT count(*) FROM acquisitions") < 150, "killed too late"
    with _serving(sqlite_config.data_dir, env, *args):
        _until(lambda: counts("SELECT count(*) FROM acquisitions") == 150, 180, "every file")
        _until(
            lambda: counts("SELECT count(*) FROM jobs WHERE state IN ('queued', 'leased')") == 0,
            300,
            "the backlog",
        )
    assert counts("SELECT count(*) FROM items") == 150
    assert counts("SELECT count(DISTINCT intake_key) FROM acquisitions") == 150
    assert sorted(path.name for path in (drop / ".ingested").iterdir()) == sorted(
        f"p{index:03d}.jpg" for index in range(150)
    )
    assert counts("SELECT count(*) FROM results WHERE stage = 'hashes'") == 150


@pytest.mark.postgres
def test_two_services_on_one_store_share_the_queue_and_do_no_job_twice(
    request: pytest.FixtureRequest, tmp_path: Path, models_dir: Path
) -> None:
    from tests.conftest import _reset_postgres

    url: str = request.getfixturevalue("postgres_database")
    _reset_postgres(url)
    data = tmp_path / "data"
    config = QarinaConfig(data_dir=data, db_url=url, operator="tester", models_root=models_dir)
    data.mkdir()
    folder = tmp_path / "in"
    folder.mkdir()
    for index in range(60):
        photos.photo(folder / f"p{index:03d}.jpg", size=(320, 240), seed=index)
    store = Store.open(url, config.blob_root)
    try:
        ingest_paths(store, Plan.default(settings=config), config, [folder], source="backlog")
    finally:
        store.close()
    env = _environment(models_dir, url)
    counter = _Counts(url)
    with _serving(data, env, "--sequential"), _serving(data, env, "--sequential"):
        _until(
            lambda: counter("SELECT count(*) FROM jobs WHERE state IN ('queued', 'leased')") == 0
            and counter("SELECT count(*) FROM jobs WHERE stage = 'hashes'") == 60,
            300,
            "the backlog",
        )
    try:
        assert counter("SELECT count(*) FROM jobs WHERE state <> 'done'") == 0
        assert counter("SELECT count(*) FROM results") == counter("SELECT count(*) FROM jobs")
        assert counter("SELECT count(*) FROM custody_events WHERE action = 'result'") == counter(
            "SELECT count(*) FROM results"
        )
        # Both took part: results name the driver (host:pid:nonce) that made them.
        drivers = counter(
            "SELECT count(DISTINCT actor) FROM custody_events WHERE action = 'result'"
        )
        assert drivers == 2
    finally:
        counter.close()
