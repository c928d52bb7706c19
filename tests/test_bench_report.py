"""`qarina bench report` on a small store, and the generated phone backlog it is sized on."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from PIL import Image

from evidence.store import Store
from pipelines.bench.review_report import bench_review_report
from pipelines.samples.mixed_backlog import make_backlog
from tests.flows import ingest_and_run, sqlite_config_in


def test_the_bench_measures_the_site_its_pages_and_the_peer(
    tmp_path: Path, models_dir: Path
) -> None:
    media = tmp_path / "media"
    media.mkdir()
    make_backlog(media, 6, sources=2, workers=1)
    config = sqlite_config_in(tmp_path / "data", models_dir)
    store = Store.open(config.db_url, config.blob_root)
    try:
        shas = ingest_and_run(store, config, media)
    finally:
        store.close()
    output = tmp_path / "report.json"

    result = bench_review_report(config, output, runs=2, request=None)

    assert json.loads(output.read_text()) == result
    assert result["machine"]["cpu_count"] >= 1
    assert result["store"]["items"] == len(set(shas)) == 6
    assert sum(result["store"]["by_kind"].values()) == 6
    site = result["site"]
    assert len(site["seconds_all"]) == 2
    # Index, one items page, one clusters page and a page per item; two files a picture.
    assert site["pages"] == 3 + 6
    assert site["picture_files"] % 2 == 0 and site["picture_files"] >= 2 * 4
    assert 0 < site["largest_page_bytes"] < site["html_bytes"] < site["bytes"]
    assert result["render"]["item_pages_timed"] == 6
    assert result["peer"]["report_over_peer"] > 0


def test_the_generated_backlog_is_shaped_like_phone_intake(tmp_path: Path) -> None:
    shape = make_backlog(tmp_path, 40, sources=4, workers=2)

    files = sorted(path for path in tmp_path.rglob("*") if path.is_file())
    assert (shape.items, len(files)) == (40, 40)
    assert {path.parent.name for path in files} == {f"source-{n:02d}" for n in range(4)}
    assert (shape.photos, shape.reposts, shape.videos, shape.voice_notes) == (28, 9, 1, 2)
    assert shape.bytes == sum(path.stat().st_size for path in files)
    # Every file is an item of its own: re-posts are new bytes, voice notes differ.
    assert len({hashlib.sha256(path.read_bytes()).digest() for path in files}) == 40
    reposts = [path for path in files if "-WA" in path.name]
    with Image.open(reposts[0]) as picture:
        assert picture.format == "JPEG"
