"""A real multi-node Ray cluster on this machine, with PostgreSQL as the store.

`ray start` brings up a head (no CPUs: it only coordinates) and two worker raylets, with
token authentication, as cluster.yaml starts them on real machines. `qarina run --address`
drives a mixed backlog through it as a separate process, and the tests take nodes, drivers
and Ray worker processes away mid-backlog. After every fault each item must end done or
failed, each result must be stored once, and the custody chain must verify.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from evidence.schema import custody_events, results
from evidence.store import Store
from pipelines.bench.cluster import TOPOLOGIES, bench_cluster
from pipelines.config import QarinaConfig
from pipelines.local_cluster import LocalCluster, local_cluster, stage_actor_pids
from pipelines.samples import audio, photos, videos
from tests.conftest import _reset_postgres

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

BIN = Path(sys.executable).parent
QARINA = str(BIN / "qarina")
PHOTOS = 24


@pytest.fixture(scope="module")
def ray_cluster(models_dir: Path) -> Iterator[LocalCluster]:
    """A head and two 2-CPU worker raylets started with `ray start`, sharing one token.

    One cluster serves the module (starting one takes half a minute); the test that kills a
    worker node comes last.
    """
    with local_cluster(2, 2, {"QARINA_MODELS_DIR": str(models_dir)}) as cluster:
        yield cluster


def _long_busy_actor_pids(cluster: LocalCluster) -> list[int]:
    """The cluster's Ray workers busy in two looks 0.2 s apart: inside a batch long enough to
    be killed in it. One caught at the end of a short batch would die idle, and no job would
    be retried. Only this cluster's: another Ray on the machine is not the test's to kill."""
    first = stage_actor_pids(cluster, busy=True)
    time.sleep(0.2)
    return [pid for pid in stage_actor_pids(cluster, busy=True) if pid in first]


@pytest.fixture
def pg_url(request: pytest.FixtureRequest) -> str:
    url: str = request.getfixturevalue("postgres_database")
    _reset_postgres(url)
    return url


def _backlog(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for index in range(PHOTOS):
        photos.photo(folder / f"p{index:03d}.jpg", size=(320, 240), seed=index)
    videos.video_with_speech(folder / "clip.mp4", audio.speech(folder.parent / "speech.wav"))
    audio.speech(folder / "note.opus", voice_format="ogg-opus")
    return folder


def _qarina(data: Path, *args: str) -> list[str]:
    return [QARINA, "--data", str(data), *args]


def _env(cluster: LocalCluster, pg_url: str) -> dict[str, str]:
    return {**cluster.env, "QARINA_DB_URL": pg_url}


def _ingest(cluster: LocalCluster, tmp_path: Path, pg_url: str) -> Path:
    data = tmp_path / "data"
    folder = _backlog(tmp_path / "in")
    subprocess.run(
        _qarina(data, "ingest", str(folder), "--source", "cluster-test"),
        env=_env(cluster, pg_url), check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    return data


def _driver(cluster: LocalCluster, data: Path, pg_url: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        _qarina(data, "run", "--address", cluster.address),
        env=_env(cluster, pg_url),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(driver: subprocess.Popen[str], timeout: float = 420) -> str:
    """Wait for the driver to end well; returns its log (stderr)."""
    _, stderr = driver.communicate(timeout=timeout)
    assert driver.returncode == 0, stderr[-3000:]
    return stderr


def _count(pg_url: str, query: sa.Select[tuple[int]]) -> int:
    engine = sa.create_engine(pg_url)
    try:
        with engine.connect() as connection:
            count: int = connection.execute(query).scalar_one()
            return count
    finally:
        engine.dispose()


def _results_stored(pg_url: str) -> int:
    return _count(pg_url, sa.select(sa.func.count()).select_from(results))


def _retried_jobs(pg_url: str) -> int:
    """Jobs that failed at least once: a failure's custody event stays after a retry
    succeeded, and a worker lost under a batch does not count against its jobs' attempts."""
    failed = sa.select(sa.func.count(sa.distinct(custody_events.c.item_sha256))).where(
        custody_events.c.action == "failure"
    )
    return _count(pg_url, failed)


