"""The store under faults (issue 17): a full disk, a database locked past its busy timeout, a
PostgreSQL connection dropped at commit, two runners on one job, a flipped byte in an artifact
and a custody event rewritten offline.

Real SQLite, real PostgreSQL and real files throughout: a fault enters at the system call
(`os.write`, `os.fsync`, `os.link`) or at the connection (a lock another connection holds, a
backend the server terminates), never through a stand-in for the store. Each test ends by
counting: one result per job, one custody event per result, and what `verify` says.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import errno
import hashlib
import os
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from evidence import custody, db
from evidence.blobs import file_sha256
from evidence.records import Outcome
from evidence.schema import acquisitions, artifacts, custody_events, jobs, results
from evidence.store import Store
from pipelines.config import QarinaConfig
from pipelines.execute import Task
from pipelines.ingest import ingest_paths
from pipelines.plan import Plan
from pipelines.runner import RunSummary, SequentialExecutor, run_plan, run_queue
from pipelines.samples import photos, videos

ACTOR = "auditor"
#: A lease that runs out while its batch is still being handed over (the race of two runners).
SHORT_LEASE = dt.timedelta(milliseconds=200)


# --- helpers -------------------------------------------------------------------------------


class FullDisk:
    """The blob store's file system with `free` bytes left (None: room enough again).

    `fault` says where the refusal comes, as a full file system gives it: "write" cuts the
    write into the store's temporary area short where the room ends and refuses the next with
    ENOSPC; "fsync" takes every byte and refuses them at the sync (a network or thin-provisioned
    disk reports it there); "link" has no room for the blob's name under its hash. Files
    outside the blob store are written as usual.
    """

    def __init__(self, blob_root: Path, fault: str, monkeypatch: pytest.MonkeyPatch) -> None:
        self.free: int | None = 0
        self.refusals = 0
        self._temporary = f"{blob_root / 'tmp'}{os.sep}"
        self._hashed = f"{blob_root / 'sha256'}{os.sep}"
        self._lock = threading.Lock()
        real_write, real_fsync, real_link = os.write, os.fsync, os.link

        def write(fd: int, data: bytes | memoryview) -> int:
            if fault != "write" or not self._temporary_file(fd):
                return real_write(fd, data)
            with self._lock:
                if self.free is None:
                    return real_write(fd, data)
                if self.free == 0:
                    raise self._refuse()
                written = real_write(fd, memoryview(data)[: self.free])
                self.free -= written
                return written

        def fsync(fd: int) -> None:
            if fault == "fsync" and self.free is not None and self._temporary_file(fd):
                raise self._refuse()
            real_fsync(fd)

        def link(source: Path, target: Path, **kwargs: Any) -> None:
            if fault == "link" and self.free is not None and str(target).startswith(self._hashed):
                raise self._refuse()
            real_link(source, target, **kwargs)

        monkeypatch.setattr(os, "write", write)
        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "fdatasync", fsync)
        monkeypatch.setattr(os, "link", link)

    def _temporary_file(self, fd: int) -> bool:
        try:
            return os.readlink(f"/proc/self/fd/{fd}").startswith(self._temporary)
        except OSError:
            return False

    def _refuse(self) -> OSError:
        self.refusals += 1
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _leftovers(blob_root: Path) -> list[Path]:
    """What the blob store's temporary area still holds: a copy that failed must leave none."""
    temporary = blob_root / "tmp"
    return sorted(temporary.iterdir()) if temporary.is_dir() else []


def _stored_names(blob_root: Path) -> set[str]:
    """Every name under `sha256/`: what a reader of the blob store can find by hash."""
    return {path.name for path in (blob_root / "sha256").rglob("*") if path.is_file()}


class OnFirstCommit(SequentialExecutor):
    """The sequential executor, calling `hook` once: when it hands its first finished batches to
    the driver, after the stage ran and before the driver commits what came back."""

    def __init__(self, plan: Plan, config: QarinaConfig, hook: Callable[[], None]) -> None:
        super().__init__(plan, config)
        self._hook: Callable[[], None] | None = hook

    def collect(self, timeout_s: float) -> list[tuple[list[Task], list[Outcome]]]:
        done = super().collect(timeout_s)
        if done and self._hook is not None:
            hook, self._hook = self._hook, None
            hook()
        return done


