"""Behaviour of the keyframes stage on generated videos with cuts at known frames."""

from __future__ import annotations

import hashlib
import itertools
import os
from pathlib import Path
from typing import Any, ClassVar

import av
import pytest
from PIL import Image

from evidence.store import Store
from pipelines.config import QarinaConfig
from pipelines.samples import audio, hostile, videos
from tests.flows import DEFAULT_KEYS, ingest_and_run
from tests.stage_contract import StageContract
from workers.base import FailureReason, Kind, StageError, StageInput, StageSkipped
from workers.keyframes import KeyframesConfig, KeyframesResult, KeyframesStage
from workers.probe import ProbeResult


def _item(path: Path, rotation: int | None = None) -> StageInput:
    """The video alone, as at a prompt; with a probe result only to say its rotation."""
    if rotation is None:
        return StageInput("0" * 64, path, Kind.VIDEO)
    probe = ProbeResult(
        kind="video", mime="video/mp4", format="mp4", size_bytes=0, width=None, height=None,
        duration_s=None, has_video=True, has_audio=False, rotation=rotation, flags=[], ffprobe=None,
    )  # fmt: skip
    return StageInput("0" * 64, path, Kind.VIDEO, {"probe": probe.to_json()})


def _run(
    path: Path, tmp_path: Path, config: KeyframesConfig | None = None, rotation: int | None = None
) -> tuple[KeyframesResult, Path]:
    workdir = tmp_path / "work"
    workdir.mkdir(parents=True, exist_ok=True)
    output = KeyframesStage(config).run(_item(path, rotation), workdir)
    assert len(output.artifacts) == len(output.result.frames)
    for frame, artifact in zip(output.result.frames, output.artifacts, strict=True):
        assert frame.artifact == hashlib.sha256(artifact.path.read_bytes()).hexdigest()
        assert (artifact.media_type, artifact.role) == ("image/jpeg", "keyframe")
        assert artifact.meta == {"t": frame.t, "frame_index": frame.frame_index}
        with Image.open(artifact.path) as image:
            assert image.size == (frame.width, frame.height)
    return output.result, workdir


def _cut_frames(result: KeyframesResult, kind: str | None = None) -> list[int]:
    return [cut.frame_index for cut in result.cuts if kind is None or cut.kind == kind]


def _phone(gop: int) -> tuple[str, ...]:
    """x264 options for what phones write: a keyframe every `gop` frames and nowhere else
    (no scene-cut keyframes), no B-frames."""
    return ("-g", str(gop), "-sc_threshold", "0", "-bf", "0")


class TestKeyframesContract(StageContract):
    stage_class = KeyframesStage
    config: ClassVar[KeyframesConfig] = KeyframesConfig()
    expected_name = "keyframes"

    def supported_item(self, tmp_path: Path) -> StageInput:
        return _item(videos.video_with_cuts(tmp_path / "item", audio=None))

    def unsupported_item(self, tmp_path: Path) -> StageInput:
        return _item(audio.tone(tmp_path / "item"))


@pytest.mark.parametrize(
    "encoder",
    [
        pytest.param((), id="scene-cut-keyframes"),
        pytest.param(("-g", "12", "-sc_threshold", "0"), id="fixed-gop-b-frames"),
        pytest.param(_phone(30), id="fixed-gop-no-b-frames"),
    ],
)
def test_hard_cuts_are_found_at_their_frames(tmp_path: Path, encoder: tuple[str, ...]) -> None:
    path = videos.video_with_hard_cuts(tmp_path / "item", (20, 15, 25, 30), encoder=encoder)
    result, _ = _run(path, tmp_path)
    cuts = _cut_frames(result, "hard")
    assert len(cuts) == 3
    for found, expected in zip(cuts, (20, 35, 60), strict=True):
        assert abs(found - expected) <= 1
    assert [round(shot.start, 2) for shot in result.shots] == [0.0, 0.8, 1.4, 2.4]
    assert result.shots[-1].end == pytest.approx(3.6, abs=0.05)
    assert result.frames_total == 90
    assert sorted({frame.shot for frame in result.frames}) == [0, 1, 2, 3]
    assert result.decoder == "cpu"
    assert result.flags == []
    assert result.corrupt_frames == 0


