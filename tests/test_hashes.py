"""Behaviour of the hashes stage on generated photos and videos."""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pdqhash
import pillow_heif
import pytest
from PIL import Image, ImageDraw

from pipelines import dupes_eval
from pipelines.plan import Plan
from pipelines.samples import hostile, photos, videos
from tests.stage_contract import StageContract
from workers import pdq_crops
from workers.base import FailureReason, Kind, StageError, StageInput, StageSkipped
from workers.hashes import DIHEDRAL, HashesConfig, HashesStage, hex_distance, strip_box
from workers.images import decode_for_analysis
from workers.keyframes import KeyframesStage
from workers.probe import ProbeStage


def _photo(path: Path) -> StageInput:
    return StageInput("0" * 64, path, Kind.PHOTO)


def _hash(path: Path, tmp_path: Path, config: HashesConfig | None = None) -> dict[str, Any]:
    workdir = tmp_path / f"work-{path.name}"
    workdir.mkdir()
    entries = HashesStage(config).run(_photo(path), workdir).result.hashes
    # As stored: the checks below hold for the JSON that matching reads.
    return {entry.variant: entry.to_json() for entry in entries}


def _full_decode_pdq(path: Path) -> str:
    with Image.open(path) as image:
        vector, _ = pdqhash.compute(np.asarray(image.convert("RGB")))
    return np.packbits(vector.astype(np.uint8)).tobytes().hex()


class TestHashesContract(StageContract):
    stage_class = HashesStage
    config: ClassVar[HashesConfig] = HashesConfig()
    expected_name = "hashes"

    def supported_item(self, tmp_path: Path) -> StageInput:
        return _photo(photos.scene_jpeg(tmp_path / "item", seed=1))

    def unsupported_item(self, tmp_path: Path) -> StageInput:
        return _photo(hostile.html_page(tmp_path / "clip.mp4"))


def test_pdq_hex_is_threatexchange_layout(tmp_path: Path) -> None:
    path = photos.scene_jpeg(tmp_path / "a.jpg", seed=2, size=(400, 300))
    ours = _hash(path, tmp_path)["full"]
    with Image.open(path) as image:
        vector, quality = pdqhash.compute(np.asarray(image.convert("RGB")))
    # ThreatExchange writes the first bit of the vector as the most significant hex bit.
    assert ours["pdq"] == f"{int(''.join(str(int(bit)) for bit in vector), 2):064x}"
    assert ours["quality"] == quality
    assert len(ours["phash"]) == 16 and len(ours["dihedral"]) == len(DIHEDRAL) - 1


def test_large_jpeg_is_decoded_reduced_and_stays_close(tmp_path: Path) -> None:
    path = photos.scene_jpeg(tmp_path / "big.jpg", seed=3, size=(4000, 3000), quality=92)
    decoded = decode_for_analysis(path, min_side=512, max_pixels=10**9)
    assert 512 <= min(decoded.image.size) < 1000, "draft mode decodes at a fraction of the size"
    assert hex_distance(_hash(path, tmp_path)["full"]["pdq"], _full_decode_pdq(path)) <= 8


def test_exif_orientation_is_applied_once(tmp_path: Path) -> None:
    upright = photos.scene(4, (480, 360))
    upright.save(tmp_path / "upright.jpg", quality=92)
    # Stored turned a quarter anticlockwise, with Orientation 6 telling viewers to turn it back.
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    stored.save(tmp_path / "tagged.jpg", quality=92, exif=photos.exif_bytes(orientation=6))
    first = _hash(tmp_path / "upright.jpg", tmp_path)["full"]["pdq"]
    second = _hash(tmp_path / "tagged.jpg", tmp_path)["full"]["pdq"]
    assert hex_distance(first, second) <= 10
    decoded = decode_for_analysis(tmp_path / "tagged.jpg", min_side=512, max_pixels=10**9)
    assert decoded.image.size == (480, 360)