def _run(
    store: Store,
    plan: Plan,
    config: QarinaConfig,
    executor: SequentialExecutor,
    between_batches: Callable[[], None] | None = None,
) -> RunSummary:
    try:
        return run_queue(store, plan, executor, config, between_batches=between_batches)
    finally:
        executor.close()


@dataclasses.dataclass(frozen=True)
class JobState:
    state: str
    attempts: int
    error_reason: str | None


def _job(store: Store, sha256: str, stage: str) -> JobState | None:
    with store.database.reader.connect() as connection:
        row = connection.execute(
            sa.select(jobs.c.state, jobs.c.attempts, jobs.c.error_reason).where(
                jobs.c.sha256 == sha256, jobs.c.stage == stage
            )
        ).first()
    return None if row is None else JobState(row.state, row.attempts, row.error_reason)


def _events(store: Store, *actions: str) -> list[custody.StoredEvent]:
    """The custody events of these actions, oldest first."""
    with store.database.reader.connect() as connection:
        return [event for event in custody.events(connection) if event.action in actions]


def _assert_each_result_once(store: Store, done: int) -> None:
    """`done` jobs ended done, each with one result and one custody event telling of it, and
    `verify` finds the chain whole and every blob (originals and artifacts) as stored."""
    with store.database.reader.connect() as connection:
        ended = connection.execute(
            sa.select(jobs.c.sha256, jobs.c.stage).where(jobs.c.state == "done")
        ).all()
        stored = Counter(
            (row.sha256, row.stage)
            for row in connection.execute(sa.select(results.c.sha256, results.c.stage))
        )
    told = Counter((event.item_sha256, event.stage) for event in _events(store, "result", "skip"))
    assert len(ended) == done
    every = Counter((row.sha256, row.stage) for row in ended)
    assert stored == every
    assert told == every
    report = store.verify(fixity=True, actor=ACTOR)
    assert report.chain.first_break is None
    assert report.fixity_problems == []


def _sqlite_path(store: Store) -> str:
    path = sa.make_url(store.database.url).database
    assert path is not None
    return path


def _shorten_busy_timeout(store: Store, ms: int) -> None:
    """The store's SQLite waits 60 s for the write lock before it says busy; here, `ms`."""

    @sa.event.listens_for(store.database.writer, "connect")
    def _short(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.execute(f"PRAGMA busy_timeout={ms}")

    store.database.writer.dispose()


class WriteLock:
    """Another process's exclusive write transaction on a SQLite store, held from a thread
    until `hold_s` passed (None: until `release`)."""

    def __init__(self, path: str, hold_s: float | None) -> None:
        self._path, self._hold_s = path, hold_s
        self._taken, self._released = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._hold)

    def take(self) -> None:
        self._thread.start()
        assert self._taken.wait(10)

    def release(self) -> None:
        self._released.set()
        self._thread.join()

    def _hold(self) -> None:
        connection = sqlite3.connect(self._path, isolation_level=None, timeout=10)
        try:
            connection.execute("BEGIN EXCLUSIVE")
            self._taken.set()
            self._released.wait(self._hold_s)
            connection.execute("ROLLBACK")
        finally:
            connection.close()


@pytest.fixture
def photo_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    for seed in range(2):
        photos.photo(folder / f"{seed}.jpg", size=(320, 240), seed=seed)
    return folder


