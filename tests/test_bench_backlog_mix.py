"""`qarina bench backlog-mix` on a small generated folder, and how two runs are compared.

The smoke test checks the report's shape, that every stage and peer really ran, and that no
file name reaches the report or the log; the figures belong to full runs on the shared corpus.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from pipelines.bench.backlog_mix import bench_backlog_mix, differing_items
from pipelines.config import QarinaConfig
from pipelines.samples import audio, hostile, photos, videos

A, B, C = "a" * 64, "b" * 64, "c" * 64


def test_differing_items_leaves_transcripts_aside_and_names_items_by_hash() -> None:
    before = {
        A: {"kind": "video", "stages": {"probe": "done", "transcript": "done"}},
        B: {"kind": "photo", "stages": {"probe": "done", "hashes": "done"}},
    }
    after = {
        A: {"kind": "video", "stages": {"probe": "done", "transcript": "skipped:no_speech"}},
        B: {"kind": "photo", "stages": {"probe": "done", "hashes": "failed:decode_error"}},
        C: {"kind": "other", "stages": {"probe": "done"}},
    }
    differing = differing_items(before, after)
    assert [item["sha256"] for item in differing] == [B, C]
    assert differing[1]["before"] is None
    assert differing_items(after, after) == []


@pytest.mark.slow
def test_bench_backlog_mix_on_a_small_mixed_folder(
    sqlite_config: QarinaConfig, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    folder = tmp_path / "mix"
    folder.mkdir()
    made = [
        photos.photo(folder / "IMG_0001.jpg", size=(320, 240)),
        videos.video_with_cuts(folder / "VID_0002.mp4", shots=2),
        audio.tone(folder / "voice-note-0003.wav", seconds=2.0),
        hostile.truncated_jpeg(folder / "broken-0004.jpg"),
    ]
    (folder / "letter-0005.txt").write_text("not media")
    # An earlier run that held none of these items: every item differs from it.
    earlier = tmp_path / "earlier.json"
    earlier.write_text(
        json.dumps({"machine": {"measured_at": "then"}, "median": {"wall_s": 100.0}, "items": {}})
    )
    output = tmp_path / "results" / "backlog-mix.json"

    result = bench_backlog_mix(sqlite_config, output, corpus=folder, peer=True, compare=earlier)

    text = output.read_text()
    assert json.loads(text) == result
    assert not list(sqlite_config.data_dir.glob("bench-*")), "scratch data is removed"
    shape = result["corpus"]
    assert shape["items"] == shape["files"] == 5
    assert shape["by_kind"]["video"]["items"] == shape["by_kind"]["audio"]["items"] == 1
    assert shape["audio_s"] == pytest.approx(2.0, abs=0.2)
    summary = result["median"]
    assert summary["wall_s"] > summary["processing_s"] > 0
    assert summary["items_per_s"] == pytest.approx(5 / summary["wall_s"], rel=0.01)
    stages = summary["stages"]
    assert stages["probe"]["jobs"] == 5
    assert {"keyframes", "hashes", "transcript"} <= set(stages)
    assert sum(stage["worker_share"] for stage in stages.values()) == pytest.approx(1, abs=0.01)
    assert stages["transcript"]["jobs"] == 2
    assert stages["transcript"]["audio_s"] > 0
    assert stages["transcript"]["realtime_factor"] > 0
    assert set(summary["peers"]) == {"hashes", "keyframes", "transcript"}
    assert summary["peers"]["keyframes"]["items"] == 1
    assert summary["peers"]["transcript"]["items"] == 2
    for peer in summary["peers"].values():
        assert peer["peer_s"] > 0 and peer["stage_over_peer"] > 0
    assert len(result["items"]) == 5
    assert all("probe" in item["stages"] for item in result["items"].values())
    assert result["unstable_items"] == []
    compared = result["compare"]
    assert compared["speedup"] == pytest.approx(100.0 / summary["wall_s"], rel=0.01)
    assert {item["sha256"] for item in compared["differing_items"]} == set(result["items"])
    for name in [path.name for path in made] + ["letter-0005.txt"]:
        assert name not in text
        assert name not in caplog.text
