"""Lying and broken containers (issue 17): every one is kept as an item and processed as far
as its bytes go, flagged for what it is, or failed with a classified reason; nothing else is
lost, no original changes, and the store's fixity holds.

The files are made in the tests (`pipelines.samples.lying`), and the real broken sets of
`../shared/corpus` (images_broken, video_corrupt) go through the same pipeline.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from evidence.schema import jobs, results
from evidence.store import Store
from pipelines.config import QarinaConfig
from pipelines.ingest import ingest_paths
from pipelines.plan import Plan
from pipelines.runner import run_plan
from pipelines.samples import lying, photos
from pipelines.samples._tools import ffmpeg
from workers.base import FailureReason, Kind, StageError, StageInput
from workers.containers import structure_flags
from workers.probe import ProbeResult, ProbeStage, detect_family

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus"
BROKEN_SETS = ("images_broken", "video_corrupt")

#: What the probe must say of each lying file: its kind and the flags it earns, or the
#: classified reason it fails with.
EXPECTED: dict[str, tuple[str, set[str]] | FailureReason] = {
    "mp4_mdat_past_end": ("video", {"truncated"}),
    # The index is cut: nothing says where the frames are, and the reason says why.
    "mov_moov_past_end": FailureReason.CORRUPT_MEDIA,
    "wav_sizes_past_end": ("audio", {"truncated"}),
    "opus_cut": ("audio", {"truncated"}),
    "mp3_cut": ("audio", {"truncated"}),
    "amr_cut": ("audio", {"truncated"}),
    "matroska_segment_past_end": ("video", {"truncated"}),
    "png_idat_past_end": ("photo", {"truncated"}),
    "thousand_hours": ("video", {"duration_implausible"}),
    "wide_frames": ("video", set()),
    "hundred_audio_streams": ("video", set()),
    "opus_corrupt_header": FailureReason.CORRUPT_MEDIA,
    "hundred_megapixels": ("photo", set()),
    "malformed_exif": ("photo", set()),
    "oversized_xmp": ("photo", set()),
    "jpeg_with_zip": ("photo", {"trailing_data", "appended_archive"}),
}

#: Reasons a hostile or broken input may end with; anything else (stage_error: a bug) fails.
CLASSIFIED = {
    FailureReason.CORRUPT_MEDIA,
    FailureReason.DECODE_ERROR,
    FailureReason.UNSUPPORTED_TYPE,
    FailureReason.RESOURCE_LIMIT,
}


@pytest.fixture
def config(sqlite_config: QarinaConfig) -> QarinaConfig:
    """SQLite only: what is checked here is how stages and tools behave, which the backend
    does not change; the store's own faults run on both (test_store_faults.py)."""
    return sqlite_config


def _corpus_or_skip() -> Path:
    if not all((CORPUS / name).is_dir() for name in BROKEN_SETS):
        if os.environ.get("CI") == "true":
            pytest.fail("../shared/corpus must be beside the checkout in CI")
        pytest.skip("../shared/corpus is not here")
    return CORPUS