@pytest.fixture(scope="module")
def video_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One short video of two shots: the keyframes stage derives a JPEG of each."""
    folder = tmp_path_factory.mktemp("video")
    videos.video_with_cuts(folder / "clip.mp4", size="160x120", audio=None)
    return folder


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- a full disk ---------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["write", "fsync", "link"])
def test_a_full_disk_refuses_the_file_by_reason_and_a_later_ingest_stores_it(
    fault: str,
    store: Store,
    config: QarinaConfig,
    photo_folder: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = sorted(photo_folder.iterdir())[0]
    sha = _sha256(first)
    plan = Plan.default(only=["probe"])
    disk = FullDisk(config.blob_root, fault, monkeypatch)
    disk.free = 4096  # a first write goes partway in before the disk is full

    refused = ingest_paths(store, plan, config, [first], source="faults")

    assert refused.refused == {f"os_error:{errno.ENOSPC}": 1}
    assert refused.new_items == 0 and disk.refusals >= 1
    # Nothing under its hash, no part of it left behind, and a custody event says why.
    assert not store.blobs.path_for(sha).exists()
    assert _leftovers(config.blob_root) == []
    [event] = _events(store, "ingest_refused")
    assert event.details["reason"] == f"os_error:{errno.ENOSPC}"

    disk.free = None  # room again: the same file, ingested again, is stored whole
    stored = ingest_paths(store, plan, config, [first], source="faults")

    assert stored.new_items == 1 and stored.sha256s == [sha]
    assert file_sha256(store.blobs.path_for(sha)) == sha
    assert _leftovers(config.blob_root) == []
    report = store.verify(fixity=True, actor=ACTOR)
    assert report.ok and report.blobs_checked == 1


def test_no_descriptor_for_the_read_back_refuses_the_file_as_what_it_is(
    store: Store, config: QarinaConfig, photo_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process out of descriptors (EMFILE) when the copy opens its read-back: an OS error
    named by its errno, not a hash mismatch that would read as a damaged copy."""
    first = sorted(photo_folder.iterdir())[0]
    temporary = f"{config.blob_root / 'tmp'}{os.sep}"
    real_open = os.open

    def open_(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if str(path).startswith(temporary) and flags & os.O_ACCMODE == os.O_RDONLY:
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_)
    refused = ingest_paths(store, Plan.default(only=["probe"]), config, [first], source="faults")

    assert refused.refused == {f"os_error:{errno.EMFILE}": 1}
    assert _leftovers(config.blob_root) == []