def test_letterbox_bars_are_trimmed(tmp_path: Path) -> None:
    original = photos.scene_jpeg(tmp_path / "a.jpg", seed=5)
    boxed = photos.letterboxed(original, tmp_path / "boxed.jpg", bar_fraction=0.15)
    plain, trimmed = _hash(original, tmp_path)["full"], _hash(boxed, tmp_path)["full"]
    assert plain["border"] == [0, 0, 0, 0]
    assert trimmed["border"][1] == pytest.approx(0.115, abs=0.01)
    assert hex_distance(plain["pdq"], trimmed["pdq"]) <= 12


def test_crop_variants_and_probes_are_hashed(tmp_path: Path) -> None:
    path = photos.scene_jpeg(tmp_path / "a.jpg", seed=6)
    hashed = _hash(path, tmp_path)
    assert set(hashed) == {"full", "crop5", "inner15"}, "no strip variant without a strip"
    assert len(hashed["full"]["probes"]) == 80 * 64


def _bar_over(image: Image.Image, fraction: float) -> Image.Image:
    """The picture with a flat bar laid over its bottom `fraction`."""
    covered = image.copy()
    top = round(image.height * (1 - fraction))
    ImageDraw.Draw(covered).rectangle((0, top, image.width, image.height), fill=(200, 30, 30))
    return covered


@pytest.mark.parametrize(
    "edit", ["bar over 12%", "caption over 15%", "corner logo", "corner watermark"]
)
def test_an_overlay_leaves_the_inner_part_and_its_hash_alone(tmp_path: Path, edit: str) -> None:
    """The inner part is measured from the edges of the picture as it came: a bar laid over
    a side is trimmed as a border, and the trimmed box is no longer the original's."""
    original = photos.scene(10, (640, 480))
    original.save(tmp_path / "a.jpg", quality=90)
    rng = np.random.default_rng(1)
    edited = {
        "bar over 12%": lambda: _bar_over(original, 0.12),
        "caption over 15%": lambda: dupes_eval.caption_strip(
            original, rng, side="top", added=False, fraction=0.15
        ),
        "corner logo": lambda: dupes_eval.corner_logo(original, rng),
        "corner watermark": lambda: dupes_eval.corner_watermark(original, rng),
    }[edit]()
    edited.save(tmp_path / "b.jpg", quality=85)
    plain, copy = _hash(tmp_path / "a.jpg", tmp_path), _hash(tmp_path / "b.jpg", tmp_path)
    assert hex_distance(plain["inner15"]["pdq"], copy["inner15"]["pdq"]) <= 8
    if edit == "bar over 12%":
        assert copy["full"]["border"][3] == pytest.approx(0.12, abs=0.01)
        assert hex_distance(plain["full"]["pdq"], copy["full"]["pdq"]) > 31


@pytest.mark.parametrize("turn", [0, 90, 180, 270])
def test_a_caption_strip_added_on_any_side_is_found_and_cut_away(tmp_path: Path, turn: int) -> None:
    """Text on a flat strip is no border for the trimmer; the strip finder cuts it, and the
    picture without it hashes like the original."""
    original = photos.scene(11, (640, 480)).rotate(turn, expand=True)
    rng = np.random.default_rng(turn)
    captioned = dupes_eval.caption_strip(
        original.rotate(-turn, expand=True), rng, side="top", added=True, fraction=0.12
    ).rotate(turn, expand=True)
    original.save(tmp_path / "a.jpg", quality=90)
    captioned.save(tmp_path / "b.jpg", quality=85)
    plain = _hash(tmp_path / "a.jpg", tmp_path)
    entries = HashesStage().run(_photo(tmp_path / "b.jpg"), tmp_path).result.hashes
    [whole] = [entry for entry in entries if entry.variant == "full"]
    [strip] = [entry for entry in entries if entry.variant == "strip"]
    assert whole.border == (0, 0, 0, 0)
    assert hex_distance(plain["full"]["pdq"], whole.pdq) > 31
    assert hex_distance(plain["full"]["pdq"], strip.pdq) <= 8
    strip = round(480 * 0.12 / 0.88)
    config = HashesConfig()
    box = strip_box(captioned, config.strip_tolerance, config.strip_max_fraction)
    width, height = captioned.size
    expected = {
        0: (0, strip, width, height), 90: (strip, 0, width, height),
        180: (0, 0, width, height - strip), 270: (0, 0, width - strip, height),
    }[turn]  # fmt: skip
    assert np.abs(np.subtract(box, expected)).max() <= 2


