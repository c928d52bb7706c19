"""Behaviour of the metadata stage on generated media, run directly (no Ray, no store)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar

import pytest

from pipelines.samples import audio, hostile, photos, videos
from tests.stage_contract import StageContract
from workers.base import (
    FailureReason,
    Kind,
    StageError,
    StageInput,
    StageSkipped,
    result_to_json,
)
from workers.metadata import MetadataConfig, MetadataResult, MetadataStage
from workers.probe import ProbeStage
from workers.tools import ToolLimits


def _item(path: Path) -> StageInput:
    """The item as the pipeline hands it over: kind and probe result from the probe stage."""
    workdir = path.parent / "probe-work"
    workdir.mkdir(exist_ok=True)
    output = ProbeStage().run(StageInput("0" * 64, path, Kind.OTHER), workdir)
    probed = result_to_json(output.result)
    return StageInput("0" * 64, path, Kind(probed["kind"]), {"probe": probed})


@pytest.fixture(scope="module")
def metadata() -> Iterator[MetadataStage]:
    stage = MetadataStage()
    stage.setup()
    yield stage
    stage.teardown()


def _run(stage: MetadataStage, path: Path) -> MetadataResult:
    workdir = path.parent / "work"
    workdir.mkdir(exist_ok=True)
    return stage.run(_item(path), workdir).result


class TestMetadataContract(StageContract):
    stage_class = MetadataStage
    config: ClassVar[MetadataConfig] = MetadataConfig()
    expected_name = "metadata"

    def supported_item(self, tmp_path: Path) -> StageInput:
        return _item(photos.striped(tmp_path / "item", size=(64, 48), exif=photos.exif_bytes()))

    def unsupported_item(self, tmp_path: Path) -> StageInput:
        return StageInput("0" * 64, hostile.html_page(tmp_path / "clip.mp4"), Kind.OTHER)


def test_exif_fields_are_normalised_with_offset(metadata: MetadataStage, tmp_path: Path) -> None:
    exif = photos.exif_bytes(
        make=" Canon ",
        model="EOS 5D\x00",
        datetime_original="2023:11:02 08:15:30",
        offset="+03:00",
        orientation=6,
    )
    path = photos.striped(tmp_path / "item", exif=exif)
    result = _run(metadata, path)
    assert result.captured_at == "2023-11-02T08:15:30+03:00"
    assert result.captured_at_source == "EXIF:DateTimeOriginal"
    assert result.device == {"make": "Canon", "model": "EOS 5D"}
    assert (result.width, result.height, result.orientation) == (640, 480, 6)
    assert result.rotation is None and result.duration_s is None
    assert result.flags == []


def test_date_without_offset_stays_naive(metadata: MetadataStage, tmp_path: Path) -> None:
    path = photos.striped(tmp_path / "item", exif=photos.exif_bytes(offset=None))
    result = _run(metadata, path)
    assert result.captured_at == "2024-03-05T14:30:15"


def test_gps_signs_south_and_west(metadata: MetadataStage, tmp_path: Path) -> None:
    exif = photos.exif_bytes(gps=(-33.8568, -70.6483, -12.5))
    path = photos.striped(tmp_path / "item", exif=exif)
    gps = _run(metadata, path).gps
    assert gps is not None
    assert gps["lat"] == pytest.approx(-33.8568, abs=1e-5)
    assert gps["lon"] == pytest.approx(-70.6483, abs=1e-5)
    assert gps["alt"] == pytest.approx(-12.5, abs=1e-3)


def test_gps_north_east_without_altitude(metadata: MetadataStage, tmp_path: Path) -> None:
    exif = photos.exif_bytes(gps=(36.2021, 37.1343, None))
    path = photos.striped(tmp_path / "item", exif=exif)
    gps = _run(metadata, path).gps
    assert gps is not None
    assert gps["lat"] == pytest.approx(36.2021, abs=1e-5)
    assert gps["lon"] == pytest.approx(37.1343, abs=1e-5)
    assert gps["alt"] is None


def test_video_gps_and_utc_date(metadata: MetadataStage, tmp_path: Path) -> None:
    result = _run(metadata, videos.video_with_location(tmp_path / "item", -12.3456, 45.6789))
    assert result.gps is not None
    assert result.gps["lat"] == pytest.approx(-12.3456, abs=1e-4)
    assert result.gps["lon"] == pytest.approx(45.6789, abs=1e-4)
    assert result.gps["alt"] == 0.0, "the 3GPP loci box always carries an altitude"
    # The movie header's date is UTC by specification.
    assert result.captured_at == "2024-05-01T10:00:00+00:00"
    assert result.captured_at_source == "QuickTime:CreateDate"
    assert result.codecs == ["h264"]
    assert result.duration_s == pytest.approx(0.5, abs=0.1)


def test_video_android_device_keys(metadata: MetadataStage, tmp_path: Path) -> None:
    path = videos.video_with_location(
        tmp_path / "item", 33.5138, 36.2765, make="Google", model="Pixel 7"
    )
    result = _run(metadata, path)
    assert result.device == {"make": "Google", "model": "Pixel 7"}
    assert result.gps is not None
    assert result.gps["lat"] == pytest.approx(33.5138, abs=1e-3)
    assert result.gps["lon"] == pytest.approx(36.2765, abs=1e-3)


def test_video_rotation_gives_orientation(metadata: MetadataStage, tmp_path: Path) -> None:
    result = _run(metadata, videos.rotated_video(tmp_path / "item", 90))
    assert (result.rotation, result.orientation) == (90, 6)


def test_audio_codecs_and_duration(metadata: MetadataStage, tmp_path: Path) -> None:
    note = audio.speech(tmp_path / "item", "مرحبا بكم", voice_format="ogg-opus")
    result = _run(metadata, note)
    assert result.codecs == ["opus"]
    assert result.duration_s is not None and result.duration_s > 0
    assert result.orientation is None


def test_photo_without_exif_is_flagged(metadata: MetadataStage, tmp_path: Path) -> None:
    result = _run(metadata, photos.striped(tmp_path / "item", size=(64, 48)))
    assert "no_exif" in result.flags
    assert result.captured_at is None and result.device is None and result.gps is None


def test_future_date_is_flagged(metadata: MetadataStage, tmp_path: Path) -> None:
    exif = photos.exif_bytes(datetime_original="2099:09:29 10:10:10")
    path = photos.striped(tmp_path / "item", exif=exif)
    result = _run(metadata, path)
    assert "date_in_future" in result.flags
    assert result.captured_at == "2099-09-29T10:10:10"


def test_recent_date_without_offset_is_not_future(metadata: MetadataStage, tmp_path: Path) -> None:
    now = datetime.now(UTC).strftime("%Y:%m:%d %H:%M:%S")
    path = photos.striped(tmp_path / "item", exif=photos.exif_bytes(datetime_original=now))
    result = _run(metadata, path)
    assert "date_in_future" not in result.flags


def test_invalid_date_is_flagged_and_skipped(metadata: MetadataStage, tmp_path: Path) -> None:
    exif = photos.exif_bytes(
        datetime_original="2023:13:45 25:61:00",
        create_date="2023:11:02 08:15:30",
    )
    path = photos.striped(tmp_path / "item", exif=exif)
    result = _run(metadata, path)
    assert "date_invalid" in result.flags
    assert result.captured_at_source == "EXIF:CreateDate"


def test_zero_date_is_no_date(metadata: MetadataStage, tmp_path: Path) -> None:
    exif = photos.exif_bytes(datetime_original="0000:00:00 00:00:00")
    path = photos.striped(tmp_path / "item", exif=exif)
    result = _run(metadata, path)
    assert result.captured_at is None
    assert "date_invalid" not in result.flags


def test_disagreeing_dates_are_flagged(metadata: MetadataStage, tmp_path: Path) -> None:
    # Capture at 08:15 +03:00 is 05:15 UTC; the GPS receiver says 19:00 UTC.
    exif = photos.exif_bytes(
        datetime_original="2023:11:02 08:15:30",
        offset="+03:00",
        gps=(36.2, 37.1, None),
        gps_datetime=("2023:11:02", (19, 0, 0)),
    )
    path = photos.striped(tmp_path / "item", exif=exif)
    assert "dates_disagree" in _run(metadata, path).flags


def test_gps_time_within_tolerance_agrees(metadata: MetadataStage, tmp_path: Path) -> None:
    exif = photos.exif_bytes(
        datetime_original="2023:11:02 08:15:30",
        offset="+03:00",
        gps=(36.2, 37.1, None),
        gps_datetime=("2023:11:02", (5, 15, 0)),
    )
    path = photos.striped(tmp_path / "item", exif=exif)
    assert "dates_disagree" not in _run(metadata, path).flags


def test_unknown_offset_allows_fourteen_hours(metadata: MetadataStage, tmp_path: Path) -> None:
    exif = photos.exif_bytes(
        datetime_original="2023:11:02 20:00:00",
        gps=(36.2, 37.1, None),
        gps_datetime=("2023:11:02", (8, 0, 0)),
    )
    path = photos.striped(tmp_path / "item", exif=exif)
    assert "dates_disagree" not in _run(metadata, path).flags


def test_raw_keeps_evidence_and_drops_store_copy_entries(
    metadata: MetadataStage, tmp_path: Path
) -> None:
    raw = _run(metadata, photos.striped(tmp_path / "item", exif=photos.exif_bytes())).raw
    assert raw["EXIF:Make"] == "Qarina"
    for key in (
        "SourceFile",
        "File:FileName",
        "File:Directory",
        "File:FileModifyDate",
        "File:FileAccessDate",
        "File:FileInodeChangeDate",
        "File:FilePermissions",
    ):
        assert key not in raw
    assert str(tmp_path) not in json.dumps(raw)


def test_exiftool_stays_one_process(metadata: MetadataStage, tmp_path: Path) -> None:
    exif = photos.exif_bytes()
    paths = [photos.striped(tmp_path / f"item{i}", size=(32, 24), exif=exif) for i in range(12)]
    pid = metadata.exiftool_pid
    assert pid is not None
    for path in paths:
        _run(metadata, path)
    assert metadata.exiftool_pid == pid


def test_exiftool_timeout_is_tool_timeout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An exiftool that takes the request and never answers. (A real one with a 1 ms limit
    answered a small file within it on a busy machine, now and then.)"""
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    stub = stubs / "exiftool"
    stub.write_text("#!/bin/sh\nexec sleep 100\n")
    stub.chmod(0o755)
    monkeypatch.setenv("PATH", f"{stubs}{os.pathsep}{os.environ['PATH']}")
    stage = MetadataStage(MetadataConfig(tool=ToolLimits(timeout_s=0.5)))
    stage.setup()
    try:
        item = _item(photos.striped(tmp_path / "item", exif=photos.exif_bytes()))
        with pytest.raises(StageError) as caught:
            stage.run(item, tmp_path)
        assert caught.value.reason is FailureReason.TOOL_TIMEOUT
    finally:
        stage.teardown()


def test_other_kind_is_skipped(metadata: MetadataStage, tmp_path: Path) -> None:
    item = StageInput("0" * 64, hostile.html_page(tmp_path / "clip.mp4"), Kind.OTHER)
    with pytest.raises(StageSkipped):
        metadata.run(item, tmp_path)


@pytest.mark.timeout(10)
def test_fifo_is_refused_without_blocking(metadata: MetadataStage, tmp_path: Path) -> None:
    item = StageInput("0" * 64, hostile.fifo(tmp_path / "item"), Kind.PHOTO)
    with pytest.raises(StageError) as caught:
        metadata.run(item, tmp_path)
    assert caught.value.reason is FailureReason.UNSUPPORTED_TYPE


def test_result_is_json_serialisable(metadata: MetadataStage, tmp_path: Path) -> None:
    exif = photos.exif_bytes(gps=(1.5, 2.5, 3.0), offset="-05:00")
    path = photos.striped(tmp_path / "item", exif=exif)
    data = result_to_json(_run(metadata, path))
    assert json.loads(json.dumps(data)) == data


def test_tool_versions_name_exiftool(metadata: MetadataStage) -> None:
    assert metadata.tool_versions()["exiftool"] == "12.57"
