"""Drop folders for real: temporary folders, hostile names, links and pipes, markers, files
still being written, the same name twice, crashes at every step of a take, and a `qarina
watch` process killed with SIGKILL mid-ingest and restarted."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from evidence.blobs import StoredBlob
from evidence.schema import acquisitions, custody_events, items
from evidence.store import Store
from pipelines import watch
from pipelines.bench.photos import make_photos
from pipelines.cli import app
from pipelines.config import QarinaConfig
from pipelines.ingest import Intake, Tree, ingest_paths
from pipelines.plan import Plan
from pipelines.watch import DropFolder, PollReport, Watcher

QARINA = str(Path(sys.executable).parent / "qarina")

#: Names an attacker or a careless tool leaves. Two cannot exist on Linux: a name with NUL
#: (the kernel takes names as C strings) and one holding `/` (`../x` is a path, not a name);
#: `..evil` and `-rf` are the nearest a name comes.
HOSTILE_NAMES = [
    b"line\nbreak.jpg",
    "\u202egpj.exe".encode(),  # right-to-left override: displays as "exe.jpg"
    b"-rf",
    b"--help",
    b"..evil",
    b"\xff\xfe not utf-8 \x80.jpg",
    b" leading space and trailing ",
    b"$(reboot);`id`|&.jpg",
    b"L" * 255,
]


@pytest.fixture
def store(sqlite_config: QarinaConfig) -> Iterator[Store]:
    opened = Store.open(sqlite_config.db_url, sqlite_config.blob_root)
    yield opened
    opened.close()


@pytest.fixture
def drop(tmp_path: Path) -> Path:
    folder = tmp_path / "drop"
    folder.mkdir()
    return folder


def _watcher(
    store: Store,
    config: QarinaConfig,
    drop: Path,
    settle_s: float = 0.0,
    on_ingest: Callable[[], None] | None = None,
    **arrival: object,
) -> Watcher:
    folder = DropFolder(drop, "drop-test", **arrival)  # type: ignore[arg-type]
    return Watcher(store, Plan.default(settings=config), config, folder, settle_s, on_ingest)


def _poll(watcher: Watcher) -> PollReport:
    try:
        return watcher.poll()
    finally:
        watcher.close()


def _rows(store: Store, table: sa.Table) -> list[sa.Row[object]]:
    with store.database.reader.connect() as connection:
        return list(connection.execute(sa.select(table)))


def _names_in(folder: Path) -> set[bytes]:
    return set(os.listdir(os.fsencode(folder)))


def _drop_file(drop: Path, name: bytes, data: bytes) -> bytes:
    path = os.fsencode(drop) + b"/" + name
    with open(path, "wb") as handle:
        handle.write(data)
    return path


def test_dropped_files_are_ingested_once_and_moved_aside(
    store: Store, sqlite_config: QarinaConfig, drop: Path
) -> None:
    _drop_file(drop, b"a.jpg", b"first")
    (drop / "from-a-phone" / "DCIM").mkdir(parents=True)
    _drop_file(drop, b"from-a-phone/DCIM/b.jpg", b"second")
    calls: list[None] = []
    watcher = _watcher(
        store, sqlite_config, drop, on_ingest=lambda: calls.append(None),
        priority=7, request_ref="RFA-9",
    )  # fmt: skip
    try:
        assert watcher.poll() == PollReport(ingested=2)
        assert watcher.poll() == PollReport()
    finally:
        watcher.close()
    assert len(calls) == 2
    assert _names_in(drop / ".ingested") == {b"a.jpg", b"from-a-phone"}
    assert (drop / ".ingested" / "from-a-phone" / "DCIM" / "b.jpg").read_bytes() == b"second"
    # The emptied subfolder stays; nothing is left to take in it.
    assert not list((drop / "from-a-phone" / "DCIM").iterdir())
    arrivals = {row.original_name: row for row in _rows(store, acquisitions)}
    assert set(arrivals) == {b"a.jpg", b"b.jpg"}
    root = os.fsencode(drop.resolve())
    assert arrivals[b"b.jpg"].original_path == root + b"/from-a-phone/DCIM/b.jpg"
    for row in arrivals.values():
        assert row.source == "drop-test"
        assert row.request_ref == "RFA-9"
        assert row.priority == 7
        assert row.intake_key.startswith("drop:")
        assert row.original_mtime is not None
    with store.database.reader.connect() as connection:
        queued = connection.execute(sa.text("SELECT count(*) FROM jobs")).scalar_one()
    assert queued == 2  # the first stage of each


def test_hostile_names_are_kept_as_raw_bytes_and_never_logged(
    store: Store, sqlite_config: QarinaConfig, drop: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ValueError, match="null"):
        _drop_file(drop, b"nul\x00name", b"x")
    for number, name in enumerate(HOSTILE_NAMES):
        _drop_file(drop, name, b"hostile %d" % number)
    report = _poll(_watcher(store, sqlite_config, drop))
    assert report.ingested == len(HOSTILE_NAMES) and report.refused == 0
    root = os.fsencode(drop.resolve())
    arrivals = _rows(store, acquisitions)
    assert sorted(row.original_name for row in arrivals) == sorted(HOSTILE_NAMES)
    assert all(row.original_path == root + b"/" + row.original_name for row in arrivals)
    assert _names_in(drop / ".ingested") == set(HOSTILE_NAMES)
    assert _names_in(drop) == {b".ingested", b".refused"}
    # Blob paths are hashes, whatever the name.
    for path in sqlite_config.blob_root.joinpath("sha256").rglob("*"):
        assert path.is_dir() or len(path.name) == 64
    text = caplog.text
    assert "ingested item" in text
    for name in HOSTILE_NAMES:
        for shown in (name.decode("utf-8", "replace"), name.decode("utf-8", "backslashreplace")):
            assert shown.strip() not in text
    assert "\u202e" not in text and "line\nbreak" not in text


@pytest.mark.allow_logged_errors
def test_links_pipes_and_sockets_are_refused_recorded_once_and_moved_aside(
    store: Store, sqlite_config: QarinaConfig, drop: Path, tmp_path: Path
) -> None:
    secret = tmp_path / "outside.txt"
    secret.write_bytes(b"not evidence, never to be read")
    (drop / "link-to-file").symlink_to(secret)
    (drop / "link-to-folder").symlink_to(tmp_path)
    (drop / "dangling").symlink_to(tmp_path / "nothing")
    os.mkfifo(drop / "pipe")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(drop / "sock"))
    try:
        watcher = _watcher(store, sqlite_config, drop)
        try:
            assert watcher.poll().refused == 5
            assert watcher.poll() == PollReport()
        finally:
            watcher.close()
        assert _poll(_watcher(store, sqlite_config, drop)) == PollReport()
    finally:
        listener.close()
    assert not _rows(store, items)
    reasons = sorted(
        json.loads(row.details)["reason"]
        for row in _rows(store, custody_events)
        if row.action == "ingest_refused"
    )
    assert reasons == ["fifo", "socket", "symlink", "symlink", "symlink"]
    refused = drop / ".refused"
    assert _names_in(refused) == {b"link-to-file", b"link-to-folder", b"dangling", b"pipe", b"sock"}
    assert (refused / "link-to-file").is_symlink()
    assert stat.S_ISFIFO((refused / "pipe").lstat().st_mode)
    assert secret.read_bytes() == b"not evidence, never to be read"


def test_a_link_dropped_as_the_ingested_folder_is_never_followed(
    store: Store, sqlite_config: QarinaConfig, drop: Path, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (drop / ".ingested").symlink_to(elsewhere)
    _drop_file(drop, b"a.jpg", b"a")
    with pytest.raises(NotADirectoryError):
        _poll(_watcher(store, sqlite_config, drop))
    assert not list(elsewhere.iterdir())
    assert not _rows(store, acquisitions)
    assert _names_in(drop) == {b".ingested", b"a.jpg"}


def _swap_for_a_link(folder: Path, target: Path) -> None:
    """What a hostile dropper does: the folder moves aside and a link to `target` takes its
    name, between two steps of a watcher."""
    folder.rename(folder.with_name(folder.name + "-moved"))
    folder.symlink_to(target)


@pytest.mark.allow_logged_errors
@pytest.mark.parametrize("swapped_when", ["opened", "listed", "copied", "moved"])
def test_a_subfolder_swapped_for_a_link_mid_pass_takes_nothing_from_its_target(
    store: Store,
    sqlite_config: QarinaConfig,
    drop: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    swapped_when: str,
) -> None:
    """The link's target (another case's folder, the blob store) holds a file of the same
    name: a watcher that went back by path would list, copy and move that one."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "a.jpg").write_bytes(b"not evidence, never to be taken")
    (drop / "sub").mkdir()
    _drop_file(drop, b"sub/a.jpg", b"dropped evidence")
    swapped: list[bool] = []

    def swap() -> None:
        if not swapped:
            swapped.append(True)
            _swap_for_a_link(drop / "sub", outside)

    if swapped_when == "opened":  # after the listing of the top saw a folder, before its open
        real_open = os.open

        def opening(path: object, flags: int, mode: int = 0o777, **named: object) -> int:
            if path == b"sub":
                swap()
            return real_open(path, flags, mode, **named)  # type: ignore[arg-type]

        monkeypatch.setattr(os, "open", opening)
    elif swapped_when == "listed":  # opened already, listed now
        real_scandir = os.scandir
        listings: list[object] = []

        def listing(path: object) -> object:
            listings.append(path)
            if len(listings) == 2:
                swap()
            return real_scandir(path)  # type: ignore[call-overload]

        monkeypatch.setattr(os, "scandir", listing)
    else:
        method = "put_below" if swapped_when == "copied" else "register"
        real = getattr(Intake, method)

        def then_swap(intake: Intake, *args: object) -> object:
            if swapped_when == "copied":
                swap()
            done = real(intake, *args)
            swap()
            return done

        monkeypatch.setattr(Intake, method, then_swap)
    watcher = _watcher(store, sqlite_config, drop)
    try:
        watcher.poll()
        assert swapped
        monkeypatch.undo()
        watcher.poll()  # the link is refused; the folder moved aside is taken
    finally:
        watcher.close()
    assert (outside / "a.jpg").read_bytes() == b"not evidence, never to be taken"
    assert [path.name for path in outside.iterdir()] == ["a.jpg"]
    taken = {row.sha256 for row in _rows(store, items)}
    assert taken == {hashlib.sha256(b"dropped evidence").hexdigest()}
    assert (drop / ".refused" / "sub").is_symlink()
    assert not (drop / ".ingested" / "sub").is_symlink()