def test_a_full_disk_fails_a_keyframes_job_as_a_store_error_and_its_retry_stores_them(
    store: Store,
    config: QarinaConfig,
    video_folder: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The disk fills while the keyframes stage stores its first JPEG: the job fails as a
    retryable store_error with no keyframe under any hash; once there is room, its retry
    stores every keyframe whole and the job ends done with one result."""
    plan = Plan.default(only=["probe", "keyframes"])
    [sha] = ingest_paths(store, plan, config, [video_folder], source="faults").sha256s
    disk = FullDisk(config.blob_root, "write", monkeypatch)
    disk.free = 1024  # less than one keyframe JPEG
    when_failed: list[tuple[set[str], list[Path]]] = []

    def room_after_the_failure() -> None:
        job = _job(store, sha, "keyframes")
        if disk.free is not None and job is not None and job.error_reason == "store_error":
            assert job.state == "queued"
            when_failed.append((_stored_names(config.blob_root), _leftovers(config.blob_root)))
            disk.free = None

    _run(store, plan, config, SequentialExecutor(plan, config), room_after_the_failure)

    assert when_failed == [({sha}, [])]
    job = _job(store, sha, "keyframes")
    assert job is not None and (job.state, job.attempts) == ("done", 1)
    told = [
        (event.action, event.details.get("reason"), event.details.get("detail"))
        for event in _events(store, "result", "failure")
        if event.stage == "keyframes"
    ]
    assert told == [
        ("failure", "store_error", f"I/O error {errno.ENOSPC} (OSError)"),
        ("result", None, None),
    ]
    with store.database.reader.connect() as connection:
        frames = connection.execute(sa.select(artifacts.c.sha256)).scalars().all()
    assert frames and _stored_names(config.blob_root) == {sha, *frames}
    assert _leftovers(config.blob_root) == []
    _assert_each_result_once(store, done=2)


# --- a locked database ---------------------------------------------------------------------


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_commit_locked_out_past_the_busy_timeout_backs_off_and_lands_once(
    store: Store,
    config: QarinaConfig,
    photo_folder: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Another writer holds SQLite's write lock longer than the busy timeout while the driver
    commits: the commit backs off, tries again, and lands once the lock is let go."""
    plan = Plan.default(only=["probe"])
    ingest_paths(store, plan, config, [photo_folder], source="faults")
    _shorten_busy_timeout(store, ms=100)
    lock = WriteLock(_sqlite_path(store), hold_s=0.6)

    started = time.monotonic()
    summary = _run(store, plan, config, OnFirstCommit(plan, config, lock.take))
    lock.release()

    assert time.monotonic() - started >= 0.6
    assert (summary.committed, summary.stale) == (2, 0)
    assert any("locked" in record.getMessage() for record in caplog.records)
    _assert_each_result_once(store, done=2)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_driver_starting_against_a_locked_store_waits_for_it_instead_of_stopping(
    store: Store, config: QarinaConfig, photo_folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The queue's own writes (releasing expired leases, leasing) back off like a commit:
    a service must not stop because another writer held the store for a while."""
    plan = Plan.default(only=["probe"])
    ingest_paths(store, plan, config, [photo_folder], source="faults")
    _shorten_busy_timeout(store, ms=100)
    lock = WriteLock(_sqlite_path(store), hold_s=0.6)
    lock.take()

    summary = run_plan(store, plan, config)
    lock.release()

    assert (summary.committed, summary.stale) == (2, 0)
    retried = [record.getMessage() for record in caplog.records if "locked" in record.getMessage()]
    assert retried and "commit" not in retried[0]
    _assert_each_result_once(store, done=2)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_commit_locked_out_for_good_gives_up_and_a_restart_stores_each_result_once(
    store: Store,
    config: QarinaConfig,
    photo_folder: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A lock that outlasts every retry ends the driver with the database's error: its
    outcomes go with it, its leases run out, and the next driver stores each result once."""
    monkeypatch.setattr(db, "_RETRY_DELAYS_S", (0.05, 0.05))
    short = dataclasses.replace(config, lease_ttl=dt.timedelta(seconds=1))
    plan = Plan.default(only=["probe"])
    ingest_paths(store, plan, short, [photo_folder], source="faults")
    _shorten_busy_timeout(store, ms=100)
    lock = WriteLock(_sqlite_path(store), hold_s=None)

    with pytest.raises(sa.exc.OperationalError, match="locked"):
        _run(store, plan, short, OnFirstCommit(plan, short, lock.take))
    lock.release()

    assert _events(store, "result") == []
    time.sleep(short.lease_ttl.total_seconds())
    summary = run_plan(store, plan, short)
    assert (summary.committed, summary.stale) == (2, 0)
    _assert_each_result_once(store, done=2)


# --- a dropped PostgreSQL connection -------------------------------------------------------


class DropAtCommit:
    """The server terminates the store's backend at the first COMMIT after `arm`: before the
    COMMIT reached it (`landed` False: nothing committed) or after (committed, but the answer
    never came back)."""

    def __init__(
        self, store: Store, admin: sa.Engine, landed: bool, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        self.terminated: list[int] = []
        self._armed = threading.Event()
        self._admin, self.landed = admin, landed
        dialect = store.database.writer.dialect
        self._real_commit = dialect.do_commit
        monkeypatch.setattr(dialect, "do_commit", self._commit)

    def arm(self) -> None:
        self._armed.set()

    def _commit(self, dbapi_connection: Any) -> None:
        if not self._armed.is_set():
            self._real_commit(dbapi_connection)
            return
        self._armed.clear()
        driver = dbapi_connection.driver_connection  # psycopg's own connection
        pid = driver.info.backend_pid
        if self.landed:
            self._real_commit(dbapi_connection)
        with self._admin.connect() as connection:
            # Waits (up to 5 s) until the backend is gone, so a COMMIT cannot outrun it.
            ended = connection.execute(
                sa.text("SELECT pg_terminate_backend(:pid, 5000)"), {"pid": pid}
            ).scalar_one()
        assert ended
        self.terminated.append(pid)
        if self.landed:
            driver.execute("SELECT 1")  # what comes back is the end of the connection
        else:
            self._real_commit(dbapi_connection)  # the COMMIT finds the server gone


@pytest.fixture(params=[False, True], ids=["before-commit", "after-commit"])
def drop(
    request: pytest.FixtureRequest,
    store: Store,
    config: QarinaConfig,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[DropAtCommit]:
    admin = sa.create_engine(config.db_url, isolation_level="AUTOCOMMIT")
    yield DropAtCommit(store, admin, request.param, monkeypatch)
    admin.dispose()


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_connection_dropped_at_commit_reconnects_and_stores_each_result_once(
    drop: DropAtCommit,
    store: Store,
    config: QarinaConfig,
    photo_folder: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The driver reconnects and commits again, and the fencing token keeps a commit that had
    landed from landing twice."""
    plan = Plan.default(only=["probe"])
    ingest_paths(store, plan, config, [photo_folder], source="faults")
    summary = _run(store, plan, config, OnFirstCommit(plan, config, drop.arm))

    assert len(drop.terminated) == 1
    assert any("unreachable" in record.getMessage() for record in caplog.records)
    # A commit that had landed is found by its retry: its leases ended, so it adds nothing.
    assert (summary.committed, summary.stale) == ((0, 2) if drop.landed else (2, 0))
    _assert_each_result_once(store, done=2)


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_connection_dropped_at_registration_records_the_arrival_once(
    drop: DropAtCommit,
    store: Store,
    config: QarinaConfig,
    photo_folder: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The connection drops as the first file's arrival commits; the registration is tried
    again, and its arrival key tells the retry whether the first try landed: one acquisition,
    one ingest event and one set of jobs per file either way, and the item counted new."""
    record_arrival = store._record_arrival

    def arrive_then_drop(*args: Any, **kwargs: Any) -> Any:
        if not drop.terminated:
            drop.arm()
        return record_arrival(*args, **kwargs)

    monkeypatch.setattr(store, "_record_arrival", arrive_then_drop)
    plan = Plan.default(only=["probe"])
    summary = ingest_paths(store, plan, config, [photo_folder], source="faults")

    assert len(drop.terminated) == 1
    assert any("registration" in record.getMessage() for record in caplog.records)
    assert (summary.files, summary.new_items, summary.refused) == (2, 2, {})
    with store.database.reader.connect() as connection:
        arrivals = Counter(connection.execute(sa.select(acquisitions.c.sha256)).scalars())
        queued = Counter(connection.execute(sa.select(jobs.c.sha256)).scalars())
    told = Counter(event.item_sha256 for event in _events(store, "ingest"))
    files = {_sha256(path) for path in photo_folder.iterdir()}
    assert arrivals == queued == told == Counter(files)
    assert _run(store, plan, config, SequentialExecutor(plan, config)).committed == 2
    _assert_each_result_once(store, done=2)


# --- two runners on one job ----------------------------------------------------------------


def test_a_runner_whose_lease_ran_out_cannot_commit_over_the_runner_that_took_its_jobs(
    store: Store, config: QarinaConfig, photo_folder: Path
) -> None:
    """The first runner's leases run out while its batch is handed over (a stalled node); a
    second runner, with a store of its own, returns them to the queue, leases them under new
    tokens and commits. The first then commits under its old tokens: refused, nothing stored
    twice, no custody event of its own."""
    slow = dataclasses.replace(config, lease_ttl=SHORT_LEASE)
    plan = Plan.default(only=["probe"])
    ingest_paths(store, plan, config, [photo_folder], source="faults")
    second: list[RunSummary] = []

    def a_second_runner_takes_over() -> None:
        time.sleep(SHORT_LEASE.total_seconds() * 1.5)
        other = Store.open(config.db_url, config.blob_root)
        try:
            second.append(run_plan(other, plan, config))
        finally:
            other.close()

    first = _run(store, plan, slow, OnFirstCommit(plan, slow, a_second_runner_takes_over))

    [taken] = second
    assert (taken.committed, taken.stale) == (2, 0)
    assert (first.committed, first.stale) == (0, 2)
    actors = {event.actor for event in _events(store, "result", "skip", "failure")}
    assert len(actors) == 1
    _assert_each_result_once(store, done=2)


# --- a flipped byte in an artifact ---------------------------------------------------------


def test_a_flipped_byte_in_a_keyframe_is_named_by_fixity_and_nothing_repairs_it(
    store: Store, config: QarinaConfig, video_folder: Path, tmp_path: Path
) -> None:
    plan = Plan.default(only=["probe", "keyframes"])
    ingest_paths(store, plan, config, [video_folder], source="faults")
    run_plan(store, plan, config)
    with store.database.reader.connect() as connection:
        frame = connection.execute(
            sa.select(artifacts.c.sha256).where(artifacts.c.role == "keyframe").limit(1)
        ).scalar_one()
    path = store.blobs.path_for(frame)
    whole = path.read_bytes()
    altered = bytearray(whole)
    altered[len(altered) // 2] ^= 0x01
    path.chmod(0o644)
    path.write_bytes(bytes(altered))
    path.chmod(0o444)

    report = store.verify(fixity=True, actor=ACTOR)

    assert report.chain.first_break is None
    assert [(problem.sha256, problem.problem) for problem in report.fixity_problems] == [
        (frame, "content changed")
    ]
    [logged] = _events(store, "verify")[-1:]
    assert logged.details["fixity_problems"] == [frame]
    # The right bytes arriving again do not overwrite it quietly: the altered file stays as
    # found, for an operator to see, and the next check names it again.
    again = tmp_path / "whole.jpg"
    again.write_bytes(whole)
    assert store.blobs.put(again).created is False
    assert path.read_bytes() == bytes(altered)
    assert [
        problem.sha256 for problem in store.verify(fixity=True, actor=ACTOR).fixity_problems
    ] == [frame]


# --- a custody event rewritten offline -----------------------------------------------------


def _rewrite_offline(url: str, statements: Callable[[sa.Connection], None]) -> None:
    """Change the custody log as someone with the database file or a superuser would: on a
    connection of their own, with the append-only triggers out of the way."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as connection:
            if connection.dialect.name == "sqlite":
                connection.execute(sa.text("DROP TRIGGER custody_events_no_update"))
                connection.execute(sa.text("DROP TRIGGER custody_events_no_delete"))
            else:
                connection.execute(sa.text("ALTER TABLE custody_events DISABLE TRIGGER USER"))
            statements(connection)
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("forgery", "broken_at", "problem"),
    [
        # The event's own hash is computed again, so it checks: the next event's link breaks.
        ("rewritten_and_rehashed", 3, "link to previous event broken"),
        ("deleted", 2, "event missing"),
    ],
)
def test_a_custody_event_changed_offline_is_named_by_verify(
    forgery: str,
    broken_at: int,
    problem: str,
    store: Store,
    config: QarinaConfig,
    photo_folder: Path,
) -> None:
    ingest_paths(store, Plan.default(only=["probe"]), config, [photo_folder], source="faults")
    assert store.verify(fixity=False, actor=ACTOR).ok  # events 1, 2 (ingests), 3 (verify)

    def forge(connection: sa.Connection) -> None:
        target = custody_events.c.seq == 2
        if forgery == "deleted":
            connection.execute(sa.delete(custody_events).where(target))
            return
        original = next(custody.events(connection, after_seq=1))
        details = {**original.details, "operator": "someone-else"}
        forged = dataclasses.replace(original, details_text=custody.canonical_json(details))
        connection.execute(
            sa.update(custody_events)
            .where(target)
            .values(details=forged.details_text, event_hash=forged.recomputed_hash())
        )

    _rewrite_offline(config.db_url, forge)
    report = store.verify(fixity=True, actor=ACTOR)

    assert not report.ok
    assert report.chain.first_break == custody.ChainBreak(broken_at, problem)
    [logged] = _events(store, "verify")[-1:]
    details = logged.details
    assert (details["chain_ok"], details["first_break_seq"]) == (False, broken_at)
