"""`qarina bench` on a tiny mixed sample: the bench file `qarina plan` reads, end to end.

The figures belong to full runs; this checks that every stage that ran is costed for every
kind it saw, that the file round-trips through the one cost model, and what it records.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from pipelines.bench import stages as bench_module
from pipelines.bench.backlog_mix import Observed
from pipelines.bench.ingest import _tool
from pipelines.bench.stages import (
    _growth,
    _openssl_sha256,
    _run_peers,
    _RunRecord,
    bench_stages,
    fit,
)
from pipelines.config import QarinaConfig
from pipelines.samples import audio, photos, videos
from pipelines.sizing.costs import BenchFile, load_bench, reserved_units


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


def _video(media_s: float) -> dict[str, Any]:
    return {"kind": "video", "bytes": 0, "media_s": media_s}


def test_growth_splits_fixed_and_per_media_second_parts() -> None:
    """Three videos whose blob, artifacts and rows grow linearly with length, one photo, and
    four rows no item owns (custody of the run): the video's figures come back as the lines,
    the shared rows spread evenly over the four items."""
    record = _RunRecord()
    for sha256, media_s in (("v1", 10.0), ("v2", 60.0), ("v3", 120.0)):
        record.items[sha256] = _video(media_s)
        record.growth[sha256] = [1000 + 500 * media_s, 200 + 10 * media_s, 5 + 0.1 * media_s]
    record.items["p1"] = {"kind": "photo", "bytes": 3000, "media_s": 0.0}
    record.growth["p1"] = [3000.0, 0.0, 4.0]
    owned = sum(values[2] for values in record.growth.values())
    record.rows_after = {"custody_events": int(owned) + 4, "items": 0}

    growth, _, fits = _growth([record, record], {"items": 0})

    by_kind = {entry.kind: entry for entry in growth}
    video = by_kind["video"]
    assert video.blob_bytes == pytest.approx(1000)
    assert video.blob_bytes_per_media_s == pytest.approx(500)
    assert video.artifact_bytes == pytest.approx(200)
    assert video.artifact_bytes_per_media_s == pytest.approx(10)
    assert video.db_rows == pytest.approx(5 + 1)  # one shared row per item
    assert video.db_rows_per_media_s == pytest.approx(0.1)
    assert by_kind["photo"].blob_bytes == 3000
    assert by_kind["photo"].blob_bytes_per_media_s == 0
    blob_fit = {"kind": "video", "quantity": "blob_bytes", "method": "least-squares", "items": 3}
    assert blob_fit in fits


def test_growth_of_one_item_falls_back_like_the_costs() -> None:
    record = _RunRecord()
    record.items["v1"] = _video(120.0)
    record.growth["v1"] = [1.2e6, 0.0, 12.0]
    record.rows_after = {"items": 12}

    (video,), _, fits = _growth([record], {})

    assert (video.blob_bytes, video.blob_bytes_per_media_s) == (0.0, 10_000.0)
    assert video.db_rows_per_media_s == pytest.approx(0.1)
    # An item that made no artifact: nothing per media second, and a flat zero.
    assert (video.artifact_bytes, video.artifact_bytes_per_media_s) == (0.0, 0.0)
    assert {fit_["method"] for fit_ in fits} == {"proportional"}


def test_openssl_hashes_the_originals_as_the_store_names_them(tmp_path: Path) -> None:
    originals = {}
    for index in range(3):
        path = tmp_path / f"blob-{index}"
        path.write_bytes(bytes([index]) * (1000 + index))
        originals[hashlib.sha256(path.read_bytes()).hexdigest()] = path

    hashed = _openssl_sha256(_tool("openssl"), originals)

    assert hashed["items"] == 3
    assert hashed["bytes"] == 3003
    assert hashed["digests_agree"] is True
    assert hashed["seconds"] > 0
    wrong = {"0" * 64: next(iter(originals.values()))}
    assert _openssl_sha256(_tool("openssl"), wrong)["digests_agree"] is False


def test_peers_are_recorded_by_name() -> None:
    """Each peer's figures keyed `NAME.figure`: PySceneDetect and `ffmpeg -f null` side by
    side on keyframes; openssl and ingest beside the hashes stage."""
    record = _RunRecord()
    record.items = {"p1": {"kind": "photo", "bytes": 2**20, "media_s": 0.0}, "v1": _video(20.0)}
    entry = {"items": 2, "setup_s": 0.0, "peer_s": 4.0, "stage_over_peer": 0.5}
    record.peers["keyframes"] = {"ffmpeg_decode": {**entry, "peer_s": 1.0}}
    record.openssl["photo"] = {"items": 1, "bytes": 2**20, "seconds": 0.01, "digests_agree": True}
    run = {"ingest_s": 0.2, "peers": {"keyframes": entry, "hashes": entry}}

    keyframes = _run_peers(run, record, "keyframes", "video", 40.0)
    hashes = _run_peers(run, record, "hashes", "photo", 0.0)

    assert keyframes is not None
    assert keyframes["pyscenedetect.seconds_per_item"] == 2.0
    assert keyframes["pyscenedetect.seconds_per_media_s"] == 0.1
    assert keyframes["ffmpeg_decode.seconds_per_item"] == 0.5
    assert hashes is not None
    assert hashes["pdqhash.seconds_per_item"] == 2.0
    assert hashes["openssl_sha256.seconds_per_mib"] == pytest.approx(0.01)
    assert hashes["ingest.seconds_per_item"] == pytest.approx(0.1)
    assert hashes["ingest.seconds_per_mib"] == pytest.approx(0.2)  # 1 MiB in the sample
    assert _run_peers({"peers": {}}, _RunRecord(), "probe", "photo", 0.0) is None


def test_address_joins_the_cluster_and_counts_its_units(
    sqlite_config: QarinaConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The plumbing of `--address`, without a cluster: every run is handed the address, and
    the machine's cores and GPUs are what Ray reported while joined, so figures per core and
    per GPU divide by the cluster's units (a real cluster run is the slow tests' business)."""
    sample = tmp_path / "sample"
    sample.mkdir()
    calls: list[str | None] = []

    def fake_run(*args: Any, inspect: Any, address: str | None) -> tuple[dict[str, Any], Observed]:
        calls.append(address)
        record: _RunRecord = inspect.keywords["record"]
        record.items = {"p1": {"kind": "photo", "bytes": 100, "media_s": 0.0}}
        record.growth = {"p1": [100.0, 0.0, 3.0]}
        record.rows_after = {"items": 3}
        record.cluster = {"cpus": 48.0, "gpus": 2.0, "nodes": 3, "accelerators": ["H100"]}
        seen = Observed(work={("hashes", "p1"): 0.5})
        run = {"ingest_s": 1.0, "processing_s": 2.0, "worker_s": 3.0, "wall_s": 4.0, "peers": {}}
        return run, seen

    monkeypatch.setattr(bench_module, "one_run", fake_run)
    monkeypatch.setattr(bench_module.whisper, "resolve", lambda *_: None)
    monkeypatch.setattr(bench_module, "gpu_info", list)

    bench = bench_stages(
        sqlite_config, sample=sample, stages=["hashes"], peer=False, runs=2,
        address="10.0.0.5:6379",
    )  # fmt: skip

    assert calls == ["10.0.0.5:6379", "10.0.0.5:6379"]
    assert bench.cores == 48
    assert bench.gpus == 2
    assert bench.machine["gpus"][0]["name"] == "H100"
    assert bench.machine["ray"]["address"] == "10.0.0.5:6379"
    assert bench.machine["ray"]["nodes"] == 3
    assert bench.sample["ray_address"] == "10.0.0.5:6379"
    assert bench.sample["per_unit"]["items_per_core_s"] == pytest.approx(1 / (2.0 * 48), abs=1e-6)
    assert bench.sample["per_unit"]["items_per_gpu_s"] == pytest.approx(1 / (2.0 * 2), abs=1e-6)
    # No worker of a cluster descends from this process: no peak is better than a wrong one.
    assert bench.costs[0].peak_rss_bytes is None


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
    assert "faster_whisper.seconds_per_item" in by_key["transcript", "audio"].peer
    hashes_peer = by_key["hashes", "photo"].peer
    assert hashes_peer is not None
    assert hashes_peer["pdqhash.seconds_per_item"] > 0
    assert hashes_peer["openssl_sha256.seconds_per_mib"] > 0
    assert hashes_peer["ingest.seconds_per_item"] > 0
    keyframes_peer = by_key["keyframes", "video"].peer
    assert keyframes_peer is not None
    assert keyframes_peer["pyscenedetect.seconds_per_item"] > 0
    assert keyframes_peer["ffmpeg_decode.seconds_per_item"] > 0
    assert bench.sample["ingest"]["openssl_sha256"]["photo"]["digests_agree"] is True
    assert bench.sample["ray_address"] == "local"
    assert bench.machine["ray"]["cpus"] >= 1
    assert by_key["hashes", "photo"].items == 5
    # Costs are the seconds each stage's actors held of the cores, not their workers' seconds.
    assert by_key["probe", "photo"].reserved == reserved_units("probe", "cpu") == 0.25
    assert by_key["transcript", "audio"].reserved == reserved_units(
        "transcript", by_key["transcript", "audio"].device
    )
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
    # One video: its bytes and keyframes rest on a line through the origin, per media second.
    assert growth["video"].blob_bytes_per_media_s > 0
    assert growth["video"].artifact_bytes_per_media_s > 0  # keyframes
    assert growth["audio"].db_rows_per_media_s > 0
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
