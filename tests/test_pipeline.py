"""Ingest and run end to end: every input gets a record, results carry provenance, clean logs."""

from __future__ import annotations

import datetime as dt
import logging
import os
from pathlib import Path

import pytest

from evidence.store import Store
from pipelines.config import QarinaConfig
from pipelines.ingest import ingest_paths
from pipelines.plan import Plan
from pipelines.samples import audio, hostile, photos, videos
from tests.flows import DEFAULT_KEYS, ingest_and_run

SECRET_NAME = "witness-abu-karim-statement"
LATITUDE, LONGITUDE = 36.2021, 37.1343


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Photos with and without EXIF, a video with speech, a voice note, and broken inputs."""
    folder = tmp_path_factory.mktemp("intake")
    taken = dt.datetime(2024, 3, 12, 10, 15, tzinfo=dt.timezone(dt.timedelta(hours=3)))
    photos.photo(
        folder / f"{SECRET_NAME}.jpg",
        size=(320, 240),
        exif=photos.exif_bytes(datetime_original=taken, gps=(LATITUDE, LONGITUDE, 390.0)),
    )
    photos.photo(folder / "stripped.png", size=(320, 240), seed=2)  # JPEG bytes, wrong extension
    speech = audio.speech(folder / "speech.wav")
    video = videos.video_with_cuts(
        folder / "clip.mp4",
        shots=3,
        size="320x240",
        rate=25,
        audio=speech,
        preset="veryfast",
    )
    hostile.truncated_copy(video, folder / "broken.mp4", keep=0.02)
    hostile.html_page(folder / "page.mp4")
    (folder / "empty.jpg").write_bytes(b"")
    return folder


def test_every_input_ends_with_a_record(
    store: Store, config: QarinaConfig, mixed_folder: Path
) -> None:
    shas = ingest_and_run(store, config, mixed_folder)
    assert len(shas) == 7
    records = {sha: store.show(sha, DEFAULT_KEYS) for sha in shas}
    kinds = sorted(str(record["kind"]) for record in records.values() if record)
    assert kinds == ["audio", "other", "other", "other", "photo", "photo", "video"]
    for sha, record in records.items():
        assert record is not None
        assert record["pending"] == [], sha
        ended = set(record["results"]) | {failure["stage"] for failure in record["failures"]}
        assert "probe" in ended
        if record["kind"] in ("photo", "video", "audio"):
            assert "metadata" in record["results"]
    failure_reasons = sorted(
        failure["reason"] for record in records.values() if record for failure in record["failures"]
    )
    assert failure_reasons == ["corrupt_media", "unsupported_type", "unsupported_type"]
    assert store.status().open_jobs == 0
    assert store.verify(fixity=True, actor="test").ok


def test_result_json_shape_and_provenance(
    store: Store, config: QarinaConfig, mixed_folder: Path
) -> None:
    ingest_and_run(store, config, mixed_folder)
    photo = next(
        record
        for sha in _all_items(store)
        if (record := store.show(sha, DEFAULT_KEYS))
        and record["acquisitions"][0]["original_name"].startswith(SECRET_NAME)
    )
    metadata = photo["results"]["metadata"]
    assert metadata["data"]["gps"]["lat"] == pytest.approx(LATITUDE, abs=1e-4)
    assert metadata["data"]["captured_at"] == "2024-03-12T10:15:00+03:00"
    provenance = metadata["provenance"]
    for key in (
        "stage_version",
        "config_hash",
        "params",
        "tools",
        "host",
        "node",
        "started_at",
        "finished_at",
    ):
        assert key in provenance, key
    assert "exiftool" in " ".join(provenance["tools"]).lower()
    assert photo["acquisitions"][0]["source"] == "test-source"
    assert photo["acquisitions"][0]["priority"] == 3


def _all_items(store: Store) -> list[str]:
    import sqlalchemy as sa

    from evidence.schema import items

    with store.database.reader.connect() as connection:
        return list(connection.execute(sa.select(items.c.sha256)).scalars())


def test_rerunning_a_finished_queue_stores_nothing_new(
    store: Store, config: QarinaConfig, mixed_folder: Path
) -> None:
    ingest_and_run(store, config, mixed_folder)
    before = store.verify(fixity=False, actor="test").chain.events
    # Ingesting the same folder again adds acquisitions, not items, jobs or results.
    shas = ingest_and_run(store, config, mixed_folder)
    after = store.status()
    assert after.open_jobs == 0 and after.items == len(shas)
    record = store.show(shas[0], DEFAULT_KEYS)
    assert record is not None and len(record["acquisitions"]) == 2
    # The first verify's own event, then 7 ingest events; no result was committed again.
    assert store.verify(fixity=False, actor="test").chain.events == before + 1 + 7


def test_special_files_are_refused_with_a_custody_record(
    store: Store, config: QarinaConfig, tmp_path: Path
) -> None:
    folder = tmp_path / "odd"
    folder.mkdir()
    os.mkfifo(folder / "pipe.mp4")
    (folder / "link.jpg").symlink_to("/etc/passwd")
    (folder / "dirlink").symlink_to(tmp_path)
    summary = ingest_paths(store, Plan.default(), config, [folder], source="odd")
    assert summary.refused == {"fifo": 1, "symlink": 2}
    assert summary.new_items == 0
    assert store.verify(fixity=False, actor="t").chain.events == 3


def test_logs_never_name_files_or_places(
    sqlite_config: QarinaConfig, mixed_folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    store = Store.open(sqlite_config.db_url, sqlite_config.blob_root)
    try:
        ingest_and_run(store, sqlite_config, mixed_folder)
    finally:
        store.close()
    text = caplog.text
    assert "ingested item" in text  # the log does speak, by hash
    for secret in (SECRET_NAME, "stripped", "broken", "page.mp4", str(LATITUDE), "36.20", "37.13"):
        assert secret not in text, secret