def test_a_file_that_cannot_be_moved_aside_holds_up_no_other(
    store: Store,
    sqlite_config: QarinaConfig,
    drop: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Root passes over permissions, so a rename refused (EACCES, a read-only share) stands
    in for what an operator's mistake does to a real watcher."""
    _drop_file(drop, b"a-stuck.jpg", b"stuck")
    _drop_file(drop, b"b.jpg", b"b")
    (drop / "c").mkdir()
    _drop_file(drop, b"c/d.jpg", b"d")
    real_rename = os.rename

    def refusing(source: bytes, *args: object, **named: object) -> None:
        if source == b"a-stuck.jpg":
            raise PermissionError(13, "Permission denied")
        real_rename(source, *args, **named)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "rename", refusing)
    watcher = _watcher(store, sqlite_config, drop)
    try:
        assert watcher.poll() == PollReport(ingested=3)
        assert watcher.poll() == PollReport()  # passed over, not tried again
        _drop_file(drop, b"e.jpg", b"e")
        assert watcher.poll() == PollReport(ingested=1)
    finally:
        watcher.close()
    assert _names_in(drop) == {b".ingested", b".refused", b"a-stuck.jpg", b"c"}
    assert _names_in(drop / ".ingested") == {b"b.jpg", b"c", b"e.jpg"}
    warnings = [record.getMessage() for record in caplog.records if "moved aside" in record.message]
    assert warnings == ["a registered file cannot be moved aside (errno 13)"]
    assert "stuck" not in caplog.text
    monkeypatch.undo()
    # A restart tries it again: registered already, it is only moved.
    assert _poll(_watcher(store, sqlite_config, drop)) == PollReport(resumed=1)
    assert len(_rows(store, acquisitions)) == 4