@pytest.fixture(scope="module")
def lying_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every lying file, under the names the tests know them by, and two named to lie."""
    folder = tmp_path_factory.mktemp("lying")
    for name, make in lying.LYING_FILES.items():
        make(folder / name)
    lying.jpeg_named_mp4(folder)
    lying.mp4_named_jpg(folder)
    return folder


def _probe(path: Path, workdir: Path) -> ProbeResult:
    stage = ProbeStage()
    stage.setup()
    return stage.run(StageInput(sha256="0" * 64, path=path, kind=Kind.PHOTO), workdir).result


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_lying_file_is_probed_for_what_it_is(
    name: str, lying_folder: Path, tmp_path: Path
) -> None:
    expected = EXPECTED[name]
    started = time.monotonic()
    if isinstance(expected, FailureReason):
        with pytest.raises(StageError) as caught:
            _probe(lying_folder / name, tmp_path)
        assert caught.value.reason is expected
    else:
        result = _probe(lying_folder / name, tmp_path)
        assert (result.kind, set(result.flags)) == expected
    assert time.monotonic() - started < 10


def test_a_claimed_duration_the_bytes_cannot_hold_is_bounded_by_them(
    lying_folder: Path, tmp_path: Path
) -> None:
    path = lying_folder / "thousand_hours"
    result = _probe(path, tmp_path)
    assert result.ffprobe is not None
    assert float(result.ffprobe["format"]["duration"]) > 3_000_000  # the claim, kept as said
    assert result.duration_s is not None and result.duration_s < path.stat().st_size / 30


def test_names_do_not_decide_the_kind(lying_folder: Path, tmp_path: Path) -> None:
    assert _probe(lying_folder / "VID_20240101_120000.mp4", tmp_path).kind == "photo"
    assert _probe(lying_folder / "IMG_20240101_120000.jpg", tmp_path).kind == "video"


def test_whole_files_of_every_walked_format_earn_no_flag(tmp_path: Path) -> None:
    """The walkers must not cry wolf: each format written whole by its own encoder."""
    made = {
        "mp4": lying.phone_video(tmp_path / "a.mp4"),
        "mov-index-last": lying.phone_video(tmp_path / "b.mov", "mov", faststart=False),
        "mkv": lying.phone_video(tmp_path / "c.mkv", "matroska"),
        "png": photos.striped(tmp_path / "d.png", size=(64, 48), image_format="PNG"),
        "jpeg": photos.striped(tmp_path / "e.jpg", size=(64, 48)),
    }
    for encoder, fmt in (("libopus", "ogg"), ("libmp3lame", "mp3"), ("pcm_s16le", "wav")):
        path = tmp_path / f"f.{fmt}"
        ffmpeg("-y", "-f", "lavfi", "-i", "sine=d=2", "-c:a", encoder, "-f", fmt, str(path))
        made[fmt] = path
    whole_amr = tmp_path / "g.amr"
    lying.amr_cut(whole_amr)
    whole_amr.write_bytes(whole_amr.read_bytes()[: 6 + 32 * 100])  # 100 whole frames
    made["amr"] = whole_amr
    for label, path in made.items():
        family = detect_family(path.read_bytes()[:4096])
        assert family is not None, label
        assert structure_flags(family.name, path) == [], label


def test_real_media_earns_no_flag_and_the_corpus_cuts_are_found() -> None:
    """Real files from many writers: the corpus's whole media must walk clean, and the files
    its ground truth calls truncated must be flagged (one camera's stray byte after EOI is
    not content; a Samsung trailer after EOI is)."""
    corpus = _corpus_or_skip()
    truncated = {
        f"{folder}/{name}"
        for folder in BROKEN_SETS
        for name, said in json.loads((corpus / folder / "ground_truth.json").read_text()).items()
        if "TRUNCATED" in said.upper() and "TRUNCATED/GARBAGE" not in said.upper()
    }
    wrongly_flagged, missed = [], []
    for path in sorted(corpus.rglob("*")):
        if not path.is_file() or path.stat().st_size == 0:
            continue
        family = detect_family(path.read_bytes()[:4096])
        if family is None:
            continue
        relative = path.relative_to(corpus).as_posix()
        flags = structure_flags(family.name, path)
        if relative in truncated:
            if "truncated" not in flags:
                missed.append(relative)
            continue
        walks_clean = not flags or (
            flags == ["trailing_data"] and "exif-rotn" in relative  # Samsung SEFT trailers
        )
        stub = relative.split("/")[0] in BROKEN_SETS or "exiftool-stubs" in relative
        if not walks_clean and not stub:
            wrongly_flagged.append((relative, flags))
    assert truncated and not missed
    assert not wrongly_flagged


@pytest.mark.slow
@pytest.mark.allow_logged_errors
def test_lying_and_broken_files_go_through_the_pipeline(
    lying_folder: Path, store: Store, config: QarinaConfig, tmp_path: Path
) -> None:
    """All of them at once, with good files among them: each becomes an item; every job ends
    done, skipped or failed with a classified reason, in bounded time; the good files are
    processed whole; no original changes; fixity verifies."""
    corpus = _corpus_or_skip()
    good = tmp_path / "good"
    good.mkdir()
    photos.photo(good / "IMG_0001.jpg", size=(640, 480))
    lying.phone_video(good / "VID_0002.mp4")
    inputs = [lying_folder, good, *(corpus / name for name in BROKEN_SETS)]
    files = [path for folder in inputs for path in sorted(folder.rglob("*")) if path.is_file()]
    before = {path: hashlib.sha256(path.read_bytes()).hexdigest() for path in files}

    plan = Plan.default(settings=config)
    started = time.monotonic()
    summary = ingest_paths(store, plan, config, inputs, source="hardening")
    run_plan(store, plan, config)
    elapsed = time.monotonic() - started

    assert summary.files == len(files)
    assert summary.new_items + summary.duplicates + sum(summary.refused.values()) == len(files)
    with store.database.reader.connect() as connection:
        rows = connection.execute(
            sa.select(jobs.c.sha256, jobs.c.stage, jobs.c.state, jobs.c.error_reason)
        ).all()
        probes = {
            row.sha256: row.data
            for row in connection.execute(
                sa.select(results.c.sha256, results.c.data).where(
                    results.c.stage == "probe", results.c.status == "ok"
                )
            )
        }
    assert not [row for row in rows if row.state in ("queued", "leased")]
    reasons = {row.error_reason for row in rows if row.state in ("failed", "dead")}
    assert reasons <= {reason.value for reason in CLASSIFIED}, reasons
    by_name = {path.name: sha for path, sha in before.items()}
    for name in ("mp4_mdat_past_end", "matroska_segment_past_end", "wav_sizes_past_end"):
        assert "truncated" in probes[by_name[name]]["flags"], name
    for name, expected in EXPECTED.items():
        if isinstance(expected, FailureReason):
            continue
        # Processed as far as its bytes go: every stage that applies ends done.
        failed = [r for r in rows if r.sha256 == by_name[name] and r.state != "done"]
        assert not failed, (name, failed)
    for path in good.iterdir():
        mine = [row for row in rows if row.sha256 == before[path]]
        assert mine and all(row.state == "done" for row in mine), path.name
    assert all(hashlib.sha256(p.read_bytes()).hexdigest() == sha for p, sha in before.items())
    report = store.verify(fixity=True, actor="tester")
    assert report.ok, report
    assert elapsed < 600
    shutil.rmtree(good)
