"""The real runtime: the `qarina` command on local Ray; a `kill -9` of the driver mid-backlog."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.samples import photos, videos

QARINA = str(Path(sys.executable).parent / "qarina")


def _qarina(data: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [QARINA, "--data", str(data), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _photos(folder: Path, count: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    exif = photos.exif_bytes(gps=(33.5138, 36.2765, 680.0))
    for index in range(count):
        photos.photo(folder / f"p{index:04d}.jpg", size=(96, 72), seed=index, exif=exif)
    return folder


def test_cli_round_trip(tmp_path: Path) -> None:
    """ingest, run, status, show and verify as an operator types them (sequential runner)."""
    data = tmp_path / "data"
    folder = _photos(tmp_path / "in", 3)
    runner = CliRunner()
    base = ["--data", str(data)]
    result = runner.invoke(
        app, [*base, "ingest", str(folder), "--source", "cli", "--request", "RFA-1"]
    )
    assert result.exit_code == 0, result.output
    assert "3 new items" in result.output
    assert runner.invoke(app, [*base, "run", "--sequential"]).exit_code == 0
    status = json.loads(
        runner.invoke(app, [*base, "status", "--json", "--request", "RFA-1"]).output
    )
    assert status["items"] == 3 and status["open_jobs"] == 0
    assert status["stages"]["metadata"] == {"done": 3}
    store_db = data / "qarina.sqlite3"
    engine = sa.create_engine(f"sqlite:///{store_db}")
    with engine.connect() as connection:
        sha = connection.execute(sa.text("SELECT sha256 FROM items LIMIT 1")).scalar_one()
    engine.dispose()
    shown = json.loads(runner.invoke(app, [*base, "show", sha, "--json"]).output)
    assert {"sha256", "kind", "acquisitions", "results", "failures", "artifacts"} <= set(shown)
    assert shown["kind"] == "photo" and set(shown["results"]) == {"probe", "metadata", "hashes"}
    assert runner.invoke(app, [*base, "verify", "--fixity"]).exit_code == 0
    blob = Path(shown["blob_path"])
    blob.chmod(0o644)
    blob.write_bytes(b"tampered")
    verdict = runner.invoke(app, [*base, "verify", "--fixity"])
    assert verdict.exit_code == 1 and sha in verdict.output


@pytest.mark.slow
def test_kill_9_of_the_driver_loses_nothing(tmp_path: Path) -> None:
    """Kill `qarina run` on Ray mid-backlog; a second run finishes, each result stored once."""
    data = tmp_path / "data"
    folder = _photos(tmp_path / "in", 160)
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    # A video brings the keyframes and hashes pools in too: more first actors than CPUs.
    videos.video_with_cuts(folder / "clip.mp4")
    assert _qarina(data, "ingest", str(folder), "--source", "crash").returncode == 0
    engine = sa.create_engine(f"sqlite:///{data / 'qarina.sqlite3'}")

    def scalar(query: str) -> int:
        with engine.connect() as connection:
            return int(connection.execute(sa.text(query)).scalar_one())

    driver = subprocess.Popen(
        [QARINA, "--data", str(data), "run"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 240
    while scalar("SELECT count(*) FROM results") < 20:
        assert driver.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "no results within the deadline"
        time.sleep(0.05)
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    assert scalar("SELECT count(*) FROM jobs WHERE state IN ('queued', 'leased')") > 0, (
        "killed too late"
    )

    second = _qarina(data, "run")
    assert second.returncode == 0, second.stderr
    assert scalar("SELECT count(*) FROM jobs WHERE state NOT IN ('done', 'failed', 'dead')") == 0
    assert scalar("SELECT count(*) FROM items") == 162
    assert scalar("SELECT count(*) FROM jobs WHERE stage = 'metadata' AND state = 'done'") == 161
    assert scalar("SELECT count(*) FROM jobs WHERE stage = 'hashes' AND state = 'done'") == 161
    assert scalar("SELECT count(*) FROM results") == scalar(
        "SELECT count(*) FROM jobs WHERE state = 'done'"
    )
    assert (
        scalar(
            "SELECT count(*) FROM (SELECT sha256, stage FROM results"
            " GROUP BY sha256, stage HAVING count(*) > 1)"
        )
        == 0
    )
    assert scalar("SELECT count(*) FROM custody_events WHERE action = 'result'") == scalar(
        "SELECT count(*) FROM results"
    )
    with engine.connect() as connection:
        nodes = {
            json.loads(row)["node"]
            for row in connection.execute(sa.text("SELECT provenance FROM results")).scalars()
        }
    engine.dispose()
    assert "sequential" not in nodes and all(len(node) == 56 for node in nodes)  # Ray node ids
    verdict = _qarina(data, "verify", "--fixity")
    assert verdict.returncode == 0, verdict.stdout


@pytest.mark.slow
def test_local_default_never_joins_a_stale_cluster(tmp_path: Path) -> None:
    """Ray's temp folder may name a cluster that is gone; `qarina run` starts its own anyway."""
    record = Path("/tmp/ray/ray_current_cluster")  # where `ray start` records its address
    saved = record.read_bytes() if record.exists() else None
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text("127.0.0.1:9\n")  # the discard port: nothing answers there
    try:
        data = tmp_path / "data"
        folder = _photos(tmp_path / "in", 2)
        assert _qarina(data, "ingest", str(folder), "--source", "s").returncode == 0
        result = subprocess.run(
            [QARINA, "--data", str(data), "run"],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
            env={key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"},
        )
        assert result.returncode == 0, result.stderr
        assert "committed 6 outcomes" in result.stdout  # probe, metadata, hashes per photo
    finally:
        if saved is None:
            record.unlink(missing_ok=True)
        else:
            record.write_bytes(saved)
