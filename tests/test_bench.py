"""Smoke tests of `qarina bench`: each benchmark runs at a toy size, writes its JSON, cleans up.

They check the shape and honesty of the report (peers measured, machine recorded, every item
done, scratch data removed), not the speed: speed belongs to the full-size runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa

from pipelines.bench.api import bench_api
from pipelines.bench.backlog import bench_backlog
from pipelines.bench.ingest import bench_ingest
from pipelines.bench.intake import bench_intake
from pipelines.bench.photos import bench_photos, make_photos
from pipelines.config import QarinaConfig


def _assert_report(result: dict[str, object], output: Path, config: QarinaConfig) -> None:
    assert json.loads(output.read_text()) == result
    machine = result["machine"]
    assert isinstance(machine, dict)
    assert machine["cpu_model"] and machine["cpus_usable"] and machine["python"]
    assert machine["data_dir"]["fs_type"]
    # Generated data lives in a scratch folder inside the data folder, removed afterwards.
    assert not list(config.data_dir.glob("bench-*"))


def test_bench_ingest_compares_with_openssl_and_dd(
    sqlite_config: QarinaConfig, tmp_path: Path
) -> None:
    output = tmp_path / "results" / "ingest.json"
    result = bench_ingest(sqlite_config, 4, 2, output)
    _assert_report(result, output, sqlite_config)
    assert len(result["runs"]) == 2
    assert result["all_digests_agree"]
    for name in ("openssl", "hashlib", "ingest_disk", "dd"):
        assert result["median"][name]["mb_per_s"] > 0
    assert result["ratios"]["ingest_disk_to_openssl"] > 0
    assert result["ratios"]["ingest_disk_to_dd"] > 0
    assert result["target"]["ingest_to_openssl"] == 0.5


def test_bench_api_registers_every_upload_once(sqlite_config: QarinaConfig, tmp_path: Path) -> None:
    output = tmp_path / "results" / "api.json"
    result = bench_api(sqlite_config, output, clients=3, uploads=4, runs=1)
    _assert_report(result, output, sqlite_config)
    assert result["exactly_once"]
    (run,) = result["runs"]
    concurrent = run["concurrent"]
    assert concurrent["store"] == {
        "acquisitions": 12, "lost": 0, "duplicated": 0, "unexpected": 0, "keys_distinct": 12,
    }  # fmt: skip
    # One retry per client (its first upload), each answered with the first registration.
    assert (concurrent["retries_sent"], concurrent["retries_not_replayed"]) == (3, 0)
    assert run["sequential"]["store"]["acquisitions"] == run["ingest"]["new_items"] == 12
    median = result["median"]
    assert median["concurrent"]["p99_ms"] >= median["concurrent"]["median_ms"] > 0
    assert median["ratios"]["concurrent_to_sequential"] > 0
    assert median["ratios"]["concurrent_to_ingest"] > 0


def test_bench_intake_takes_every_dropped_file_once(
    sqlite_config: QarinaConfig, tmp_path: Path
) -> None:
    output = tmp_path / "results" / "intake.json"
    result = bench_intake(sqlite_config, output, files=40, runs=1)
    _assert_report(result, output, sqlite_config)
    assert result["exactly_once"] and result["all_moved"]
    (round_,) = result["runs"]
    assert round_["watch"]["acquisitions"] == round_["ingest"]["new_items"] == 40
    figures = result["median"]
    assert figures["watch_files_per_s"] > 0 and figures["watch_to_ingest_rate"] > 0
    assert 0 < figures["latency_median_s"] <= figures["latency_p99_s"]


def test_bench_backlog_on_sqlite(sqlite_config: QarinaConfig, tmp_path: Path) -> None:
    output = tmp_path / "results" / "backlog.json"
    result = bench_backlog(sqlite_config, 2_000, output)
    _assert_report(result, output, sqlite_config)
    assert list(result["backends"]) == ["sqlite"]
    figures = result["backends"]["sqlite"]
    assert figures["queued_before_lease"] == 2_000
    assert figures["enqueue_bulk"]["jobs"] + figures["register_per_item"]["items"] == 2_000
    assert figures["lease_commit_cycle"]["jobs_committed"] == 2_000
    assert figures["status"]["under_1s"]
    # Each committed probe queued a photo's follow-ups (metadata, hashes): the table holds all.
    follow_ups = figures["lease_commit_cycle"]["follow_ups_per_job"]
    assert follow_ups == 2
    assert figures["status"]["jobs_in_table"] == 2_000 * (1 + follow_ups)


def _bench_databases(url: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            names = connection.execute(
                sa.text("SELECT datname FROM pg_database WHERE datname LIKE 'qarina_bench_%'")
            ).scalars()
            return set(names)
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_bench_backlog_on_postgresql_drops_its_database(
    sqlite_config: QarinaConfig, tmp_path: Path, postgres_database: str
) -> None:
    # The server may hold another run's leftovers (one killed mid-bench): only ours count.
    before = _bench_databases(postgres_database)
    result = bench_backlog(sqlite_config, 200, tmp_path / "backlog.json", pg_url=postgres_database)
    assert result["backends"]["postgresql"]["lease_commit_cycle"]["jobs_committed"] == 200
    concurrent = result["backends"]["postgresql"]["lease_commit_concurrent"]
    assert concurrent["workers"] == 8
    assert concurrent["jobs_committed"] == concurrent["jobs_wanted"] == 200
    assert _bench_databases(postgres_database) - before == set()


def test_generated_photos_are_distinct(tmp_path: Path) -> None:
    made = make_photos(tmp_path / "photos", 6, (320, 240))
    files = sorted((tmp_path / "photos").iterdir())
    assert made["count"] == len(files) == 6
    assert len({path.read_bytes() for path in files}) == 6


@pytest.mark.slow
def test_bench_photos_ray_against_sequential(sqlite_config: QarinaConfig, tmp_path: Path) -> None:
    output = tmp_path / "results" / "photos.json"
    result = bench_photos(sqlite_config, 6, output, runs=1, size=(640, 480))
    _assert_report(result, output, sqlite_config)
    assert result["all_done"]
    (round_,) = result["runs"]
    for runner in ("ray", "sequential"):
        assert round_[runner]["new_items"] == 6
        assert set(round_[runner]["stage_work"]) == {"probe", "metadata"}
    assert round_["ray"]["ray_startup_s"] > 0
    assert set(result["median"]["ray_overhead"]) == {"incl_startup", "excl_startup"}