@pytest.mark.allow_logged_errors
def test_a_watcher_outlives_a_bug_and_logs_its_type_alone(
    store: Store,
    sqlite_config: QarinaConfig,
    drop: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _drop_file(drop, b"secret-name.jpg", b"x")
    failures: list[None] = []
    poll = Watcher.poll

    def buggy(watcher: Watcher, stop: threading.Event | None = None) -> PollReport:
        if len(failures) < 3:
            failures.append(None)
            raise KeyError("secret-name.jpg in SELECT ... WHERE name = 'secret-name.jpg'")
        return poll(watcher, stop)

    monkeypatch.setattr(Watcher, "poll", buggy)
    stop = threading.Event()
    reports: list[PollReport] = []
    watcher = _watcher(store, sqlite_config, drop)
    thread = threading.Thread(target=watcher.run, args=(stop, 0.01, reports.append))
    thread.start()
    deadline = time.monotonic() + 10
    while not any(report.ingested for report in reports):
        assert time.monotonic() < deadline and thread.is_alive()
        time.sleep(0.01)
    stop.set()
    thread.join()
    logged = [(r.levelno, r.getMessage()) for r in caplog.records if "failed" in r.message]
    assert logged == [(logging.ERROR, "a pass over a drop folder failed (KeyError); trying again")]
    assert "secret" not in caplog.text


def test_a_folder_recreated_while_watched_is_taken_again(
    store: Store, sqlite_config: QarinaConfig, drop: Path
) -> None:
    watcher = _watcher(store, sqlite_config, drop)
    try:
        _drop_file(drop, b"first.jpg", b"first")
        assert watcher.poll() == PollReport(ingested=1)
        drop.rename(drop.with_name("drop-old"))
        drop.mkdir()
        _drop_file(drop, b"second.jpg", b"second")
        assert watcher.poll() == PollReport(ingested=1)
    finally:
        watcher.close()
    assert _names_in(drop / ".ingested") == {b"second.jpg"}


def test_a_device_node_is_refused(store: Store, sqlite_config: QarinaConfig, drop: Path) -> None:
    try:
        os.mknod(drop / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("making a device node needs CAP_MKNOD")
    assert _poll(_watcher(store, sqlite_config, drop)).refused == 1
    (event,) = [row for row in _rows(store, custody_events) if row.action == "ingest_refused"]
    assert json.loads(event.details)["reason"] == "character_device"
    assert (drop / ".refused" / "null").is_char_device()


def test_a_done_marker_takes_a_file_at_once_and_goes_with_it(
    store: Store, sqlite_config: QarinaConfig, drop: Path
) -> None:
    _drop_file(drop, b"marked.mp4", b"complete")
    _drop_file(drop, b"marked.mp4.done", b"")
    _drop_file(drop, b"unmarked.mp4", b"still being written")
    _drop_file(drop, b"lonely.done", b"")  # no file of that name: a file like any other
    report = _poll(_watcher(store, sqlite_config, drop, settle_s=3600))
    assert report == PollReport(ingested=1, waiting=2)
    assert [row.original_name for row in _rows(store, acquisitions)] == [b"marked.mp4"]
    assert _names_in(drop / ".ingested") == {b"marked.mp4", b"marked.mp4.done"}
    assert _names_in(drop) == {b".ingested", b".refused", b"unmarked.mp4", b"lonely.done"}


def test_a_file_still_growing_is_taken_only_once_it_settles(
    store: Store, sqlite_config: QarinaConfig, drop: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The watcher's clock is the test's: no margin for a loaded machine to eat. (Steps are
    # binary fractions, so the sums are exact.)
    now = [1000.0]
    monkeypatch.setattr(watch, "time", SimpleNamespace(monotonic=lambda: now[0]))
    watcher = _watcher(store, sqlite_config, drop, settle_s=0.5)
    try:
        path = _drop_file(drop, b"upload.mov", b"part one, ")
        assert watcher.poll() == PollReport(waiting=1)
        now[0] += 0.25
        with open(path, "ab") as handle:
            handle.write(b"part two")
        assert watcher.poll() == PollReport(waiting=1)
        now[0] += 0.4375
        assert watcher.poll() == PollReport(waiting=1)  # 0.4375 s since it last changed
        now[0] += 0.0625
        assert watcher.poll() == PollReport(ingested=1)
    finally:
        watcher.close()
    ((sha256,),) = [(row.sha256,) for row in _rows(store, items)]
    assert sha256 == hashlib.sha256(b"part one, part two").hexdigest()


def test_the_same_name_dropped_twice_keeps_both_versions(
    store: Store, sqlite_config: QarinaConfig, drop: Path
) -> None:
    long_name = b"V" * 251 + b".jpg"
    watcher = _watcher(store, sqlite_config, drop)
    try:
        for data, expected in ((b"one", 0), (b"two", 0), (b"one", 1)):
            _drop_file(drop, b"same.jpg", data)
            _drop_file(drop, long_name, data + b" under a long name")
            assert watcher.poll() == PollReport(ingested=2, duplicates=2 * expected)
    finally:
        watcher.close()
    assert len(_rows(store, acquisitions)) == 6
    assert len(_rows(store, items)) == 4
    ingested = _names_in(drop / ".ingested")
    assert {b"same.jpg", b"same~1.jpg", b"same~2.jpg", long_name} < ingested
    assert len(ingested) == 6 and all(len(name) <= 255 for name in ingested)
    assert (drop / ".ingested" / "same~1.jpg").read_bytes() == b"two"


def test_a_file_changed_while_it_was_copied_is_taken_again_as_its_new_version(
    store: Store, sqlite_config: QarinaConfig, drop: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _drop_file(drop, b"rewritten.jpg", b"old")
    put = Intake.put_below

    def put_then_rewrite(intake: Intake, tree: Tree, rel: bytes) -> StoredBlob | str:
        stored = put(intake, tree, rel)
        with open(path, "ab") as handle:  # a writer that paused longer than settle_s
            handle.write(b" and new")
        return stored

    monkeypatch.setattr(Intake, "put_below", put_then_rewrite)
    watcher = _watcher(store, sqlite_config, drop)
    try:
        assert watcher.poll() == PollReport()
        monkeypatch.setattr(Intake, "put_below", put)
        assert watcher.poll() == PollReport(ingested=1)
    finally:
        watcher.close()
    ((sha256,),) = [(row.sha256,) for row in _rows(store, items)]
    assert sha256 == hashlib.sha256(b"old and new").hexdigest()
    assert len(_rows(store, acquisitions)) == 1


class _Killed(BaseException):
    """Stands for SIGKILL at one step of a take: nothing after it runs."""


@pytest.mark.parametrize("dies_at_move", [1, 2])
def test_a_watcher_that_died_between_registering_and_moving_only_moves_on_restart(
    store: Store,
    sqlite_config: QarinaConfig,
    drop: Path,
    monkeypatch: pytest.MonkeyPatch,
    dies_at_move: int,
) -> None:
    """Move 1 is the marker, move 2 the file: either way the file is registered once."""
    _drop_file(drop, b"clip.mp4", b"evidence")
    _drop_file(drop, b"clip.mp4.done", b"")
    move = Watcher._move
    moves: list[bytes] = []

    def dying_move(watcher: Watcher, rel: bytes, into: bytes) -> None:
        moves.append(rel)
        if len(moves) == dies_at_move:
            raise _Killed
        move(watcher, rel, into)

    monkeypatch.setattr(Watcher, "_move", dying_move)
    with pytest.raises(_Killed):
        _poll(_watcher(store, sqlite_config, drop))
    monkeypatch.setattr(Watcher, "_move", move)
    assert len(_rows(store, acquisitions)) == 1
    assert _poll(_watcher(store, sqlite_config, drop)) == PollReport(resumed=1)
    assert len(_rows(store, acquisitions)) == 1
    assert _names_in(drop / ".ingested") == {b"clip.mp4", b"clip.mp4.done"}
    assert _names_in(drop) == {b".ingested", b".refused"}


def test_a_second_watcher_of_the_same_folder_stands_by(
    store: Store, sqlite_config: QarinaConfig, drop: Path
) -> None:
    first = _watcher(store, sqlite_config, drop)
    second = _watcher(store, sqlite_config, drop)
    try:
        assert first.poll() == PollReport()
        _drop_file(drop, b"a.jpg", b"a")
        assert second.poll() == PollReport(held_elsewhere=True)
        first.close()
        assert second.poll() == PollReport(ingested=1)
    finally:
        first.close()
        second.close()


def test_qarina_watch_once_takes_what_is_complete_and_reports_counts(
    sqlite_config: QarinaConfig, drop: Path
) -> None:
    _drop_file(drop, b"a.jpg", b"a")
    _drop_file(drop, b"b.jpg", b"b")
    os.mkfifo(drop / "pipe")
    result = CliRunner().invoke(
        app,
        ["--data", str(sqlite_config.data_dir), "watch", str(drop), "--source", "cli",
         "--request", "RFA-3", "--settle-s", "0.1", "--once"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "2 ingested (0 already stored), 1 refused, 0 waiting" in result.output
    assert _names_in(drop) == {b".ingested", b".refused"}


def test_a_watcher_outlives_its_folder_going_away_and_says_so_once(
    store: Store, sqlite_config: QarinaConfig, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gone = tmp_path / "unmounted"
    stop = threading.Event()
    reports: list[PollReport] = []
    watcher = _watcher(store, sqlite_config, gone)
    thread = threading.Thread(target=watcher.run, args=(stop, 0.01, reports.append))
    thread.start()
    time.sleep(0.2)
    gone.mkdir()
    _drop_file(gone, b"late.jpg", b"late")
    deadline = time.monotonic() + 10
    while not any(report.ingested for report in reports):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    stop.set()
    thread.join()
    failures = [record for record in caplog.records if "drop folder failed" in record.message]
    assert len(failures) == 1
    assert "unmounted" not in caplog.text


def test_ingest_reports_progress_in_running_counts(
    store: Store, sqlite_config: QarinaConfig, tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for number in range(5):
        (folder / f"{number}.bin").write_bytes(b"x" * (number + 1))
    os.mkfifo(folder / "pipe")
    seen: list[tuple[int, int, int]] = []
    ingest_paths(
        store, Plan.default(), sqlite_config, [folder], "s",
        progress=lambda summary: seen.append(
            (summary.files, summary.bytes, sum(summary.refused.values()))
        ),
    )  # fmt: skip
    assert [files for files, _, _ in seen] == [1, 2, 3, 4, 5, 6]
    assert seen[-1] == (6, 15, 1)


def _acquisitions(url: str) -> int:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return int(
                connection.execute(sa.text("SELECT count(*) FROM acquisitions")).scalar_one()
            )
    except sa.exc.OperationalError:  # the table is not there yet
        return 0
    finally:
        engine.dispose()


@pytest.mark.slow
def test_qarina_watch_killed_with_sigkill_mid_ingest_takes_every_file_exactly_once(
    sqlite_config: QarinaConfig, drop: Path, tmp_path: Path
) -> None:
    files = 300
    make_photos(tmp_path / "made", files, (64, 48))
    dropped = sorted(os.fsencode(made.name) for made in (tmp_path / "made").iterdir())
    for number, made in enumerate(sorted((tmp_path / "made").iterdir())):
        os.rename(made, drop / made.name)
        if number % 2:  # half are marked, half settle
            (drop / f"{made.name}.done").touch()
    command = [QARINA, "--data", str(sqlite_config.data_dir), "watch", str(drop),
               "--source", "killed", "--settle-s", "0.3", "--every-s", "0.05"]  # fmt: skip
    chance = random.Random()
    for _ in range(3):
        before = _acquisitions(sqlite_config.db_url)
        kill_after = before + chance.randrange(1, 60)
        watcher = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while _acquisitions(sqlite_config.db_url) < kill_after:
            assert time.monotonic() < deadline and watcher.poll() is None
            time.sleep(0.01)
        time.sleep(chance.uniform(0, 0.05))  # somewhere in the copy, the register or a move
        watcher.send_signal(signal.SIGKILL)
        watcher.wait()
        assert _acquisitions(sqlite_config.db_url) < files, "killed too late to test anything"
    finished = subprocess.run([*command, "--once"], capture_output=True, timeout=120, check=False)
    assert finished.returncode == 0, finished.stderr
    engine = sa.create_engine(sqlite_config.db_url)
    with engine.connect() as connection:
        per_key = connection.execute(
            sa.text("SELECT intake_key, count(*) FROM acquisitions GROUP BY intake_key")
        ).all()
        names = connection.execute(sa.text("SELECT original_name FROM acquisitions")).scalars()
        taken = sorted(bytes(name) for name in names)
        stored = connection.execute(sa.text("SELECT count(*) FROM items")).scalar_one()
    engine.dispose()
    assert len(per_key) == files and all(count == 1 for _, count in per_key)
    assert taken == dropped
    assert stored == files
    ingested = _names_in(drop / ".ingested")
    assert len([name for name in ingested if not name.endswith(b".done")]) == files
    assert len([name for name in ingested if name.endswith(b".done")]) == files // 2
    assert _names_in(drop) == {b".ingested", b".refused"}
