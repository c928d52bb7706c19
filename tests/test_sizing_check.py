"""The plan's end-to-end check (issue 16) and the phone-shaped backlog it runs on."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pdqhash
import pytest
from PIL import Image

from pipelines.config import QarinaConfig
from pipelines.samples.mixed_backlog import make_backlog, media_seconds
from pipelines.sizing.check import Comparison, backlog_of, measured_efficiency, stage_split
from pipelines.sizing.costs import (
    BenchFile,
    Growth,
    StageCost,
    reserved_seconds,
    reserved_units,
)
from pipelines.sizing.plan import EFFICIENCY, Units, make_plan
from workers.hashes import hex_distance, pdq_hex


def _probe(path: Path) -> tuple[float, list[str]]:
    shown = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format=duration:stream=codec_type",
         "-of", "json", str(path)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    data = json.loads(shown)
    return float(data["format"]["duration"]), [s["codec_type"] for s in data["streams"]]


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.*"))}


def _pdq_at(video: Path, folder: Path, seconds: float) -> str:
    frame = folder / "frame.png"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-nostdin", "-ss", f"{seconds:g}", "-i", str(video),
         "-frames:v", "1", str(frame)],
        check=True, timeout=60,
    )  # fmt: skip
    with Image.open(frame) as image:
        code, _ = pdqhash.compute(np.asarray(image.convert("RGB")))
    return pdq_hex(code)


def test_phone_lengths_spread_over_the_range() -> None:
    lengths = [media_seconds(index, (10.0, 120.0)) for index in range(0, 400, 10)]
    assert all(10.0 <= value <= 120.0 for value in lengths)
    # Forty items cover every tenth of the range.
    assert {int((value - 10.0) // 11.0) for value in lengths} == set(range(10))


@pytest.mark.slow
def test_phone_backlog_has_speech_of_the_right_lengths(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    options = {"shape": "phone", "video_share": 0.2, "audio_share": 0.2, "sources": 3}
    shape = make_backlog(first, 15, workers=2, **options)  # type: ignore[arg-type]
    assert (shape.videos, shape.voice_notes, shape.photos + shape.reposts) == (3, 3, 9)
    videos = sorted(first.rglob("VID_*.mp4"))
    notes = sorted(p for p in first.rglob("PTT-*") if p.is_file())
    assert len(videos) == 3 and len(notes) == 3
    for path in videos:
        seconds, streams = _probe(path)
        assert 10.0 <= seconds <= 121.0, (path, seconds)
        assert "video" in streams and "audio" in streams
    for path in notes:
        seconds, streams = _probe(path)
        assert 2.0 <= seconds <= 60.5, (path, seconds)
        assert streams == ["audio"]
    assert shape.video_s > 0 and shape.audio_s > 0
    # Each video shows scenes of its own, moving in every frame: none matches another, as
    # most of a backlog's videos do not (all alike, they made matching quadratic).
    codes = [_pdq_at(path, tmp_path, 1.0) for path in videos]
    assert min(hex_distance(a, b) for i, a in enumerate(codes) for b in codes[i + 1 :]) > 64
    assert hex_distance(codes[0], _pdq_at(videos[0], tmp_path, 1.5)) > 0
    assert not list(first.rglob(".speech-*"))  # no scratch left beside the media
    # Deterministic from the index: the same files again, byte for byte.
    assert make_backlog(second, 15, workers=1, **options) == shape  # type: ignore[arg-type]
    assert _files(first) == _files(second)


def test_phone_backlog_holds_its_shares_at_any_size() -> None:
    from pipelines.samples.mixed_backlog import _kind_of, _Plan

    for start, count in ((0, 200), (1_000_000, 1000)):
        plan = _Plan(Path("."), 8, 4, 37, 19, "phone", 0.2, 0.1, start)
        kinds = [_kind_of(index, plan) for index in range(start, start + count)]
        assert abs(kinds.count("video") - 0.2 * count) <= 1
        assert abs(kinds.count("voice_note") - 0.1 * count) <= 1


def test_comparison_and_efficiency_arithmetic() -> None:
    # The plan divides the work by the cores at its margin.
    bench = BenchFile(
        machine={"cores": 2, "gpus": []},
        versions={},
        sample={},
        costs=[
            StageCost("probe", "photo", "cpu", 0.5, 0.0, None, 10, None),
            StageCost("probe", "video", "cpu", 1.0, 0.1, None, 3, None),
        ],
        growth=[Growth("photo", 1.0, 0.0, 1.0), Growth("video", 1.0, 0.0, 1.0)],
    )
    from pipelines.samples.mixed_backlog import BacklogShape

    shape = BacklogShape(
        photos=600, reposts=200, videos=200, voice_notes=0, sources=8, bytes=1, video_s=6000.0
    )
    backlog = backlog_of(shape)
    assert backlog.items == 1000
    assert backlog.mix == {"photo": 0.8, "video": 0.2}
    assert backlog.video_minutes == pytest.approx(0.5)
    plan = make_plan(backlog, [bench], cluster=Units(cpu=2, gpu=0), required={"photo": ("probe",)})
    # 800 photos x 0.5 + 200 videos x (1 + 0.1 x 30) = 400 + 800 = 1200 core-s.
    assert plan.seconds["cpu"] == pytest.approx(1200.0)
    assert plan.days is not None
    assert plan.days * 86_400 == pytest.approx(1200.0 / (2 * EFFICIENCY))
    close = Comparison(predicted_s=750.0, measured_s=680.0)
    assert close.error == pytest.approx(70 / 680)
    assert close.within
    far = Comparison(predicted_s=750.0, measured_s=600.0)
    assert far.error == pytest.approx(0.25)
    assert not far.within
    assert Comparison(480.0, 600.0).within  # exactly -20%
    assert measured_efficiency(reserved_s=960.0, cores=2, wall_s=600.0) == pytest.approx(0.8)
    with pytest.raises(ValueError):
        measured_efficiency(1.0, 0, 1.0)
    split = stage_split(
        plan,
        {("probe", "a"): 2.0, ("probe", "b"): 3.0, ("hashes", "a"): 1.0},
        {"a": "photo", "b": "video"},
    )
    by_stage = {row["stage"]: row for row in split}
    assert by_stage["probe"]["predicted_s"] == pytest.approx(1200.0)
    # Worker seconds count as the cores the stage's actor reserves: probe 0.25, hashes 1.
    assert by_stage["probe"]["measured_s"] == pytest.approx(5.0 * 0.25)
    assert by_stage["probe"]["measured_by_kind"] == {"photo": 0.5, "video": 0.75}
    assert by_stage["hashes"]["measured_s"] == pytest.approx(1.0)
    assert by_stage["hashes"]["predicted_s"] == 0.0  # measured but not planned: still shown


def test_worker_seconds_count_the_cores_the_stage_holds() -> None:
    """Ray admits an actor only when its reserved cores are free, so a plan must charge a
    stage's reservation, not its worker's wall-seconds: a 2-core transcription actor working
    10 s keeps 20 core-seconds from the rest (the reservations are the stages' own)."""
    assert reserved_units("transcript", "cpu") == 2.0
    assert reserved_units("transcript", "gpu") == 1.0
    assert reserved_units("probe", "cpu") == 0.25
    assert reserved_units("metadata", "cpu") == 0.75
    assert reserved_units("hashes", "cpu") == 1.0
    work = {("transcript", "a"): 10.0, ("probe", "a"): 4.0, ("transcript", "b"): 1.0}
    assert reserved_seconds(work) == pytest.approx(2 * 11.0 + 0.25 * 4.0)
    with pytest.raises(KeyError):
        reserved_units("no-such-stage", "cpu")


@pytest.mark.slow
def test_tiny_check_end_to_end(sqlite_config: QarinaConfig, tmp_path: Path) -> None:
    from pipelines.sizing.check import run_check

    json_out = tmp_path / "out" / "check.json"
    report = run_check(
        sqlite_config, sample_items=12, backlog_items=20, video_share=0.2, audio_share=0.2,
        video_range=(3.0, 8.0), audio_range=(2.0, 6.0), json_out=json_out,
    )  # fmt: skip
    written = json.loads(json_out.read_text())
    assert written["comparison"] == report["comparison"]
    assert written["comparison"]["predicted_s"] > 0
    assert written["comparison"]["measured_s"] > 0
    assert isinstance(written["comparison"]["within"], bool)
    assert written["measured"]["efficiency"] > 0
    assert written["machine"]["cores"] >= 1 and written["machine"]["cpu_model"]
    assert written["backlog"]["ingested"]["new_items"] == 20
    assert written["measured"]["jobs_failed"] == 0
    stages = {row["stage"] for row in written["stages"]}
    assert {"probe", "metadata", "hashes", "keyframes", "transcript"} <= stages
    assert all(row["measured_s"] > 0 for row in written["stages"] if row["predicted_s"] > 0)
