"""Smoke tests of `qarina bench tiny` at a toy size: distinct tiny photos with EXIF, every
item done on Ray, the plain-loop floor measured beside it, scratch data removed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from pipelines.bench.tiny import STAGES, bench_tiny, make_tiny_photos
from pipelines.config import QarinaConfig


def test_tiny_photos_are_distinct_small_and_carry_exif(tmp_path: Path) -> None:
    made = make_tiny_photos(tmp_path / "tiny", 8)
    files = sorted((tmp_path / "tiny").iterdir())
    assert made["count"] == len(files) == 8 and made["pngs"] == 2
    assert len({path.read_bytes() for path in files}) == 8
    for path in files:
        with Image.open(path) as image:
            assert max(image.size) <= 320 and min(image.size) >= 64
            assert image.getexif().get(0x010F) == "Qarina"  # Make


@pytest.mark.slow
def test_bench_tiny_measures_ray_against_the_floor(
    sqlite_config: QarinaConfig, tmp_path: Path
) -> None:
    output = tmp_path / "results" / "tiny.json"
    result = bench_tiny(sqlite_config, 6, output, runs=1)
    assert json.loads(output.read_text()) == result
    assert result["machine"]["cpus_usable"] and result["all_done"]
    assert not list(sqlite_config.data_dir.glob("bench-*"))
    (round_,) = result["runs"]
    ray_run, floor = round_["ray"], round_["floor"]
    assert ray_run["new_items"] == 6 and ray_run["jobs_committed"] == 6 * len(STAGES)
    assert set(ray_run["stage_work"]) == set(STAGES)
    assert ray_run["processing_items_per_s"] > 0 and ray_run["ingest_items_per_s"] > 0
    assert 0 <= ray_run["store_share"] <= 1
    assert floor["items_per_s"] > 0 and set(floor["stage_ms_per_item"]) == set(STAGES)
    assert result["target"]["processing_items_per_s"] == 100
