"""Near-duplicate linking: the index, the matcher over a real store, and the commands."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from evidence import matches
from evidence.matches import Link
from evidence.store import Store
from pipelines.cli import app
from pipelines.config import QarinaConfig
from pipelines.dedup.config import MatchConfig
from pipelines.dedup.index import HashIndex
from pipelines.dedup.reports import clusters, dupes_report
from pipelines.ingest import ingest_paths
from pipelines.plan import Plan
from pipelines.samples import audio, photos
from pipelines.samples import videos as sample_videos
from pipelines.session import open_matcher
from tests.flows import DEFAULT_KEYS, ingest_and_run
from workers.hashes import HashEntry


def _random_codes(count: int, seed: int) -> np.ndarray:  # type: ignore[type-arg]
    return np.random.default_rng(seed).integers(0, 256, size=(count, 32), dtype=np.uint8)


def _flipped(code: np.ndarray, bits: int, seed: int) -> np.ndarray:  # type: ignore[type-arg]
    unpacked = np.unpackbits(code)
    unpacked[np.random.default_rng(seed).choice(256, bits, replace=False)] ^= 1
    return np.packbits(unpacked)


def _entries(codes: np.ndarray) -> list[HashEntry]:  # type: ignore[type-arg]
    return [HashEntry("photo", "full", code.tobytes().hex(), quality=100) for code in codes]


def test_index_finds_every_hash_within_32_bits_and_none_beyond() -> None:
    index = HashIndex()
    stored = _random_codes(5000, seed=1)
    index.add("stored", _entries(stored))
    queries = np.stack([_flipped(stored[bits * 7], bits, seed=bits) for bits in range(0, 41)])
    hits = {row: distance for row, entry, distance in index.search(queries, 32) if entry == row * 7}
    assert hits == {bits: bits for bits in range(33)}


def test_index_survives_save_and_load(tmp_path: Path) -> None:
    index = HashIndex()
    index.add("a" * 64, _entries(_random_codes(10, seed=2)))
    index.add(
        "b" * 64,
        [replace(entry, source="sample", t=3.0) for entry in _entries(_random_codes(3, 3))],
    )
    index.save(tmp_path, {"watermark": 7})
    loaded = HashIndex.load(tmp_path)
    assert loaded is not None
    again, state = loaded
    assert state["watermark"] == 7 and again.size == 13 and again.samples_of.tolist() == [0, 3]
    assert again.item_number("b" * 64) == 1 and again.time_of[12] == 3.0
    (tmp_path / "entries.npz").write_bytes(b"damaged")
    assert HashIndex.load(tmp_path) is None


def test_threshold_above_the_exact_range_is_refused() -> None:
    with pytest.raises(ValueError, match=r"0\.\.32"):
        MatchConfig(threshold=33)


def test_a_link_seen_from_its_other_item_is_turned_back() -> None:
    details = {"orientation": "r90", "via": ["full", "crop5"], "offset_s": 4.0}
    link = matches.link_between("b" * 64, "a" * 64, "photo-photo", "pdq", 9, (1.0, 2.0), details)
    # Stored in order (a < b): the turn, the offset and the per-side fields are a's view.
    assert (link.a_sha256, link.a_time_s, link.b_time_s) == ("a" * 64, 2.0, 1.0)
    assert link.details == {"orientation": "r270", "via": ["crop5", "full"], "offset_s": -4.0}
    assert matches.as_seen_from(link, "b" * 64)["details"] == details


def test_clusters_are_connected_components() -> None:
    links = [Link("a", "b", "photo-photo", "pdq", 3), Link("b", "c", "photo-photo", "pdq", 5),
             Link("x", "y", "photo-photo", "pdq", 1)]  # fmt: skip
    assert clusters(links) == [["a", "b", "c"], ["x", "y"]]


@pytest.fixture
def evidence_folder(tmp_path: Path) -> dict[str, Path]:
    """One photo and the copies people make of it; unrelated and blank pictures; a video of
    scenes, a clip cut out of it, and a still of one of its scenes."""
    folder = tmp_path / "intake"
    folder.mkdir()
    original = photos.scene_jpeg(folder / "original.jpg", seed=40)
    with Image.open(original) as image:
        image.resize((320, 240)).save(folder / "small.jpg", quality=60)
        image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(folder / "mirrored.jpg", quality=85)
    files = {
        "original": original,
        "small": folder / "small.jpg",
        "mirrored": folder / "mirrored.jpg",
        "letterboxed": photos.letterboxed(original, folder / "boxed.jpg"),
        "cropped": photos.cropped(original, folder / "cropped.jpg", (0.05, 0.01, 0.02, 0.04)),
        "other": photos.scene_jpeg(folder / "other.jpg", seed=41),
        "blank": photos.striped(folder / "blank1.png", size=(64, 48), image_format="PNG"),
        "video": sample_videos.video_of_scenes(folder / "video.mp4", list(range(50, 62))),
        "still": photos.scene_jpeg(folder / "still.jpg", seed=55, size=(800, 600)),
    }
    Image.new("RGB", (64, 48), (40, 90, 161)).save(folder / "blank2.png")
    files["clip"] = sample_videos.clip_of(files["video"], tmp_path / "clip.mp4", 4.3, 6, "240x180")
    shutil.move(files["clip"], folder / "clip.mp4")
    files["clip"] = folder / "clip.mp4"
    return files


def _ingest_all(store: Store, config: QarinaConfig, folder: Path) -> dict[str, str]:
    """Ingest, process and link; the item of each file name."""
    ingest_and_run(store, config, folder)
    open_matcher(config, store, Plan.default()).update("test")
    report = store.status()
    assert report.open_jobs == 0
    shas: dict[str, str] = {}
    with store.database.reader.connect() as connection:
        from evidence.schema import acquisitions

        for sha, name in connection.execute(
            acquisitions.select().with_only_columns(
                acquisitions.c.sha256, acquisitions.c.original_name
            )
        ):
            shas[bytes(name).decode()] = sha
    return shas


def _links_between(store: Store, first: str, second: str) -> list[Link]:
    return [
        link
        for link in matches.links_of(store.database, first)
        if second in (link.a_sha256, link.b_sha256)
    ]


def test_copies_link_and_different_pictures_do_not(
    store: Store, config: QarinaConfig, evidence_folder: dict[str, Path]
) -> None:
    shas = _ingest_all(store, config, evidence_folder["original"].parent)
    original = shas["original.jpg"]
    for copy in ("small.jpg", "mirrored.jpg", "boxed.jpg", "cropped.jpg"):
        [link] = _links_between(store, original, shas[copy])
        assert link.kind == "photo-photo" and link.distance <= 31, copy
    [cropped] = _links_between(store, original, shas["cropped.jpg"])
    assert cropped.details["keypoints"]["agrees"] is True
    [mirrored] = _links_between(store, original, shas["mirrored.jpg"])
    assert mirrored.details["orientation"] != "r0"
    # A link names the hashes results (by key) it was found among: the current ones only.
    assert mirrored.details["hashes_keys"] == [
        key.as_json() for key in sorted(DEFAULT_KEYS["hashes"])
    ]
    assert not _links_between(store, original, shas["other.jpg"])
    assert not matches.links_of(store.database, shas["blank1.png"])
    assert not matches.links_of(store.database, shas["blank2.png"])

    [still] = _links_between(store, shas["video.mp4"], shas["still.jpg"])
    seen = matches.as_seen_from(still, shas["video.mp4"])
    assert seen["kind"] == "keyframe-photo" and 4.5 <= seen["time_s"] <= 6.0

    [clip] = _links_between(store, shas["video.mp4"], shas["clip.mp4"])
    seen = matches.as_seen_from(clip, shas["clip.mp4"])
    assert seen["kind"] == "video-video"
    assert seen["details"]["offset_s"] == pytest.approx(4.3, abs=1.0)
    assert seen["details"]["frames_matched"] >= 4

    record = store.show(original, DEFAULT_KEYS)
    assert record is not None
    assert {match["other"] for match in record["matches"]} >= {
        shas[name] for name in ("small.jpg", "mirrored.jpg", "boxed.jpg", "cropped.jpg")
    }
    assert store.verify(fixity=False, actor="test").ok


def test_index_grows_with_new_items_and_rebuilds_to_the_same_links(
    sqlite_config: QarinaConfig, evidence_folder: dict[str, Path], tmp_path: Path
) -> None:
    store = Store.open(sqlite_config.db_url, sqlite_config.blob_root)
    try:
        shas = _ingest_all(store, sqlite_config, evidence_folder["original"].parent)
        before = matches.all_links(store.database)
        later = tmp_path / "later"
        later.mkdir()
        photos.cropped(evidence_folder["original"], later / "again.jpg", (0.02, 0.03, 0.0, 0.05))
        ingest_and_run(store, sqlite_config, later)
        report = open_matcher(sqlite_config, store, Plan.default()).update("test")
        assert (report.results_read, report.rebuilt) == (1, False)
        assert report.links_new >= 1
        linked = matches.all_links(store.database)
        shutil.rmtree(sqlite_config.index_dir)
        rebuilt = open_matcher(sqlite_config, store, Plan.default()).update("test")
        assert rebuilt.rebuilt and rebuilt.links_new == 0
        assert rebuilt.results_read == report.results_read + len(
            [sha for sha in set(shas.values()) if _has_hashes(store, sha)]
        )
        assert matches.all_links(store.database) == linked and len(linked) > len(before)
    finally:
        store.close()


def _has_hashes(store: Store, sha: str) -> bool:
    record = store.show(sha, DEFAULT_KEYS)
    return record is not None and record["results"].get("hashes", {}).get("status") == "ok"


def test_dupes_and_similar_commands(
    sqlite_config: QarinaConfig, evidence_folder: dict[str, Path], tmp_path: Path
) -> None:
    store = Store.open(sqlite_config.db_url, sqlite_config.blob_root)
    try:
        shas = _ingest_all(store, sqlite_config, evidence_folder["original"].parent)
        # The same bytes again from another source: an exact duplicate, one item.
        ingest_paths(
            store, Plan.default(), sqlite_config, [evidence_folder["original"]], "second-source"
        )
        report = dupes_report(store, Plan.default().keys("hashes"))
        items_before = store.status().items
    finally:
        store.close()
    biggest = report["clusters"][0]
    members = {member["sha256"] for member in biggest["members"]}
    assert {
        shas[name] for name in ("original.jpg", "small.jpg", "mirrored.jpg", "cropped.jpg")
    } <= members
    assert biggest["sources"] == ["second-source", "test-source"]
    assert all(link["distance"] <= 31 for link in biggest["links"])
    assert [exact["sha256"] for exact in report["exact"]] == [shas["original.jpg"]]

    runner = CliRunner()
    env = {"QARINA_DB_URL": sqlite_config.db_url}
    data = ["--data", str(sqlite_config.data_dir)]
    listed = runner.invoke(app, [*data, "dupes", "--json"], env=env)
    assert listed.exit_code == 0, listed.output
    assert json.loads(listed.stdout)["clusters"][0]["members"] == biggest["members"]

    query = photos.cropped(
        evidence_folder["original"], tmp_path / "query.jpg", (0.03, 0.0, 0.0, 0.02)
    )
    found = runner.invoke(app, [*data, "similar", str(query), "--json"], env=env)
    assert found.exit_code == 0, found.output
    answer = json.loads(found.stdout)
    assert answer["query"]["kind"] == "photo"
    assert shas["original.jpg"] in [match["sha256"] for match in answer["matches"]]
    clip = sample_videos.clip_of(
        evidence_folder["video"], tmp_path / "query.mp4", 2.2, 5, "200x150"
    )
    found = runner.invoke(app, [*data, "similar", str(clip), "--json"], env=env)
    assert found.exit_code == 0, found.output
    # The whole video, and the stored clip it overlaps by three seconds.
    videos = {
        m["sha256"]: m for m in json.loads(found.stdout)["matches"] if m["kind"] == "video-video"
    }
    assert set(videos) == {shas["video.mp4"], shas["clip.mp4"]}
    video = videos[shas["video.mp4"]]
    assert video["details"]["offset_s"] == pytest.approx(2.2, abs=1.0)
    refused = runner.invoke(app, [*data, "similar", str(audio.tone(tmp_path / "a.wav"))], env=env)
    assert refused.exit_code == 2 and "cannot hash this file" in refused.output
    store = Store.open(sqlite_config.db_url, sqlite_config.blob_root)
    try:
        assert store.status().items == items_before, "similar must not ingest its file"
    finally:
        store.close()
