"""Behaviour of the probe stage on generated media: kind from content, never from the name."""

from __future__ import annotations

import gzip
import json
import lzma
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import pytest

from pipelines.samples import archives, audio, hostile, photos, videos
from tests.stage_contract import StageContract
from workers.base import FailureReason, Kind, StageError, StageInput, result_to_json
from workers.images import DEFAULT_MAX_PIXELS, JPEG_PIXEL_ALLOWANCE
from workers.probe import ProbeConfig, ProbeResult, ProbeStage


def _item(path: Path) -> StageInput:
    # The runtime does not know the kind before the probe: it passes OTHER.
    return StageInput("0" * 64, path, Kind.OTHER)


@pytest.fixture
def probe() -> ProbeStage:
    stage = ProbeStage()
    stage.setup()
    return stage


def _run(stage: ProbeStage, path: Path, tmp_path: Path) -> ProbeResult:
    workdir = tmp_path / "work"
    workdir.mkdir(exist_ok=True)
    return stage.run(_item(path), workdir).result


class TestProbeContract(StageContract):
    stage_class = ProbeStage
    config: ClassVar[ProbeConfig] = ProbeConfig()
    expected_name = "probe"

    def supported_item(self, tmp_path: Path) -> StageInput:
        return _item(photos.striped(tmp_path / "item", size=(64, 48), exif=photos.exif_bytes()))

    def unsupported_item(self, tmp_path: Path) -> StageInput:
        return _item(hostile.html_page(tmp_path / "clip.mp4"))


def test_jpeg_named_png_is_a_jpeg_photo(probe: ProbeStage, tmp_path: Path) -> None:
    result = _run(probe, hostile.jpeg_bytes_named_png(tmp_path), tmp_path)
    assert (result.kind, result.mime, result.format) == ("photo", "image/jpeg", "jpeg")
    assert (result.width, result.height) == (64, 48)
    assert result.flags == []


def test_png_is_a_photo(probe: ProbeStage, tmp_path: Path) -> None:
    png = photos.striped(tmp_path / "item", size=(64, 48), image_format="PNG")
    result = _run(probe, png, tmp_path)
    assert (result.kind, result.format) == ("photo", "png")


def test_html_named_mp4_is_unsupported_and_says_what_it_is(
    probe: ProbeStage, tmp_path: Path
) -> None:
    with pytest.raises(StageError) as caught:
        _run(probe, hostile.html_page(tmp_path / "clip.mp4"), tmp_path)
    assert caught.value.reason is FailureReason.UNSUPPORTED_TYPE
    assert caught.value.detail == "html document"
    assert "clip" not in caught.value.detail


@pytest.mark.parametrize(
    ("content", "family"),
    [
        (b"", "empty file"),
        (b"%PDF-1.7\n", "pdf document"),
        (b"just some notes\n", "text document"),
        (gzip.compress(b"just some notes\n"), "gzip data"),
        (lzma.compress(b"just some notes\n"), "xz data"),
    ],
)
def test_other_content_is_unsupported(
    probe: ProbeStage, tmp_path: Path, content: bytes, family: str
) -> None:
    path = tmp_path / "item.jpg"
    path.write_bytes(content)
    with pytest.raises(StageError) as caught:
        _run(probe, path, tmp_path)
    assert (caught.value.reason, caught.value.detail) == (FailureReason.UNSUPPORTED_TYPE, family)


def _empty_zip(path: Path, members: dict[str | bytes, Path]) -> Path:
    del members  # an archive of nothing is still an archive
    zipfile.ZipFile(path, "w").close()
    return path


def _gnu_tar(path: Path, members: dict[str | bytes, Path]) -> Path:
    return archives.tar_archive(path, members, compression="", tar_format=tarfile.GNU_FORMAT)


def _plain_tar(path: Path, members: dict[str | bytes, Path]) -> Path:
    return archives.tar_archive(path, members, compression="")


def _xz_tar(path: Path, members: dict[str | bytes, Path]) -> Path:
    return archives.tar_archive(path, members, compression="xz")


@pytest.mark.parametrize(
    ("build", "family", "mime"),
    [
        (archives.zip_archive, "zip", "application/zip"),
        (_empty_zip, "zip", "application/zip"),
        (_plain_tar, "tar", "application/x-tar"),
        (_gnu_tar, "tar", "application/x-tar"),
        (archives.tar_archive, "tar.gz", "application/gzip"),
        (_xz_tar, "tar.xz", "application/x-xz"),
    ],
)
def test_archives_are_recognised_from_their_bytes(
    probe: ProbeStage,
    tmp_path: Path,
    build: Callable[[Path, dict[str | bytes, Path]], Path],
    family: str,
    mime: str,
) -> None:
    photo = photos.striped(tmp_path / "photo.jpg", size=(64, 48))
    result = _run(probe, build(tmp_path / "item.jpg", {"DCIM/photo.jpg": photo}), tmp_path)
    assert (result.kind, result.format, result.mime) == ("archive", family, mime)
    assert result.ffprobe is None and result.duration_s is None


def test_tar_whose_first_name_looks_like_media_is_a_tar(probe: ProbeStage, tmp_path: Path) -> None:
    # A tar starts with its first member's name: here one that begins like an MP3 (ID3).
    photo = photos.striped(tmp_path / "photo.jpg", size=(64, 48))
    tar = _gnu_tar(tmp_path / "item", {"ID3 tags/photo.jpg": photo})
    assert (_run(probe, tar, tmp_path).kind, tar.read_bytes()[:3]) == ("archive", b"ID3")


