"""The evidence store on both backends: blobs, registration, the job queue, custody, schema."""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import stat
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from evidence import jobs, records
from evidence.blobs import BlobStore, IngestRefused
from evidence.schema import FULL_TEXT_NAMES, custody_events, metadata
from evidence.store import Acquisition, Store

PROBE = records.JobSpec("probe", "1", "cfg")
META = records.JobSpec("metadata", "1", "cfg", requires=(PROBE.key,))
CURRENT = {"probe": frozenset({PROBE.key}), "metadata": frozenset({META.key})}
TTL = dt.timedelta(minutes=5)


def _register(store: Store, path: Path, priority: int = 0, source: str = "test") -> str:
    blob = store.blobs.put(path)
    acquisition = Acquisition(
        source=source,
        original_name=os.fsencode(path.name),
        original_path=os.fsencode(path),
        operator="tester",
        priority=priority,
    )
    store.register(blob, acquisition, [PROBE], actor="test", max_attempts=3)
    return blob.sha256


def _file(tmp_path: Path, name: str, content: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


def _ok(data: dict[str, object] | None = None, **kwargs: object) -> records.Success:
    return records.Success(data or {"value": 1}, {"node": "test"}, **kwargs)  # type: ignore[arg-type]


# --- blobs -------------------------------------------------------------------------------


def test_blob_is_content_addressed_read_only_and_stored_once(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "blobs")
    first = blobs.put(_file(tmp_path, "a.jpg", b"same bytes"))
    second = blobs.put(_file(tmp_path, "b.jpg", b"same bytes"))
    path = blobs.path_for(first.sha256)
    assert (
        path == tmp_path / "blobs" / "sha256" / first.sha256[:2] / first.sha256[2:4] / first.sha256
    )
    assert path.read_bytes() == b"same bytes"
    assert first.created and not second.created and first.sha256 == second.sha256
    assert not path.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    assert not list((tmp_path / "blobs" / "tmp").iterdir())


def test_large_blob_hash_matches_hashlib(tmp_path: Path) -> None:
    import hashlib

    content = os.urandom(20 * 1024 * 1024 + 123)  # several chunks and a ragged tail
    blob = BlobStore(tmp_path / "blobs").put(_file(tmp_path, "big.bin", content))
    assert blob.sha256 == hashlib.sha256(content).hexdigest()
    assert blob.size_bytes == len(content)


def test_symlinks_fifos_and_directories_are_refused(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "blobs")
    target = _file(tmp_path, "real.jpg", b"x")
    (tmp_path / "link.jpg").symlink_to(target)
    os.mkfifo(tmp_path / "pipe.mp4")
    with pytest.raises(IngestRefused, match="symlink"):
        blobs.put(tmp_path / "link.jpg")
    with pytest.raises(IngestRefused, match="fifo"):
        blobs.put(tmp_path / "pipe.mp4")
    with pytest.raises(IngestRefused, match="directory"):
        blobs.put(tmp_path)
    with socket.socket(socket.AF_UNIX) as unix_socket:
        unix_socket.bind(str(tmp_path / "s.sock"))
        with pytest.raises(IngestRefused, match="socket"):
            blobs.put(tmp_path / "s.sock")


# --- registration and queue ----------------------------------------------------------------


def test_same_bytes_twice_is_one_item_two_acquisitions_one_job(
    store: Store, tmp_path: Path
) -> None:
    sha = _register(store, _file(tmp_path, "a.jpg", b"photo"), source="one")
    assert _register(store, _file(tmp_path, "b.jpg", b"photo"), source="two") == sha
    record = store.show(sha, CURRENT)
    assert record is not None
    assert [a["source"] for a in record["acquisitions"]] == ["one", "two"]
    assert [a["original_name"] for a in record["acquisitions"]] == ["a.jpg", "b.jpg"]
    assert store.status().stages[0].counts == {"queued": 1}


def test_undecodable_file_names_are_kept_as_raw_bytes(store: Store, tmp_path: Path) -> None:
    name = b"\xd8\xb5\xd9\x88\xd8\xb1\xd8\xa9-\xff.jpg"  # Arabic, then a byte that is not UTF-8
    path = Path(os.fsdecode(os.fsencode(tmp_path) + b"/" + name))
    path.write_bytes(b"content")
    sha = _register(store, path)
    record = store.show(sha, CURRENT)
    assert record is not None
    assert bytes.fromhex(record["acquisitions"][0]["original_name_hex"]) == name


def test_lease_takes_highest_priority_first(store: Store, tmp_path: Path) -> None:
    low = _register(store, _file(tmp_path, "low", b"low"), priority=0)
    high = _register(store, _file(tmp_path, "high", b"high"), priority=9)
    leased = jobs.lease(store.database, "owner", [PROBE.key], 1, TTL)
    assert [job.sha256 for job in leased] == [high]
    assert [job.sha256 for job in jobs.lease(store.database, "owner", [PROBE.key], 5, TTL)] == [low]


def test_urgent_reacquisition_raises_queued_priority(store: Store, tmp_path: Path) -> None:
    _register(store, _file(tmp_path, "old", b"backlog item"), priority=0)
    other = _register(store, _file(tmp_path, "other", b"other"), priority=5)
    urgent = _register(store, _file(tmp_path, "again", b"backlog item"), priority=10)
    leased = jobs.lease(store.database, "owner", [PROBE.key], 1, TTL)
    assert leased[0].sha256 == urgent != other


def test_result_is_stored_once_and_follow_ups_queued(store: Store, tmp_path: Path) -> None:
    sha = _register(store, _file(tmp_path, "a", b"a"))
    [job] = jobs.lease(store.database, "owner", [PROBE.key], 1, TTL)
    outcome = _ok({"kind": "photo"}, item_kind="photo", follow_ups=[META])
    assert jobs.commit(store.database, [(job, outcome)], "test").committed == 1
    # The same job outcome delivered again (a retried RPC) changes nothing.
    assert jobs.commit(store.database, [(job, outcome)], "test").stale == 1
    record = store.show(sha, CURRENT)
    assert record is not None and record["kind"] == "photo"
    assert list(record["results"]) == ["probe"]
    [follow_up] = jobs.lease(store.database, "owner", [META.key], 5, TTL)
    assert follow_up.sha256 == sha and follow_up.kind == "photo"


def test_stale_lease_cannot_commit_after_reassignment(store: Store, tmp_path: Path) -> None:
    _register(store, _file(tmp_path, "a", b"a"))
    [first] = jobs.lease(store.database, "driver-1", [PROBE.key], 1, dt.timedelta(seconds=-1))
    assert jobs.release_expired(store.database) == 1
    [second] = jobs.lease(store.database, "driver-2", [PROBE.key], 1, TTL)
    assert second.token > first.token
    assert jobs.commit(store.database, [(first, _ok())], "late").stale == 1
    assert jobs.commit(store.database, [(second, _ok())], "live").committed == 1
    with store.database.reader.connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM results")).scalar_one() == 1


def test_retryable_failures_retry_then_die_final_failures_stop(
    store: Store, tmp_path: Path
) -> None:
    flaky = _register(store, _file(tmp_path, "flaky", b"flaky"))
    broken = _register(store, _file(tmp_path, "broken", b"broken"))
    for attempt in range(3):
        leased = {job.sha256: job for job in jobs.lease(store.database, "o", [PROBE.key], 5, TTL)}
        outcomes = [(leased[flaky], records.Failure("tool_timeout", "slow", retryable=True))]
        if attempt == 0:
            outcomes.append(
                (leased[broken], records.Failure("corrupt_media", "bad", retryable=False))
            )
        else:
            assert broken not in leased
        jobs.commit(store.database, outcomes, "test")
    counts = store.status().stages[0].counts
    assert counts == {"dead": 1, "failed": 1}
    flaky_record, broken_record = store.show(flaky, CURRENT), store.show(broken, CURRENT)
    assert flaky_record is not None and broken_record is not None
    assert flaky_record["failures"] == [
        {
            "stage": "probe",
            "reason": "tool_timeout",
            "detail": "slow",
            "state": "dead",
            "attempts": 3,
        }
    ]
    assert broken_record["failures"][0]["reason"] == "corrupt_media"
    assert store.status().failures_by_reason == {"tool_timeout": 1, "corrupt_media": 1}


def test_a_lost_worker_counts_against_nothing_batched_and_against_losses_alone(
    store: Store, tmp_path: Path
) -> None:
    """A worker lost under a batch: the job is queued again with its counts as they were,
    the loss in its custody record and its reason kept for the driver (`last_error`), which
    runs it alone next. Lost alone, it counts against its worker losses, not its attempts,
    and a job that keeps losing its worker alone ends dead."""
    _register(store, _file(tmp_path, "batched", b"batched"))
    lost = "worker lost: ActorDiedError"
    [job] = jobs.lease(store.database, "o", [PROBE.key], 5, TTL)
    assert job.last_error is None
    batched = records.Failure("tool_crash", lost, True, counts_against="nothing")
    jobs.commit(store.database, [(job, batched)], "test")

    alone = records.Failure("tool_crash", lost, True, counts_against="worker_losses")
    for loss in range(jobs.MAX_WORKER_LOSSES):
        [job] = jobs.lease(store.database, "o", [PROBE.key], 5, TTL)
        assert (job.attempts, job.worker_losses, job.last_error) == (0, loss, "tool_crash")
        jobs.commit(store.database, [(job, alone)], "test")
    assert jobs.lease(store.database, "o", [PROBE.key], 5, TTL) == []
    assert store.status().stages[0].counts == {"dead": 1}
    with store.database.reader.connect() as connection:
        details = connection.execute(
            sa.select(custody_events.c.details).where(custody_events.c.action == "failure")
        ).scalars()
        counted = [json.loads(text).get("counts_against", "attempts") for text in details]
    assert counted == ["nothing"] + ["worker_losses"] * jobs.MAX_WORKER_LOSSES


def _custody_count(store: Store) -> int:
    with store.database.reader.connect() as connection:
        return connection.execute(
            sa.select(sa.func.count()).select_from(custody_events)
        ).scalar_one()


def test_an_unstarted_job_goes_back_to_the_queue_as_it_was(store: Store, tmp_path: Path) -> None:
    """A job whose batch never began (its worker died first) is queued again with its counts
    and last error unchanged and no custody event; a stale one is refused like any outcome."""
    _register(store, _file(tmp_path, "waiting", b"waiting"))
    [job] = jobs.lease(store.database, "o", [PROBE.key], 5, TTL)
    crashed = records.Failure("tool_crash", "worker lost", True, counts_against="worker_losses")
    jobs.commit(store.database, [(job, crashed)], "test")
    [job] = jobs.lease(store.database, "o", [PROBE.key], 5, TTL)
    events_before = _custody_count(store)

    unstarted = records.Unstarted("worker lost before the batch began: ActorDiedError")
    report = jobs.commit(store.database, [(job, unstarted), (job, unstarted)], "test")

    assert (report.committed, report.stale, report.returned) == (0, 1, 1)
    assert _custody_count(store) == events_before
    [again] = jobs.lease(store.database, "o", [PROBE.key], 5, TTL)
    assert (again.id, again.attempts, again.worker_losses, again.last_error) == (
        job.id,
        0,
        1,
        "tool_crash",
    )
    assert jobs.commit(store.database, [(job, unstarted)], "test").stale == 1


def test_one_commit_of_many_outcomes_keeps_each_outcome_apart(store: Store, tmp_path: Path) -> None:
    """A batch commit (one statement per kind of write) does for each outcome what a commit
    of it alone would: a stale one, or one delivered twice, is refused without costing the
    others, a failure is retried, a skip queues nothing that needs an ok result, and custody
    follows the batch's order."""
    fresh, late, flaky, skipped = (
        _register(store, _file(tmp_path, name, name.encode()))
        for name in ("fresh", "late", "flaky", "skipped")
    )
    [expired] = jobs.lease(store.database, "driver-1", [PROBE.key], 1, dt.timedelta(seconds=-1))
    assert expired.sha256 == fresh and jobs.release_expired(store.database) == 1
    leased = {
        job.sha256: job for job in jobs.lease(store.database, "driver-2", [PROBE.key], 9, TTL)
    }
    assert set(leased) == {fresh, late, flaky, skipped}
    photo = _ok({"kind": "photo"}, item_kind="photo", follow_ups=[META])
    batch: list[tuple[records.LeasedJob, records.Outcome]] = [
        (leased[late], photo),
        (expired, photo),  # its lease moved on to driver-2
        (leased[flaky], records.Failure("tool_timeout", "slow", True, item_kind="other")),
        (leased[skipped], records.Success({}, {}, skip_reason="no_video", follow_ups=[META])),
        (leased[fresh], photo),
        (leased[late], photo),  # delivered again
    ]
    report = jobs.commit(store.database, batch, "batch")
    assert (report.committed, report.stale) == (4, 2)
    with store.database.reader.connect() as connection:
        events = connection.execute(
            sa.select(custody_events.c.action, custody_events.c.item_sha256)
            .where(custody_events.c.actor == "batch")
            .order_by(custody_events.c.seq)
        ).all()
        stored = connection.execute(sa.text("SELECT sha256 FROM results")).scalars().all()
    assert [tuple(event) for event in events] == [
        ("result", late), ("failure", flaky), ("skip", skipped), ("result", fresh),
    ]  # fmt: skip
    assert sorted(stored) == sorted([late, skipped, fresh])
    follow_ups = jobs.lease(store.database, "driver-2", [META.key], 9, TTL)
    assert sorted(job.sha256 for job in follow_ups) == sorted([late, fresh])
    assert {job.kind for job in follow_ups} == {"photo"}
    [retry] = jobs.lease(store.database, "driver-2", [PROBE.key], 9, TTL)
    assert (retry.sha256, retry.attempts) == (flaky, 1)
    record = store.show(flaky, CURRENT)
    assert record is not None and record["kind"] == "other"
    assert store.verify(fixity=False, actor="t").ok


def test_one_lease_for_several_stages_takes_what_each_lease_would(
    store: Store, tmp_path: Path
) -> None:
    first, second, third = (
        _register(store, _file(tmp_path, name, name.encode())) for name in ("1st", "2nd", "3rd")
    )
    probes = jobs.lease(store.database, "owner", [PROBE.key], 2, TTL)
    photo = _ok({"kind": "photo"}, item_kind="photo", follow_ups=[META])
    jobs.commit(store.database, [(job, photo) for job in probes], "test")
    leased = jobs.lease_each(
        store.database, "owner", [([PROBE.key], 5), ([META.key], 1), ([META.key], 0)], TTL
    )
    assert [[job.sha256 for job in stage] for stage in leased] == [[third], [first], []]
    assert {job.sha256 for job in probes} == {first, second}
    assert jobs.lease_each(store.database, "owner", [([PROBE.key], 5)], TTL) == [[]]


def test_dead_owner_leases_return_to_queue(store: Store, tmp_path: Path) -> None:
    _register(store, _file(tmp_path, "a", b"a"))
    jobs.lease(store.database, "host:1:dead", [PROBE.key], 1, TTL)
    assert jobs.open_jobs(store.database, [PROBE.key]) == 1
    assert jobs.lease(store.database, "other", [PROBE.key], 1, TTL) == []
    assert jobs.release_owners(store.database, ["host:1:dead"]) == 1
    assert len(jobs.lease(store.database, "other", [PROBE.key], 1, TTL)) == 1


def test_status_narrows_to_a_request(store: Store, tmp_path: Path) -> None:
    blob = store.blobs.put(_file(tmp_path, "r", b"requested"))
    store.register(
        blob,
        Acquisition("s", b"r", b"/r", "op", request_ref="RFA-7"),
        [PROBE],
        actor="t",
        max_attempts=3,
    )
    _register(store, _file(tmp_path, "x", b"other"))
    assert store.status("RFA-7").open_jobs == 1
    assert store.status().open_jobs == 2
    assert store.status("RFA-unknown").items == 0


# --- custody -------------------------------------------------------------------------------


def test_custody_chain_verifies_and_detects_an_edit(store: Store, tmp_path: Path) -> None:
    sha = _register(store, _file(tmp_path, "a", b"a"))
    _register(store, _file(tmp_path, "b", b"b"))
    report = store.verify(fixity=True, actor="t")
    assert report.ok and report.chain.events == 2 and report.blobs_checked == 2
    with store.database.writer.begin() as connection:
        if store.database.is_sqlite:
            connection.execute(sa.text("DROP TRIGGER custody_events_no_update"))
        else:
            connection.execute(sa.text("ALTER TABLE custody_events DISABLE TRIGGER USER"))
        connection.execute(
            sa.update(custody_events)
            .where(custody_events.c.seq == 1)
            .values(details=sa.func.replace(custody_events.c.details, sha[:8], "00000000"))
        )
    broken = store.verify(fixity=False, actor="t").chain.first_break
    assert broken is not None and broken.seq == 1 and broken.problem == "event content altered"


def test_custody_rows_cannot_be_updated_or_deleted(store: Store, tmp_path: Path) -> None:
    _register(store, _file(tmp_path, "a", b"a"))
    for statement in (sa.update(custody_events).values(actor="mallory"), sa.delete(custody_events)):
        with pytest.raises(sa.exc.DBAPIError), store.database.writer.begin() as connection:
            connection.execute(statement)


def test_fixity_names_an_altered_blob(store: Store, tmp_path: Path) -> None:
    sha = _register(store, _file(tmp_path, "a", b"original bytes"))
    path = store.blobs.path_for(sha)
    path.chmod(0o644)
    path.write_bytes(b"altered bytes!")
    path.chmod(0o444)
    report = store.verify(fixity=True, actor="t")
    assert not report.ok
    assert [(p.sha256, p.problem) for p in report.fixity_problems] == [(sha, "content changed")]


# --- schema --------------------------------------------------------------------------------


def test_migrations_match_the_schema(store: Store) -> None:
    with store.database.writer.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), metadata)
    # Expression indexes cannot be reflected by every dialect, and the full-text index is
    # each dialect's own; everything else must agree.
    ignored = ("ix_jobs_lease_order", *FULL_TEXT_NAMES)
    assert [d for d in differences if not any(name in str(d) for name in ignored)] == []


def test_opening_twice_is_idempotent(config: object, tmp_path: Path) -> None:
    url = config.db_url  # type: ignore[attr-defined]
    Store.open(url, tmp_path / "b1").close()
    Store.open(url, tmp_path / "b1").close()


def test_an_intake_key_registers_once_and_a_reused_one_leaves_nothing(
    store: Store, tmp_path: Path
) -> None:
    first = store.blobs.put(_file(tmp_path, "a", b"first bytes"))
    other = store.blobs.put(_file(tmp_path, "b", b"other bytes under the same key"))
    arrival = Acquisition("drop", b"a", b"/drop/a", "tester", intake_key="drop:1")
    assert store.register(first, arrival, [PROBE], "t", 3).acquisition_id is not None
    again = store.register(first, arrival, [PROBE], "t", 3)
    reused = store.register(other, arrival, [PROBE], "t", 3)
    assert again.acquisition_id is None and reused.acquisition_id is None
    # The other bytes left no item, job or custody behind: nothing unexplained in the store.
    assert store.show(other.sha256, CURRENT) is None
    assert store.status().items == 1
    assert store.verify(fixity=False, actor="t").chain.events == 1  # the one ingest