def test_a_stretch_is_left_once_its_cut_is_found(tmp_path: Path) -> None:
    """Keyframes 4 s apart, the first two around a cut at frame 40: once the cut is
    confirmed and the frame then decoded looks like the keyframe at 100, frames up to 100
    are not decoded. The still shot from 100 to 200 is not decoded at all."""
    path = videos.video_with_hard_cuts(tmp_path / "item", (40, 210), encoder=_phone(100))
    result, _ = _run(path, tmp_path)
    assert _cut_frames(result) == [40]
    assert result.frames_total == 250
    # The three keyframes, frames 0-100 and the last stretch (200-249, always decoded)
    # would be 154 frames.
    assert result.frames_decoded < 150


@pytest.mark.parametrize("gop", [60, 30, 35])
def test_a_dissolve_right_after_a_cut_is_found(tmp_path: Path, gop: int) -> None:
    """A cut and a dissolve (frames 35-49) within one phone GOP, in the GOP after the cut's,
    or starting on the keyframe that ends the cut's GOP: leaving a stretch after its cut
    must not cost the dissolve."""
    path = videos.video_with_cut_then_dissolve(tmp_path / "item", encoder=_phone(gop))
    result, _ = _run(path, tmp_path)
    hard, dissolve = result.cuts
    assert (hard.frame_index, hard.kind) == (20, "hard")
    assert dissolve.kind == "gradual" and abs(dissolve.frame_index - 42) <= 4
    assert result.frames_total == 135


def test_fade_and_dissolve_are_gradual_cuts(tmp_path: Path) -> None:
    result, _ = _run(videos.video_with_fade_and_dissolve(tmp_path / "item"), tmp_path)
    assert [cut.kind for cut in result.cuts] == ["gradual", "gradual"]
    fade, dissolve = _cut_frames(result)
    # A gradual transition has no single cut frame: its middle within a quarter of its length.
    assert abs(fade - 50) <= 3
    assert abs(dissolve - 100) <= 6
    assert len(result.shots) == 3


def test_static_shot_gets_a_frame_per_interval(tmp_path: Path) -> None:
    path = videos.static_video(tmp_path / "item", seconds=7)
    result, _ = _run(path, tmp_path, KeyframesConfig(interval_s=2.0))
    assert result.cuts == []
    [shot] = result.shots
    assert shot.start == 0.0 and shot.end == pytest.approx(7.0, abs=0.1)
    times = [frame.t for frame in result.frames]
    assert len(times) == 4
    assert all(later - earlier >= 1.0 for earlier, later in itertools.pairwise(times))
    assert result.frames_decoded < result.frames_total, "a static video is not decoded whole"


def test_frame_count_is_bounded(tmp_path: Path) -> None:
    path = videos.video_with_hard_cuts(tmp_path / "item", (10, 12, 14, 16, 18, 10))
    result, workdir = _run(path, tmp_path, KeyframesConfig(max_frames=3))
    assert len(result.shots) == 6
    assert len(result.frames) == 3
    assert "frame_limit_reached" in result.flags
    assert len(list(workdir.glob("*.jpg"))) == 3
    # The longest shots keep their frames.
    assert sorted(frame.shot for frame in result.frames) == [2, 3, 4]


def test_variable_frame_rate_times_come_from_timestamps(tmp_path: Path) -> None:
    result, _ = _run(videos.vfr_video_with_cut(tmp_path / "item"), tmp_path)
    [cut] = result.cuts
    assert cut.frame_index == 30 and cut.t == pytest.approx(7.0)
    assert result.duration_s == pytest.approx(12.0, abs=0.6)
    with av.open(str(tmp_path / "item")) as container:
        stream = container.streams.video[0]
        times = sorted(
            float(packet.pts * stream.time_base)
            for packet in container.demux(stream)
            if packet.pts is not None
        )
    for frame in result.frames:
        assert frame.t == pytest.approx(times[frame.frame_index])


def test_rotation_from_the_probe_is_applied(tmp_path: Path) -> None:
    result, _ = _run(videos.rotated_video(tmp_path / "item", 90), tmp_path, rotation=90)
    assert {(frame.width, frame.height) for frame in result.frames} == {(48, 64)}


