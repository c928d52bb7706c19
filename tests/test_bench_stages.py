"""`qarina bench` on a tiny mixed sample: the bench file `qarina plan` reads, end to end.

The figures belong to full runs; this checks that every stage that ran is costed for every
kind it saw, that the file round-trips through the one cost model, and what it records.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.bench.stages import bench_stages, fit
from pipelines.config import QarinaConfig
from pipelines.samples import audio, photos, videos
from pipelines.sizing.costs import BenchFile, load_bench


def test_fit_splits_fixed_and_per_media_second_cost() -> None:
    per_item, per_media, method = fit([(2.0, 1.5), (10.0, 3.5), (30.0, 8.5)])
    assert method == "least-squares"
    assert per_item == pytest.approx(1.0)
    assert per_media == pytest.approx(0.25)


def test_fit_falls_back_when_lengths_cannot_be_told_apart() -> None:
    assert fit([(4.0, 2.0)]) == (0.0, 0.5, "proportional")
    assert fit([(0.0, 2.0), (0.0, 4.0)]) == (3.0, 0.0, "per-item")
    # Cost falling with length is noise on a small sample: a flat cost per item.
    assert fit([(1.0, 5.0), (10.0, 4.0), (20.0, 3.0)])[2] == "per-item"


@pytest.mark.slow
def test_bench_on_a_tiny_mixed_sample(sqlite_config: QarinaConfig, tmp_path: Path) -> None:
    sample = tmp_path / "sample"
    sample.mkdir()
    for index, size in enumerate(((640, 480), (480, 640), (800, 600), (320, 240), (1024, 768))):
        photos.photo(sample / f"IMG_{index:04d}.jpg", size=size)
    audio.speech(sample / "PTT-0005.m4a", f"{audio.GREETING} خمسة", voice_format="m4a-aac")
    spoken = audio.speech(tmp_path / "spoken.wav", f"{audio.GREETING} ستة")
    videos.video_with_speech(sample / "VID_0006.mp4", spoken)
    (sample / "notes.txt").write_text("not media")
    json_out, html_out = tmp_path / "out" / "bench.json", tmp_path / "out" / "bench.html"

    bench = bench_stages(sqlite_config, sample=sample, runs=1, json_out=json_out, html_out=html_out)

    assert load_bench(json_out) == bench
    assert BenchFile.from_json(json.loads(json_out.read_text())) == bench
    costed = {(cost.stage, cost.kind) for cost in bench.costs}
    for stage, kinds in {
        "probe": ("photo", "audio", "video"),
        "metadata": ("photo", "audio", "video"),
        "hashes": ("photo", "video"),
        "keyframes": ("video",),
        "transcript": ("audio", "video"),
    }.items():
        for kind in kinds:
            assert (stage, kind) in costed, (stage, kind)
    by_key = {(cost.stage, cost.kind): cost for cost in bench.costs}
    assert by_key["transcript", "audio"].seconds_per_media_s > 0
    assert by_key["transcript", "audio"].peer is not None
    assert by_key["hashes", "photo"].peer is not None
    assert by_key["hashes", "photo"].items == 5
    assert all(cost.device == "cpu" or cost.stage == "transcript" for cost in bench.costs)
    assert any(cost.peak_rss_bytes for cost in bench.costs)
    assert bench.machine["cores"] >= 1
    assert bench.machine["cpu_model"]
    assert isinstance(bench.machine["gpus"], list)
    assert bench.versions["whisper_model_sha256"]
    assert bench.versions["faster-whisper"]
    assert bench.sample["by_kind"]["photo"]["items"] == 5
    assert bench.sample["by_kind"]["audio"]["media_s"] > 0
    assert {"stage": "transcript", "kind": "audio", "method": "proportional", "items": 1} in (
        bench.sample["fits"]
    )
    growth = {entry.kind: entry for entry in bench.growth}
    assert growth["photo"].blob_bytes > 0
    assert growth["photo"].db_rows > 0
    assert growth["video"].artifact_bytes > 0  # keyframes
    assert "<table>" in html_out.read_text()


@pytest.mark.slow
def test_bench_costs_only_the_stages_asked_for(sqlite_config: QarinaConfig, tmp_path: Path) -> None:
    sample = tmp_path / "sample"
    sample.mkdir()
    photos.photo(sample / "IMG_0001.jpg", size=(320, 240))
    with pytest.raises(ValueError, match="unknown stages"):
        bench_stages(sqlite_config, sample=sample, stages=["nonesuch"])

    bench = bench_stages(sqlite_config, sample=sample, stages=["hashes"], peer=False)

    assert {(cost.stage, cost.kind) for cost in bench.costs} == {("hashes", "photo")}
    assert bench.costs[0].peer is None