def _wait_for_results(pg_url: str, at_least: int, driver: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 300
    while _results_stored(pg_url) < at_least:
        assert driver.poll() is None, "the driver ended before the fault could be injected"
        assert time.monotonic() < deadline, "no progress on the cluster"
        time.sleep(0.2)


def _check_everything_ended_once(pg_url: str, data: Path) -> set[str]:
    """Every job ended, every result stored once, custody intact; the nodes that worked."""
    store = Store.open(pg_url, data / "blobs")
    try:
        status = store.status()
        assert status.open_jobs == 0
        assert status.items == PHOTOS + 2
        with store.database.reader.connect() as connection:
            twice = connection.execute(
                sa.select(results.c.sha256, results.c.stage)
                .group_by(results.c.sha256, results.c.stage)
                .having(sa.func.count() > 1)
            ).all()
            provenance = connection.execute(sa.select(results.c.provenance)).scalars().all()
        assert twice == []
        done = {stage.stage: stage.counts.get("done", 0) for stage in status.stages}
        assert done["probe"] == PHOTOS + 2
        assert done["hashes"] == PHOTOS + 1  # photos and the video
        assert done["transcript"] == 2
        assert store.verify(fixity=True, actor="cluster-test").ok
        return {record["node"] for record in provenance}
    finally:
        store.close()


def test_a_mixed_backlog_runs_on_several_nodes(
    ray_cluster: LocalCluster, tmp_path: Path, pg_url: str
) -> None:
    data = _ingest(ray_cluster, tmp_path, pg_url)
    _finish(_driver(ray_cluster, data, pg_url))
    nodes = _check_everything_ended_once(pg_url, data)
    assert len(nodes) >= 2, f"all results came from {nodes}"


def test_the_driver_killed_and_started_again_loses_nothing(
    ray_cluster: LocalCluster, tmp_path: Path, pg_url: str
) -> None:
    data = _ingest(ray_cluster, tmp_path, pg_url)
    driver = _driver(ray_cluster, data, pg_url)
    _wait_for_results(pg_url, 10, driver)
    driver.send_signal(signal.SIGKILL)
    driver.wait(timeout=60)
    _finish(_driver(ray_cluster, data, pg_url))
    _check_everything_ended_once(pg_url, data)


def test_a_ray_worker_process_killed_mid_job_is_retried_without_duplicates(
    ray_cluster: LocalCluster, tmp_path: Path, pg_url: str
) -> None:
    data = _ingest(ray_cluster, tmp_path, pg_url)
    driver = _driver(ray_cluster, data, pg_url)
    _wait_for_results(pg_url, 5, driver)
    # A batch may end between the look and the kill, and its worker die idle with nothing to
    # retry: kill busy workers until a loss shows as a failure (or the backlog is done).
    deadline = time.monotonic() + 120
    while _retried_jobs(pg_url) == 0 and driver.poll() is None:
        assert time.monotonic() < deadline, "no busy worker could be killed mid-batch"
        if busy := _long_busy_actor_pids(ray_cluster):
            os.kill(busy[0], signal.SIGKILL)
            time.sleep(1.0)  # the driver sees the loss and commits its failures
    _finish(driver)
    _check_everything_ended_once(pg_url, data)
    assert _retried_jobs(pg_url) >= 1, "the killed workers' jobs should have been retried"


def test_a_driver_without_the_token_is_refused(
    ray_cluster: LocalCluster, tmp_path: Path, pg_url: str
) -> None:
    data = _ingest(ray_cluster, tmp_path, pg_url)
    env = _env(ray_cluster, pg_url)
    env.pop("RAY_AUTH_TOKEN_PATH")
    env["HOME"] = str(tmp_path)  # no ~/.ray/auth_token to fall back on
    refused = subprocess.run(
        _qarina(data, "run", "--address", ray_cluster.address),
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert refused.returncode != 0
    assert _results_stored(pg_url) == 0


def test_the_local_default_never_joins_a_running_cluster(
    ray_cluster: LocalCluster, tmp_path: Path, pg_url: str
) -> None:
    """`ray start` records its cluster for later `ray.init()` calls; `qarina run` without an
    address must start its own Ray instead of sending evidence to whatever cluster is up."""
    data = _ingest(ray_cluster, tmp_path, pg_url)
    script = (
        f"import json, ray; ray.init(address={ray_cluster.address!r});"
        " print(json.dumps([node['NodeID'] for node in ray.nodes()]))"
    )
    listing = subprocess.run(
        [sys.executable, "-c", script],
        env=ray_cluster.env, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    cluster_nodes = set(json.loads(listing.stdout.strip().splitlines()[-1]))
    _finish(subprocess.Popen(_qarina(data, "run"), env=_env(ray_cluster, pg_url), text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE))  # fmt: skip
    nodes = _check_everything_ended_once(pg_url, data)
    assert len(cluster_nodes) == 3
    assert not nodes & cluster_nodes, "the local run used the running cluster's nodes"


def test_a_worker_node_killed_mid_backlog_hands_its_jobs_to_the_other(
    ray_cluster: LocalCluster, tmp_path: Path, pg_url: str
) -> None:
    data = _ingest(ray_cluster, tmp_path, pg_url)
    driver = _driver(ray_cluster, data, pg_url)
    _wait_for_results(pg_url, 10, driver)
    os.kill(ray_cluster.worker_raylets[0], signal.SIGKILL)
    log = _finish(driver)
    _check_everything_ended_once(pg_url, data)
    # The driver saw actors lost with batches on them. A batch running there is retried (a
    # failure in custody); one that waited, or whose actor was still in setup, goes back to
    # the queue unstarted, leaving no trace but this.
    assert "actor lost" in log, "the killed node held no work"


def test_bench_cluster_at_toy_size(
    sqlite_config: QarinaConfig, tmp_path: Path, postgres_database: str
) -> None:
    """The benchmark's shape: both topologies really ran and the report says on what."""
    settings = sqlite_config.with_overrides(bench_pg_url=postgres_database)
    output = tmp_path / "cluster.json"
    result = bench_cluster(settings, output, photos=4, runs=1, size=(320, 240))
    assert json.loads(output.read_text()) == result
    for name, (workers, cpus) in TOPOLOGIES.items():
        figures = result["topologies"][name]
        assert (figures["worker_nodes"], figures["cpus_per_node"]) == (workers, cpus)
        assert figures["median_s"] > 0 and len(figures["runs_s"]) == 1
    assert result["two_nodes_over_one"] > 0