def test_ten_bit_odd_size_frames_are_correct(tmp_path: Path) -> None:
    result, workdir = _run(videos.ten_bit_odd_size_video(tmp_path / "item"), tmp_path)
    assert {(frame.width, frame.height) for frame in result.frames} == {(97, 55)}
    with Image.open(next(workdir.glob("*.jpg"))) as image:
        red, green, blue = image.convert("RGB").resize((1, 1)).getpixel((0, 0))  # type: ignore[misc]
    # testsrc2 is colourful: a 10-bit misread shows as a dark or green-only picture.
    assert max(red, green, blue) > 60 and max(red, blue) > 40


def test_sample_aspect_ratio_is_honoured(tmp_path: Path) -> None:
    result, _ = _run(videos.anamorphic_video(tmp_path / "item"), tmp_path)
    assert {(frame.width, frame.height) for frame in result.frames} == {(160, 90)}


def test_truncated_video_keeps_its_frames_and_is_flagged(tmp_path: Path) -> None:
    whole = videos.video_with_hard_cuts(tmp_path / "whole", (25, 25, 25))
    result, _ = _run(hostile.truncated_copy(whole, tmp_path / "item", keep=0.85), tmp_path)
    assert "truncated" in result.flags
    assert result.frames
    assert 0 < result.frames_total < 75
    assert _cut_frames(result)[:1] == [25]


def test_unreadable_video_is_corrupt_media(tmp_path: Path) -> None:
    with pytest.raises(StageError) as caught:
        KeyframesStage().run(_item(hostile.corrupt_video(tmp_path / "item")), tmp_path)
    assert caught.value.reason is FailureReason.CORRUPT_MEDIA


def test_no_video_stream_is_skipped(tmp_path: Path) -> None:
    with pytest.raises(StageSkipped) as caught:
        KeyframesStage().run(_item(audio.tone(tmp_path / "item")), tmp_path)
    assert caught.value.reason == "no_video"


def test_sharpest_candidate_is_chosen(tmp_path: Path) -> None:
    result, _ = _run(videos.video_sharpening_mid_shot(tmp_path / "item"), tmp_path)
    assert _cut_frames(result) == [25]
    second = [frame for frame in result.frames if frame.shot == 1]
    assert len(second) == 1
    # The shot opens blurred for 0.5 s (frames 25-37): its first frame must not win.
    assert second[0].frame_index > 38


def test_a_run_over_its_time_budget_is_a_tool_timeout(tmp_path: Path) -> None:
    """PyAV decodes in-process, so the stage enforces its own wall-clock budget."""
    video = videos.video_with_hard_cuts(tmp_path / "clip.mp4", (15, 15))
    spent = KeyframesConfig(min_budget_s=0.0, budget_per_media_s=0.0)
    with pytest.raises(StageError) as raised:
        KeyframesStage(spent).run(_item(video), tmp_path)
    assert raised.value.reason is FailureReason.TOOL_TIMEOUT


def test_artifacts_land_in_the_store(tmp_path: Path, sqlite_config: QarinaConfig) -> None:
    folder = tmp_path / "intake"
    folder.mkdir()
    videos.video_with_hard_cuts(folder / "clip.mp4", (15, 15))
    store = Store.open(sqlite_config.db_url, sqlite_config.blob_root)
    try:
        [sha] = ingest_and_run(store, sqlite_config, folder)
        record: dict[str, Any] | None = store.show(sha, DEFAULT_KEYS)
        assert record is not None
        data = record["results"]["keyframes"]["data"]
        stored = {artifact["sha256"] for artifact in record["artifacts"]}
        assert len(data["shots"]) == 2
        assert data["frames"] and {frame["artifact"] for frame in data["frames"]} <= stored
    finally:
        store.close()


@pytest.mark.gpu
@pytest.mark.skipif(not os.path.exists("/dev/nvidia0"), reason="needs a CUDA device")
def test_nvdec_finds_the_same_cuts(tmp_path: Path) -> None:
    path = videos.video_with_hard_cuts(tmp_path / "item", (20, 15, 25, 30))
    cpu, _ = _run(path, tmp_path / "cpu", KeyframesConfig(hwaccel="none"))
    gpu, _ = _run(path, tmp_path / "gpu", KeyframesConfig(hwaccel="auto"))
    assert gpu.decoder == "nvdec"
    assert len(_cut_frames(gpu)) == len(_cut_frames(cpu))
    for found, expected in zip(_cut_frames(gpu), _cut_frames(cpu), strict=True):
        assert abs(found - expected) <= 1
