"""A stage that always runs out of memory ends dead with resource_limit after bounded retries.

Ray retries tasks killed by its memory monitor without limit by default; Qarina's actors are
never restarted and their lost batches come back to the job table, whose attempts are
bounded. The run is real: local Ray, its memory monitor, a worker that keeps allocating.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from evidence.schema import jobs
from pipelines.samples import photos

pytestmark = pytest.mark.slow


def _memory_in_use_fraction() -> tuple[float, int]:
    fields = {}
    with open("/proc/meminfo", encoding="ascii") as meminfo:
        for line in meminfo:
            name, value = line.split(":", 1)
            fields[name] = int(value.split()[0]) * 1024
    total = fields["MemTotal"]
    return (total - fields["MemAvailable"]) / total, total


def test_a_stage_that_always_runs_out_of_memory_ends_dead_with_resource_limit(
    tmp_path: Path,
) -> None:
    used, total = _memory_in_use_fraction()
    # Ray's monitor fires once the node passes this share of its memory: 1 GiB above now.
    threshold = min(0.95, used + 1024**3 / total)
    photo = photos.photo(tmp_path / "p.jpg", size=(64, 48), seed=1)
    data = tmp_path / "data"
    data.mkdir()
    env = {
        **os.environ,
        "RAY_memory_usage_threshold": f"{threshold:.4f}",
        "RAY_memory_monitor_refresh_ms": "100",
    }
    env.pop("RAY_ADDRESS", None)
    driver = subprocess.run(
        [sys.executable, "-m", "tests.memory_hog", str(data), str(photo)],
        env=env, capture_output=True, text=True, timeout=600, check=False,
        cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    assert driver.returncode == 0, driver.stderr[-3000:]
    engine = sa.create_engine(f"sqlite:///{data}/store.sqlite3")
    try:
        with engine.connect() as connection:
            hog = connection.execute(sa.select(jobs).where(jobs.c.stage == "hog")).one()
    finally:
        engine.dispose()
    assert (hog.state, hog.error_reason) == ("dead", "resource_limit")
    assert hog.attempts == hog.max_attempts == 3