def test_video_with_audio(probe: ProbeStage, tmp_path: Path) -> None:
    result = _run(probe, videos.video_with_cuts(tmp_path / "item.jpg"), tmp_path)
    assert (result.kind, result.format, result.mime) == ("video", "mp4", "video/mp4")
    assert result.has_video and result.has_audio
    assert (result.width, result.height) == (96, 64)
    assert result.duration_s == pytest.approx(2.0, abs=0.2)
    assert result.ffprobe is not None
    assert "filename" not in result.ffprobe["format"], "the store path must not be kept"


def test_silent_video_has_no_audio(probe: ProbeStage, tmp_path: Path) -> None:
    result = _run(probe, videos.video_with_cuts(tmp_path / "item", audio=None), tmp_path)
    assert result.kind == "video"
    assert not result.has_audio


def test_rotation_is_clockwise_degrees(probe: ProbeStage, tmp_path: Path) -> None:
    result = _run(probe, videos.rotated_video(tmp_path / "item", 90), tmp_path)
    assert result.rotation == 90


def test_wav_is_audio(probe: ProbeStage, tmp_path: Path) -> None:
    result = _run(probe, audio.tone(tmp_path / "item.mp4"), tmp_path)
    assert (result.kind, result.format, result.has_video) == ("audio", "wav", False)


def test_ogg_opus_voice_note_is_audio(probe: ProbeStage, tmp_path: Path) -> None:
    note = audio.speech(tmp_path / "item", "مرحبا بكم", voice_format="ogg-opus")
    result = _run(probe, note, tmp_path)
    assert (result.kind, result.format, result.mime) == ("audio", "ogg", "audio/ogg")


def test_truncated_jpeg_is_flagged(probe: ProbeStage, tmp_path: Path) -> None:
    result = _run(probe, hostile.truncated_jpeg(tmp_path / "item"), tmp_path)
    assert result.kind == "photo"
    assert result.flags == ["truncated"]


def test_decompression_bomb_is_a_resource_limit(probe: ProbeStage, tmp_path: Path) -> None:
    path = hostile.png_bomb(tmp_path / "item")
    assert path.stat().st_size < 200
    with pytest.raises(StageError) as caught:
        _run(probe, path, tmp_path)
    assert caught.value.reason is FailureReason.RESOURCE_LIMIT


def test_pixel_limit_comes_from_config(tmp_path: Path) -> None:
    stage = ProbeStage(ProbeConfig(max_image_pixels=1000))
    with pytest.raises(StageError) as caught:
        _run(stage, photos.striped(tmp_path / "item", size=(64, 48), image_format="PNG"), tmp_path)
    assert caught.value.reason is FailureReason.RESOURCE_LIMIT


@pytest.mark.parametrize(("image_format", "passes"), [("JPEG", True), ("PNG", False)])
def test_a_jpeg_may_hold_more_pixels_since_it_decodes_reduced(
    image_format: str, passes: bool, tmp_path: Path
) -> None:
    """A 200-megapixel phone photo (16,320 x 12,240) is a JPEG: decoded at 1/8 a side for
    analysis, it is no bomb, while a PNG that size would be decoded whole."""
    assert DEFAULT_MAX_PIXELS * JPEG_PIXEL_ALLOWANCE >= 16_320 * 12_240
    # 64 x 48 = 3,072 pixels: past a limit of 1,000, within four times it.
    stage = ProbeStage(ProbeConfig(max_image_pixels=1000))
    path = photos.striped(tmp_path / "item", size=(64, 48), image_format=image_format)
    if passes:
        assert _run(stage, path, tmp_path).kind == "photo"
        return
    with pytest.raises(StageError) as caught:
        _run(stage, path, tmp_path)
    assert caught.value.reason is FailureReason.RESOURCE_LIMIT


def test_corrupt_video_is_corrupt_media(probe: ProbeStage, tmp_path: Path) -> None:
    with pytest.raises(StageError) as caught:
        _run(probe, hostile.corrupt_video(tmp_path / "item"), tmp_path)
    assert caught.value.reason is FailureReason.CORRUPT_MEDIA


def test_unreadable_image_header_is_corrupt_media(probe: ProbeStage, tmp_path: Path) -> None:
    path = tmp_path / "item"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    with pytest.raises(StageError) as caught:
        _run(probe, path, tmp_path)
    assert caught.value.reason is FailureReason.CORRUPT_MEDIA


@pytest.mark.timeout(10)
def test_fifo_is_refused_without_blocking(probe: ProbeStage, tmp_path: Path) -> None:
    with pytest.raises(StageError) as caught:
        _run(probe, hostile.fifo(tmp_path / "item"), tmp_path)
    assert caught.value.reason is FailureReason.UNSUPPORTED_TYPE


def test_result_is_json_serialisable(probe: ProbeStage, tmp_path: Path) -> None:
    result = _run(probe, videos.video_with_cuts(tmp_path / "item"), tmp_path)
    data = result_to_json(result)
    assert json.loads(json.dumps(data))["kind"] == "video"


def test_tool_versions_name_ffprobe_and_pillow(probe: ProbeStage) -> None:
    versions = probe.tool_versions()
    assert versions["ffprobe"].startswith("ffprobe version")
    assert versions["pillow"]
