"""Copies of a real video link to it saying what was done: cuts, frame rates, speeds, stills.

The copies are made with ffmpeg from the shared corpus's handheld clip (240x180, 25 fps, a
hand moving through the frame); a fast pan over a field (another corpus video) is the
unrelated footage that must link to none of them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
from typer.testing import CliRunner

from evidence import matches
from evidence.store import Store
from pipelines.cli import app
from pipelines.config import QarinaConfig
from pipelines.dedup.align import align
from pipelines.dedup.config import MatchConfig
from pipelines.ingest import ingest_paths
from pipelines.plan import Plan
from pipelines.runner import run_plan
from pipelines.samples import video_edits
from pipelines.samples.video_edits import Edit
from pipelines.session import open_matcher

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"
HANDHELD = CORPUS / "video_meta" / "pixelprobe" / "valid.mp4"
FIELD_PAN = CORPUS / "video_meta" / "jcodec" / "out9_sm.webm"
#: A frame and a half at 25 fps: ffmpeg's seek lands on the frame at or after the time asked.
FRAME_S = 0.06

pytestmark = pytest.mark.skipif(
    not HANDHELD.is_file() and os.environ.get("CI") != "true",
    reason="../shared/corpus is not here",
)


def test_speed_and_offset_are_fitted_from_frames_that_agree() -> None:
    # A copy played 1.25x as fast: my second t shows their 2 + 1.25 t; one stray hit.
    hits = [(float(t), 2.0 + 1.25 * t, 10) for t in range(8)] + [(3.0, 40.0, 30)]
    distance, mine, theirs, details = align(hits, 8, 20, MatchConfig()) or (0, 0, 0, {})
    assert details["speed"] == pytest.approx(1.25, abs=0.01)
    assert details["offset_s"] == pytest.approx(2.0, abs=0.05)
    assert (mine, theirs, distance) == (0.0, pytest.approx(2.0, abs=0.05), 10)
    # The same frames at one speed: no speed is reported; too few frames: no link at all.
    plain = align([(float(t), 5.0 + t, 4) for t in range(8)], 8, 8, MatchConfig())
    assert plain is not None and "speed" not in plain[3] and plain[3]["offset_s"] == 5.0
    assert align([(0.0, 5.0, 4), (1.0, 6.0, 4)], 8, 8, MatchConfig()) is None


def test_a_speed_seen_from_the_other_video_is_inverted() -> None:
    link = matches.link_between(
        "b" * 64, "a" * 64, "video-video", "pdq", 9, (0.0, 2.0), {"offset_s": 2.0, "speed": 1.25}
    )
    # Their time = 1.25 x mine + 2, so mine = 0.8 x theirs - 1.6.
    assert link.details == {"offset_s": -1.6, "speed": 0.8}
    assert matches.as_seen_from(link, "b" * 64)["details"] == {"offset_s": 2.0, "speed": 1.25}


class Linked(NamedTuple):
    store: Store
    config: QarinaConfig
    shas: dict[str, str]
    edits: dict[str, Edit]


@pytest.fixture(scope="module")
def linked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Linked]:
    """The handheld clip and its copies through probe, keyframes and hashes, linked: stills
    before the video (its frames find them), cuts and a cropped still after it."""
    folder = tmp_path_factory.mktemp("video-links")
    copies = folder / "copies"
    copies.mkdir()
    edits = {
        "still": video_edits.still(HANDHELD, copies / "still.jpg", 1.72),
        "resized": video_edits.still(HANDHELD, copies / "resized.jpg", 2.7, scale=0.6, quality=6),
        "cropped": video_edits.still(HANDHELD, copies / "cropped.jpg", 3.86, crop=0.03),
        "trimmed": video_edits.trimmed(HANDHELD, copies / "trimmed.mp4", 1.55, 2.6),
        "fps15": video_edits.refps(HANDHELD, copies / "fps15.mp4", 15),
        "fast": video_edits.sped(HANDHELD, copies / "fast.mp4", 1.25),
        "slow": video_edits.sped(HANDHELD, copies / "slow.mp4", 0.8),
    }
    config = QarinaConfig(data_dir=folder / "data", db_url=f"sqlite:///{folder / 'db.sqlite3'}")
    store = Store.open(config.db_url, config.blob_root)
    plan = Plan.default(["probe", "keyframes", "hashes"])
    matcher = open_matcher(config, store, plan)
    shas: dict[str, str] = {}
    batches = (
        ["still", "resized"],
        ["video", "field"],
        ["cropped", "trimmed", "fps15", "fast", "slow"],
    )
    files = {
        **{name: edit.path for name, edit in edits.items()},
        "video": HANDHELD,
        "field": FIELD_PAN,
    }
    for batch in batches:
        for name in batch:
            shas[name] = ingest_paths(store, plan, config, [files[name]], "test").sha256s[0]
        run_plan(store, plan, config)
        matcher.update("test")
    yield Linked(store, config, shas, edits)
    store.close()


def _seen_from(store: Store, shas: dict[str, str], copy: str) -> dict[str, object]:
    [link] = [
        link
        for link in matches.links_of(store.database, shas[copy])
        if shas["video"] in (link.a_sha256, link.b_sha256)
    ]
    return matches.as_seen_from(link, shas[copy])


def test_stills_link_to_the_video_at_their_time_in_either_order(
    linked: Linked,
) -> None:
    store, shas, edits = linked.store, linked.shas, linked.edits
    for name in ("still", "resized", "cropped"):
        seen = _seen_from(store, shas, name)
        assert seen["kind"] == "frame-photo", name
        assert seen["other_time_s"] == pytest.approx(edits[name].at_s, abs=FRAME_S), name
        details = seen["details"]
        assert isinstance(details, dict) and details["keypoints"]["agrees"], name
        assert details["frame"]["t"] == seen["other_time_s"]


def test_cut_refps_and_sped_copies_link_with_offset_and_speed(
    linked: Linked,
) -> None:
    store, shas, edits = linked.store, linked.shas, linked.edits
    for name in ("trimmed", "fps15", "fast", "slow"):
        seen = _seen_from(store, shas, name)
        details = seen["details"]
        assert seen["kind"] == "video-video" and isinstance(details, dict), name
        # Seen from the copy: the original's time = speed x the copy's time + offset.
        assert details.get("speed", 1.0) == pytest.approx(edits[name].speed, abs=0.05), name
        assert details["offset_s"] == pytest.approx(edits[name].offset_s, abs=0.15), name


def test_unrelated_footage_links_to_nothing(
    linked: Linked,
) -> None:
    assert matches.links_of(linked.store.database, linked.shas["field"]) == []


def test_similar_names_the_video_and_the_time_of_a_still(linked: Linked, tmp_path: Path) -> None:
    config, shas = linked.config, linked.shas
    query = video_edits.still(HANDHELD, tmp_path / "query.jpg", 3.12, scale=0.8, quality=5)
    found = CliRunner().invoke(
        app, ["--data", str(config.data_dir), "similar", str(query.path), "--json"],
        env={"QARINA_DB_URL": config.db_url},
    )  # fmt: skip
    assert found.exit_code == 0, found.output
    [match] = [m for m in json.loads(found.stdout)["matches"] if m["sha256"] == shas["video"]]
    assert match["kind"] == "frame-photo"
    assert match["item_time_s"] == pytest.approx(3.12, abs=FRAME_S)