def test_bars_the_trimmer_takes_are_no_strip_again(tmp_path: Path) -> None:
    original = photos.scene_jpeg(tmp_path / "a.jpg", seed=12)
    boxed = _hash(photos.letterboxed(original, tmp_path / "boxed.jpg"), tmp_path)
    assert "strip" not in boxed
    assert hex_distance(boxed["full"]["pdq"], _hash(original, tmp_path)["full"]["pdq"]) <= 12


@pytest.mark.parametrize("size", [(320, 240), (192, 256), (64, 64), (1000, 750), (97, 61)])
def test_crops_hashed_together_are_pdqhash_bits(tmp_path: Path, size: tuple[int, int]) -> None:
    """`pdq_crops` gives each crop the bits pdqhash gives that crop cut out (PDQ's window
    sizes, edges and decimation depend on the crop's size, so sizes vary here); rounding
    may flip a bit only where a coefficient lies at the median."""
    path = photos.scene_jpeg(tmp_path / "a.jpg", seed=sum(size), size=size)
    with Image.open(path) as image:
        rgb = np.asarray(image.convert("RGB"))
    height, width = rgb.shape[:2]
    boxes = [
        (left, top, width - right, height - bottom)
        for left, top, right, bottom in itertools.product((0, 1, 3, width // 12), repeat=4)
        if width - right - left >= 5 and height - bottom - top >= 5
    ]
    together = pdq_crops.crop_hashes(pdq_crops.luma(rgb), boxes)
    differing = []
    for bits, (left, top, right, bottom) in zip(together, boxes, strict=True):
        alone, quality = pdqhash.compute(np.ascontiguousarray(rgb[top:bottom, left:right]))
        assert quality >= 50
        differing.append(int((alone.astype(bool) != bits).sum()))
    assert max(differing) <= 2
    assert sum(count > 0 for count in differing) <= len(boxes) // 100


def test_a_crop_under_five_pixels_hashes_to_zeros_as_in_pdqhash() -> None:
    rgb = np.random.default_rng(0).integers(0, 255, (40, 30, 3), dtype=np.uint8)
    [bits] = pdq_crops.crop_hashes(pdq_crops.luma(rgb), [(0, 0, 4, 40)])
    assert not bits.any() and not pdqhash.compute(np.ascontiguousarray(rgb[:, :4]))[0].any()


def test_mirrored_copy_matches_a_dihedral_hash(tmp_path: Path) -> None:
    original = photos.scene_jpeg(tmp_path / "a.jpg", seed=7)
    with Image.open(original) as image:
        image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(tmp_path / "m.jpg", quality=90)
    plain, mirrored = _hash(original, tmp_path)["full"], _hash(tmp_path / "m.jpg", tmp_path)["full"]
    assert hex_distance(plain["pdq"], mirrored["pdq"]) > 60
    assert min(hex_distance(plain["pdq"], other) for other in mirrored["dihedral"]) <= 10


def test_flat_picture_has_low_quality(tmp_path: Path) -> None:
    Image.new("RGB", (300, 200), (128, 128, 128)).save(tmp_path / "flat.jpg")
    assert _hash(tmp_path / "flat.jpg", tmp_path)["full"]["quality"] < 50


def test_sixteen_bit_picture_is_scaled_not_clipped(tmp_path: Path) -> None:
    grey = np.asarray(photos.scene(8, (320, 240)).convert("L"), dtype=np.uint16) * 257
    Image.fromarray(grey).save(tmp_path / "deep.png")
    Image.fromarray((grey // 257).astype(np.uint8)).save(tmp_path / "eight.png")
    deep, eight = _hash(tmp_path / "deep.png", tmp_path), _hash(tmp_path / "eight.png", tmp_path)
    assert deep["full"]["quality"] >= 50
    assert hex_distance(deep["full"]["pdq"], eight["full"]["pdq"]) <= 4


def test_decompression_bomb_is_a_resource_limit(tmp_path: Path) -> None:
    bomb = hostile.png_bomb(tmp_path / "bomb.png")
    with pytest.raises(StageError) as raised:
        HashesStage().run(_photo(bomb), tmp_path)
    assert raised.value.reason is FailureReason.RESOURCE_LIMIT


def test_heic_decodes_in_the_stage_and_a_cut_one_is_corrupt_media(tmp_path: Path) -> None:
    pillow_heif.from_pillow(photos.scene(9, (128, 96))).save(tmp_path / "whole.heic")
    whole = (tmp_path / "whole.heic").read_bytes()
    (tmp_path / "cut.heic").write_bytes(whole[: len(whole) // 2])
    assert HashesStage().run(_photo(tmp_path / "whole.heic"), tmp_path).result.hashes
    with pytest.raises(StageError) as raised:
        HashesStage().run(_photo(tmp_path / "cut.heic"), tmp_path)
    assert raised.value.reason is FailureReason.CORRUPT_MEDIA


def test_truncated_photo_is_hashed_and_flagged(tmp_path: Path) -> None:
    path = hostile.truncated_jpeg(tmp_path / "cut.jpg")
    output = HashesStage().run(_photo(path), tmp_path)
    assert output.result.flags == ["truncated"]
    assert output.result.hashes[0].pdq


def _video_input(path: Path, tmp_path: Path) -> StageInput:
    """A video as the runtime hands it over: probe and keyframes results, keyframe files."""
    frames = tmp_path / "keyframes"
    frames.mkdir()
    probe = ProbeStage().run(StageInput("1" * 64, path, Kind.OTHER), frames).result.to_json()
    keyframes = KeyframesStage().run(
        StageInput("1" * 64, path, Kind.VIDEO, {"probe": probe}), frames
    )
    artifacts = {
        hashlib.sha256(artifact.path.read_bytes()).hexdigest(): artifact.path
        for artifact in keyframes.artifacts
    }
    upstream = {"probe": probe, "keyframes": keyframes.result.to_json()}
    return StageInput("1" * 64, path, Kind.VIDEO, upstream, artifacts)


def test_video_gets_keyframe_hashes_and_a_sample_per_second(tmp_path: Path) -> None:
    video = videos.video_of_scenes(tmp_path / "v.mp4", list(range(20, 26)))
    result = HashesStage().run(_video_input(video, tmp_path), tmp_path).result
    samples_t = [entry.t for entry in result.hashes if entry.source == "sample"]
    keyframes = [entry for entry in result.hashes if entry.source == "keyframe"]
    assert samples_t == pytest.approx([0, 1, 2, 3, 4, 5], abs=0.05)
    assert result.samples == 6 and result.keyframes == len({e.t for e in keyframes}) >= 5
    assert all(entry.artifact and entry.quality >= 50 for entry in keyframes)
    # Every sampled second is a different scene: the hashes differ accordingly.
    pdqs = [entry.pdq for entry in result.hashes if entry.source == "sample"]
    assert min(hex_distance(a, b) for a in pdqs for b in pdqs if a != b) > 60


def test_video_without_keyframes_is_skipped(tmp_path: Path) -> None:
    video = videos.video_with_cuts(tmp_path / "v.mp4")
    with pytest.raises(StageSkipped):
        HashesStage().run(StageInput("1" * 64, video, Kind.VIDEO), tmp_path)


def test_photos_wait_for_the_probe_and_videos_for_keyframes() -> None:
    plan = Plan.default()
    [photo] = [spec for spec in plan.follow_ups("probe", "photo") if spec.stage == "hashes"]
    assert [key.stage for key in photo.requires] == ["probe"]
    # A video's hashes job is only queued once every required result exists (jobs.enqueue).
    for finished in ("probe", "keyframes"):
        [video] = [spec for spec in plan.follow_ups(finished, "video") if spec.stage == "hashes"]
        assert [key.stage for key in video.requires] == ["probe", "keyframes"]
