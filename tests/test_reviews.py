"""Reviewers' labels: recorded in custody, carried across near-duplicate clusters (copies
linked after the review included), counted by status, and the `qarina review` command."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import sqlalchemy as sa
from PIL import Image
from typer.testing import CliRunner

from evidence import custody, matches, reviews
from evidence.records import JobSpec
from evidence.schema import custody_events, items
from evidence.store import Acquisition, Store
from pipelines.cli import app
from pipelines.config import QarinaConfig
from pipelines.plan import Plan
from pipelines.samples import photos
from pipelines.session import open_matcher
from tests.flows import DEFAULT_KEYS, ingest_and_run


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _ingest_and_link(store: Store, config: QarinaConfig, folder: Path) -> None:
    ingest_and_run(store, config, folder)
    open_matcher(config, store, Plan.default()).update("test")


@pytest.fixture
def pictures(tmp_path: Path) -> dict[str, Path]:
    """A photo and two copies people make of it, an unrelated photo, and a text file."""
    folder = tmp_path / "intake"
    folder.mkdir()
    original = photos.scene_jpeg(folder / "original.jpg", seed=40)
    with Image.open(original) as image:
        image.resize((320, 240)).save(folder / "small.jpg", quality=60)
    (folder / "notes.txt").write_text("a witness's notes\n")
    return {
        "original": original,
        "small": folder / "small.jpg",
        "boxed": photos.letterboxed(original, folder / "boxed.jpg"),
        "other": photos.scene_jpeg(folder / "other.jpg", seed=41),
        "notes": folder / "notes.txt",
    }


def test_a_label_covers_the_cluster_and_copies_linked_later(
    store: Store, config: QarinaConfig, pictures: dict[str, Path], tmp_path: Path
) -> None:
    _ingest_and_link(store, config, pictures["original"].parent)
    sha = {name: _sha(path) for name, path in pictures.items()}
    # Four pictures to look at; the text file is not one.
    assert reviews.unreviewed_count(store.database) == 4

    review = reviews.record_review(
        store.database, sha["small"], "graphic", "alice", "bodies, second frame"
    )
    assert (review.sha256, review.label, review.reviewer) == (sha["small"], "graphic", "alice")
    assert review.at.tzinfo is not None

    with store.database.reader.connect() as connection:
        [event] = [e for e in custody.item_trail(connection, sha["small"]) if e.action == "review"]
    assert event.seq == review.custody_seq and event.actor == "qarina-review@alice"
    assert event.details == {
        "label": "graphic",
        "note": "bodies, second frame",
        "reviewer": "alice",
        "cluster": sorted([sha["original"], sha["boxed"]]),
    }
    assert store.verify(fixity=False, actor="test").ok

    # Every copy shows the label, given on another item; the unrelated photo does not.
    for name in ("original", "small", "boxed"):
        assert reviews.cluster_reviews(store.database, sha[name]) == [review], name
    assert reviews.cluster_reviews(store.database, sha["other"]) == []
    assert reviews.unreviewed_count(store.database) == 1
    assert store.status(current=DEFAULT_KEYS).unreviewed_items == 1

    # A copy that arrives after the review is unreviewed until the matcher links it; then
    # it shows the label too.
    later = tmp_path / "later"
    later.mkdir()
    cropped = photos.cropped(pictures["original"], later / "cropped.jpg", (0.05, 0.01, 0.02, 0.04))
    ingest_and_run(store, config, later)
    assert reviews.unreviewed_count(store.database) == 2
    open_matcher(config, store, Plan.default()).update("test")
    assert reviews.cluster_reviews(store.database, _sha(cropped)) == [review]
    assert reviews.unreviewed_count(store.database) == 1

    # A later decision adds to the first, never replaces it; the newest comes first.
    again = reviews.record_review(store.database, sha["original"], "reviewed", "bob", None)
    assert reviews.cluster_reviews(store.database, _sha(cropped)) == [again, review]
    reviews.record_review(store.database, sha["other"], "not-relevant", "bob", None)
    assert reviews.unreviewed_count(store.database) == 0
    assert store.verify(fixity=False, actor="test").ok


def _register(store: Store, tmp_path: Path, name: str, kind: str) -> str:
    """An item of `kind` without processing it: the cluster walks read only `matches`."""
    path = tmp_path / name
    path.write_bytes(name.encode())
    blob = store.blobs.put(path)
    acquisition = Acquisition(
        source="test",
        original_name=os.fsencode(name),
        original_path=os.fsencode(path),
        operator="tester",
    )
    store.register(blob, acquisition, [JobSpec("probe", "1", "cfg")], "test", 3)
    with store.database.writer.begin() as connection:
        connection.execute(sa.update(items).where(items.c.sha256 == blob.sha256).values(kind=kind))
    return blob.sha256


def test_clusters_follow_every_link_kind_through_cycles(store: Store, tmp_path: Path) -> None:
    video, still, photo, clip, alone = (
        _register(store, tmp_path, name, kind)
        for name, kind in (
            ("video", "video"),
            ("still", "photo"),
            ("photo", "photo"),
            ("clip", "video"),
            ("alone", "audio"),
        )
    )
    links = [
        matches.link_between(video, still, "keyframe-photo", "pdq", 4, (3.0, None), {}),
        matches.link_between(still, photo, "photo-photo", "pdq", 9, (None, None), {}),
        matches.link_between(photo, video, "keyframe-photo", "pdq", 7, (None, 5.0), {}),
        matches.link_between(clip, video, "video-video", "pdq", 2, (0.0, 4.3), {}),
    ]
    matches.record(store.database, links, "test")
    assert reviews.cluster_members(store.database, photo) == sorted([video, still, photo, clip])
    review = reviews.record_review(store.database, clip, "graphic", "alice", None)
    found = reviews.cluster_reviews_many(store.database, [video, still, photo, clip, alone])
    assert found == {video: [review], still: [review], photo: [review], clip: [review], alone: []}
    assert reviews.unreviewed_count(store.database) == 1


def test_many_items_cost_one_query_per_thousand(store: Store, tmp_path: Path) -> None:
    reviewed = _register(store, tmp_path, "reviewed", "photo")
    review = reviews.record_review(store.database, reviewed, "reviewed", "alice", None)
    asked = [reviewed, *(f"{number:064x}" for number in range(2500))]
    statements: list[str] = []
    sa.event.listen(
        store.database.reader,
        "before_cursor_execute",
        lambda *args: statements.append(args[2]),
    )
    found = reviews.cluster_reviews_many(store.database, asked)
    walks = [statement for statement in statements if "cluster_walk" in statement]
    assert len(walks) == 3
    assert found[reviewed] == [review] and len(found) == 2501
    assert not any(found[sha] for sha in asked[1:])


def test_an_unknown_label_or_item_is_refused_and_nothing_recorded(
    store: Store, tmp_path: Path
) -> None:
    sha = _register(store, tmp_path, "photo", "photo")
    with store.database.reader.connect() as connection:
        before = connection.execute(sa.select(sa.func.count()).select_from(custody_events))
        events = before.scalar_one()
    with pytest.raises(ValueError, match="unknown label 'gory'"):
        reviews.record_review(store.database, sha, "gory", "alice", None)
    with pytest.raises(reviews.UnknownItem):
        reviews.record_review(store.database, "0" * 64, "graphic", "alice", None)
    with pytest.raises(ValueError, match="NUL"):
        reviews.record_review(store.database, sha, "graphic", "alice", "nul\x00byte")
    with store.database.reader.connect() as connection:
        after = connection.execute(sa.select(sa.func.count()).select_from(custody_events))
        assert after.scalar_one() == events
    assert reviews.cluster_reviews(store.database, sha) == []


def test_review_command(sqlite_config: QarinaConfig, pictures: dict[str, Path]) -> None:
    store = Store.open(sqlite_config.db_url, sqlite_config.blob_root)
    try:
        _ingest_and_link(store, sqlite_config, pictures["original"].parent)
    finally:
        store.close()
    runner = CliRunner()
    env = {"QARINA_DB_URL": sqlite_config.db_url, "QARINA_OPERATOR": "carol"}
    data = ["--data", str(sqlite_config.data_dir)]

    def status() -> int:
        shown = runner.invoke(app, [*data, "status", "--json"], env=env)
        assert shown.exit_code == 0, shown.output
        count: int = json.loads(shown.stdout)["unreviewed_items"]
        return count

    assert status() == 4
    small = _sha(pictures["small"])
    done = runner.invoke(app, [*data, "review", small.upper(), "--label", "graphic"], env=env)
    assert done.exit_code == 0, done.output
    assert f"{small} reviewed as graphic by carol" in done.stdout
    assert "covers 2 other items" in done.stdout
    assert status() == 1
    table = runner.invoke(app, [*data, "status"], env=env)
    assert "1 not reviewed" in table.stdout

    other = _sha(pictures["other"])
    asked = ["--label", "not-relevant", "--note", "a street sign", "--reviewer", "dan", "--json"]
    noted = runner.invoke(app, [*data, "review", other, *asked], env=env)
    assert noted.exit_code == 0, noted.output
    recorded = json.loads(noted.stdout)
    assert (recorded["reviewer"], recorded["note"], recorded["cluster_items"]) == (
        "dan",
        "a street sign",
        1,
    )
    assert status() == 0
    # Who ran the command is the event's actor; the reviewer they named is in its details.
    store = Store.open(sqlite_config.db_url, sqlite_config.blob_root)
    try:
        with store.database.reader.connect() as connection:
            (event,) = [e for e in custody.item_trail(connection, other) if e.action == "review"]
    finally:
        store.close()
    assert (event.actor, event.details["reviewer"]) == ("qarina-review@carol", "dan")

    refused = runner.invoke(app, [*data, "review", small, "--label", "gory"], env=env)
    assert refused.exit_code == 2 and "labels: graphic, reviewed, not-relevant" in refused.output
    unknown = runner.invoke(app, [*data, "review", "0" * 64, "--label", "graphic"], env=env)
    assert unknown.exit_code == 1 and "no item" in unknown.output
