"""Drop folders: files that appear in a watched folder are ingested once each, then moved aside.

A file is taken when it is complete: its `NAME.done` marker lies beside it, or its inode, size
and mtime have not changed for `settle_s` seconds as seen by this watcher. It is stored and
registered like any intake (see `pipelines.ingest.Intake`), then moved to `DIR/.ingested/`
(its marker first, then the file), never deleted. Folders dropped in are walked: each file
below them settles on its own and keeps its place under `.ingested/`; the emptied folders
stay. A `NAME.done` is a marker only while a regular file `NAME` lies beside it; otherwise it
is a file like any other.

Exactly once, whatever is killed when: every arrival carries an intake key naming the folder,
the file's path below it, its inode, size and mtime (see `_intake_key`), and the store
records a key once. Killed before registering: the restart registers it. Killed after
registering, before the move: the restart finds the key registered and only moves the file.
Moves are renames, atomic: the file is either still in place or in `.ingested/`. The key
leaves out the source, so a restart under a corrected `--source` does not register a file
twice; it leaves out the device number, which differs between hosts mounting one share.

A file that changes after it was copied (a writer that paused longer than `settle_s`) is
neither registered nor moved if it changed before registration, and not moved if it changed
after: its new version settles and is taken as an arrival of its own. What a writer adds to
a file once it lies in `.ingested/` is beyond the watcher's sight: writers that pause
should write `.done` markers.

Refused, recorded in custody and moved to `DIR/.refused/`, so that they are refused once:
symlinks (never followed), FIFOs, devices, sockets, and files this process cannot read.
An entry that cannot even be moved is recorded once per watcher process. Killed between the
record and the move, a restart records it again: a second record, never none. A registered
file that cannot be moved to `.ingested/` stays in place, warned about once per watcher
process, and the other files are taken all the same.

The folder is walked, and its files copied, checked and moved, by descriptor from the folder
held open (see `pipelines.ingest.Tree`), never by path: a subfolder a dropper swaps for a
symlink meanwhile leads nowhere, so nothing outside the folder (the blob store) is taken or
moved. The swapped-in link is then refused like any other.

`.ingested/` and `.refused/` are made when the watcher takes the folder and used through
descriptors opened without following links (see `_hold_folder`); a name already taken in
them gets `~1`, `~2` before its extension, and a dropped folder whose name a file took
there is mirrored as `name~1`.

Names are raw bytes from the file system (`os.scandir` on a bytes path) and are never
decoded: they go to the store as `original_name`/`original_path`, into the key as bytes, to
system calls as bytes (or as a `Path` that holds them losslessly), and never into a log, a
tool's arguments or a blob path. A newline, U+202E, a leading `-` or bytes that are not
UTF-8 change nothing; `/` and NUL cannot occur in a name.

One watcher takes a folder at a time: it holds an advisory lock (`flock`) on the folder
while it watches, so a second watcher of the same folder (another service) stands by, and
the free name it picks in `.ingested/` cannot be taken by anyone else. Where the file system
has no such locks (some network shares) the watcher warns and goes on alone.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from evidence.blobs import StoredBlob
from evidence.store import Acquisition, Store
from pipelines.config import QarinaConfig
from pipelines.ingest import Intake, Tree, modified_at
from pipelines.plan import Plan

log = logging.getLogger(__name__)

INGESTED = b".ingested"
REFUSED = b".refused"
MARKER = b".done"
#: The longest file name Linux file systems take (NAME_MAX), in bytes.
_NAME_MAX = 255
#: Seconds a file waits after a failure that may pass (a full blob disk, a read error).
_RETRY_S = 10.0
#: Seconds between two warnings of the same failing pass (a folder gone stays gone a while).
_WARN_EVERY_S = 60.0
#: Reasons for which a file is refused rather than tried again: its type, or a permission
#: this process lacks (EPERM, EACCES): both stay until an operator acts.
_PERMANENT = {
    *("symlink", "fifo", "character_device", "block_device", "socket"),
    *("not_a_regular_file", f"os_error:{errno.EPERM}", f"os_error:{errno.EACCES}"),
}
#: Gone since the scan, or a folder now (the next pass walks it): nothing to record.
_PASSED_OVER = {f"os_error:{errno.ENOENT}", "directory"}


#: Entries below a drop folder: path relative to it (raw bytes) and what lstat said.
_Entries = list[tuple[bytes, os.stat_result]]


@dataclass(frozen=True)
class DropFolder:
    """A watched folder and what its arrivals are recorded as."""

    folder: Path
    source: str
    priority: int = 0
    request_ref: str | None = None


@dataclass(frozen=True)
class PollReport:
    """What one pass over a drop folder did, in counts (never names)."""

    #: Arrivals registered in this pass.
    ingested: int = 0
    #: Of those, content the store already held (a new acquisition of a known item).
    duplicates: int = 0
    #: Entries refused, recorded and moved to `.refused/`.
    refused: int = 0
    #: Files not taken yet: still settling, or waiting after a failure.
    waiting: int = 0
    #: Files registered before a crash (their key was known): only moved in this pass.
    resumed: int = 0
    #: Another watcher holds the folder; this one did nothing.
    held_elsewhere: bool = False


@dataclass(frozen=True)
class _Version:
    """What says a file is still the file that was seen: a rewrite or a swap changes it."""

    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, info: os.stat_result) -> _Version:
        return cls(info.st_ino, info.st_size, info.st_mtime_ns)


@dataclass(frozen=True)
class _Candidate:
    rel: bytes
    version: _Version
    info: os.stat_result
    marker: bytes | None
    key: str


class Watcher:
    """Takes complete files from one drop folder; `poll` is one pass, `run` polls until told.

    Not thread-safe: one thread polls a watcher. `on_ingest` is called after each
    registration (a service wakes its driver with it, so the first stage starts at once).
    """

    def __init__(
        self,
        store: Store,
        plan: Plan,
        config: QarinaConfig,
        drop: DropFolder,
        settle_s: float,
        on_ingest: Callable[[], None] | None = None,
    ) -> None:
        self.drop = drop
        self.settle_s = settle_s
        self._store = store
        self._config = config
        self._intake = Intake(store, plan, config, f"qarina-watch@{config.operator}")
        self._on_ingest = on_ingest
        #: Resolved, so that every spelling of the folder gives its files the same keys.
        self._root = os.fsencode(drop.folder.resolve())
        #: Per file below the folder: the version last seen and when it was first seen so.
        self._seen: dict[bytes, tuple[_Version, float]] = {}
        #: Files not to be tried before a monotonic time (after a failure that may pass).
        self._retry_at: dict[bytes, float] = {}
        #: Refused entries that could not be moved aside: recorded once, then left alone.
        self._stuck: set[tuple[bytes, _Version]] = set()
        #: The folder, held open (and locked) while this watcher takes it.
        self._tree: Tree | None = None
        #: Descriptors of `.ingested/` and `.refused/` while the folder is held.
        self._aside: dict[bytes, int] = {}
        self._lock_warned = False

    def poll(self, stop: threading.Event | None = None) -> PollReport:
        """One pass: refuse what is not a regular file, take what is complete.

        Files are taken in path order, copied on `config.ingest_threads` threads and
        registered in this one; `stop` ends the pass between two files.

        Raises:
            OSError: the folder itself cannot be read (gone, unmounted, no permission).
        """
        if not self._hold_folder():
            return PollReport(held_elsewhere=True)
        tree = self._held
        files, others = self._scan()
        refused = sum(self._refuse_other(rel, info) for rel, info in others)
        ready, waiting = self._ready(files)
        counts = {"ingested": 0, "duplicates": 0, "resumed": 0}
        # Registered before a crash (or by a watcher that held the folder before this one).
        known = {c.key for c in ready if self._store.intake_arrival(c.key) is not None}
        for candidate in ready:
            if candidate.key in known and not _stopped(stop):
                counts["resumed"] += self._finish(candidate)
        fresh = (candidate for candidate in ready if candidate.key not in known)
        with contextlib.closing(
            self._intake.stored_in_order(
                fresh, lambda candidate: self._intake.put_below(tree, candidate.rel)
            )
        ) as stored_files:
            for candidate, stored in stored_files:
                if isinstance(stored, str):
                    refused += self._failed(candidate, stored)
                else:
                    refused += self._take(candidate, stored, counts)
                if _stopped(stop):
                    break
        return PollReport(
            ingested=counts["ingested"],
            duplicates=counts["duplicates"],
            refused=refused,
            waiting=waiting,
            resumed=counts["resumed"],
        )

    def run(
        self,
        stop: threading.Event,
        every_s: float,
        on_poll: Callable[[PollReport], None] | None = None,
    ) -> None:
        """Poll every `every_s` seconds until `stop` is set, then let the folder go.

        A folder or store that cannot be read for a while (a network share, a database
        restart) is warned about and tried again, so a service's watcher outlives it. Any
        other failure (a bug) is logged as an error and tried again too: a watcher thread
        that died would leave its folder untaken without a word. Only the failure's type is
        logged (and an OSError's errno text): messages carry names and SQL parameters.
        """
        warned: tuple[str, float] | None = None
        try:
            while not stop.is_set():
                try:
                    report = self.poll(stop)
                    if on_poll is not None:
                        on_poll(report)
                except Exception as error:  # the watcher outlives any one pass
                    expected = isinstance(error, OSError | sa.exc.OperationalError)
                    what = type(error).__name__
                    if isinstance(error, OSError) and error.strerror:
                        what += f": {error.strerror}"
                    now = time.monotonic()
                    if warned is None or warned[0] != what or now - warned[1] >= _WARN_EVERY_S:
                        log.log(
                            logging.WARNING if expected else logging.ERROR,
                            "a pass over a drop folder failed (%s); trying again",
                            what,
                        )
                        warned = (what, now)
                stop.wait(every_s)
        finally:
            self.close()

    def close(self) -> None:
        """Let another watcher take the folder."""
        for fd in self._aside.values():
            os.close(fd)
        self._aside = {}
        if self._tree is not None:
            self._tree.close()
            self._tree = None

    @property
    def _held(self) -> Tree:
        if self._tree is None:
            raise RuntimeError("the drop folder is not held")
        return self._tree

    def _hold_folder(self) -> bool:
        """Take the folder's lock and open `.ingested/` and `.refused/` (made if missing),
        once; False while another watcher holds the folder.

        Moves go through descriptors of these two folders, opened without following links:
        a `.ingested` symlink someone drops, or a swap of the folder for one later, cannot
        send evidence outside the drop folder. A folder held is let go and taken again when
        its path names another folder now (recreated, remounted): the watcher watches the path.

        Raises:
            OSError: the folder cannot be opened, or its `.ingested` or `.refused` is a file
                or a link (dropped under that name: an operator must look).
        """
        if self._tree is not None:
            try:
                now = os.stat(self._root)
            except OSError:
                self.close()
                raise
            held = os.fstat(self._tree.top_fd)
            if (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino):
                return True
            self.close()
        fd = os.open(self._root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            if not self._lock(fd):
                os.close(fd)
                return False
            for into in (INGESTED, REFUSED):
                self._aside[into] = _subfolder(fd, into)
        except BaseException:
            for opened in self._aside.values():
                os.close(opened)
            self._aside = {}
            os.close(fd)
            raise
        self._tree = Tree(fd)
        return True

    def _lock(self, fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        except OSError as error:
            if not self._lock_warned:
                log.warning(
                    "a drop folder cannot be locked (errno %d): watch it from one process only",
                    error.errno,
                )
                self._lock_warned = True
        return True

    def _scan(self) -> tuple[_Entries, _Entries]:
        """Regular files and other entries below the folder, by path relative to it.

        Folders are walked by descriptor (never through a symlink); `.ingested/` and
        `.refused/` at the top are not. A subfolder that vanishes, cannot be listed or is
        swapped meanwhile is passed over this time.
        """
        files: _Entries = []
        others: _Entries = []
        for rel, info in self._held.walk(skip=(INGESTED, REFUSED)):
            (files if stat.S_ISREG(info.st_mode) else others).append((rel, info))
        files.sort()
        others.sort()
        return files, others

    def _ready(self, files: _Entries) -> tuple[list[_Candidate], int]:
        """Files that are complete (marked or settled), and how many others wait."""
        present = {rel for rel, _ in files}
        markers = {
            rel for rel in present if rel.endswith(MARKER) and rel[: -len(MARKER)] in present
        }
        now = time.monotonic()
        seen: dict[bytes, tuple[_Version, float]] = {}
        ready: list[_Candidate] = []
        waiting = 0
        for rel, info in files:
            if rel in markers:
                continue
            version = _Version.of(info)
            previous = self._seen.get(rel)
            seen[rel] = previous if previous and previous[0] == version else (version, now)
            if (rel, version) in self._stuck:
                continue  # registered, but it cannot be moved: warned about once
            marker = rel + MARKER if rel + MARKER in markers else None
            settled = now - seen[rel][1] >= self.settle_s
            if self._retry_at.get(rel, 0.0) > now or (marker is None and not settled):
                waiting += 1
                continue
            ready.append(_Candidate(rel, version, info, marker, self._intake_key(rel, version)))
        self._seen = seen
        self._retry_at = {rel: at for rel, at in self._retry_at.items() if rel in seen}
        return ready, waiting

    def _intake_key(self, rel: bytes, version: _Version) -> str:
        """This file version in this folder: folder and relative path as raw bytes, inode,
        size and mtime (NUL joins them: no path holds one)."""
        parts = [self._root, rel, b"%d" % version.inode, b"%d" % version.size]
        parts.append(b"%d" % version.mtime_ns)
        return "drop:" + hashlib.sha256(b"\0".join(parts)).hexdigest()

    def _take(self, candidate: _Candidate, stored: StoredBlob, counts: dict[str, int]) -> int:
        """Register a copied file if it is still the version copied, then move it aside; 1
        when it was refused instead (it could not be checked again, for a reason that stays).
        """
        try:
            unchanged = self._unchanged(candidate)
        except OSError as error:
            return self._failed(candidate, f"os_error:{error.errno}")
        if stored.size_bytes != candidate.version.size or not unchanged:
            self._changed(candidate)
            return 0
        registered = self._intake.register(
            stored,
            Acquisition(
                source=self.drop.source,
                original_name=candidate.rel.rpartition(b"/")[2],
                original_path=self._root + b"/" + candidate.rel,
                operator=self._config.operator,
                original_mtime=modified_at(candidate.info),
                priority=self.drop.priority,
                request_ref=self.drop.request_ref,
                intake_key=candidate.key,
            ),
        )
        if registered.acquisition_id is None:
            counts["resumed"] += 1
        else:
            counts["ingested"] += 1
            counts["duplicates"] += not registered.new_item
            if self._on_ingest is not None:
                self._on_ingest()
        self._finish(candidate)
        return 0

    def _finish(self, candidate: _Candidate) -> int:
        """Move a registered file (marker first) to `.ingested/`; 1 when it was moved.

        The marker goes first: killed between the two moves, the file waits out `settle_s`
        and is then only moved, where a marker left behind would be taken as a file.

        A file that cannot be checked or moved (its folder cannot be written, its name in
        `.ingested/` is taken by a folder) stays where it is, warned about once by errno and
        passed over by this watcher: the other files are taken all the same, where letting
        the error out would stop every pass at this file. A restart tries it again.
        """
        try:
            if not self._unchanged(candidate):
                self._changed(candidate)
                return 0
            if candidate.marker is not None:
                self._move(candidate.marker, INGESTED)
            self._move(candidate.rel, INGESTED)
        except OSError as error:
            self._stuck.add((candidate.rel, candidate.version))
            log.warning("a registered file cannot be moved aside (errno %d)", error.errno)
            return 0
        return 1

    def _unchanged(self, candidate: _Candidate) -> bool:
        """Whether the file is still the version taken (False when it is gone).

        Raises:
            OSError: it cannot be looked at (other than gone).
        """
        info = self._lstat(candidate.rel)
        return (
            info is not None
            and stat.S_ISREG(info.st_mode)
            and _Version.of(info) == candidate.version
        )

    def _lstat(self, rel: bytes) -> os.stat_result | None:
        """What lstat says of an entry now, looked at from the folder held; None: gone."""
        try:
            with self._held.entry(rel) as (folder, name):
                return os.stat(name, dir_fd=folder, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def _changed(self, candidate: _Candidate) -> None:
        """The file is not the version taken: its next version settles from now."""
        self._seen.pop(candidate.rel, None)
        log.info("a dropped file changed while it was taken; its new version will be taken")

    def _failed(self, candidate: _Candidate, reason: str) -> int:
        """A file that could not be stored: refused (1), gone, or tried again later."""
        if reason in _PERMANENT:
            try:
                info = self._lstat(candidate.rel)
            except OSError:  # its folder cannot be entered now: refused as the scan saw it
                info = candidate.info
            if info is None:
                return 0
            return self._refuse(candidate.rel, info, reason)
        if reason not in _PASSED_OVER:
            self._retry_at[candidate.rel] = time.monotonic() + _RETRY_S
            log.warning(
                "a dropped file could not be stored (%s); trying again in %g s", reason, _RETRY_S
            )
        return 0

    def _refuse_other(self, rel: bytes, info: os.stat_result) -> int:
        """An entry that is neither a file nor a folder: the blob store, which refuses it
        without opening it, says why (symlink, fifo, ...); 1 when recorded."""
        if (rel, _Version.of(info)) in self._stuck:
            return 0
        reason = self._intake.put_below(self._held, rel)
        if not isinstance(reason, str) or reason in _PASSED_OVER:
            return 0  # it became a regular file since the scan: the next pass takes it
        return self._refuse(rel, info, reason)

    def _refuse(self, rel: bytes, info: os.stat_result, reason: str) -> int:
        """Record a refusal and move the entry to `.refused/`; 1 when recorded."""
        if (rel, _Version.of(info)) in self._stuck:
            return 0
        self._intake.refuse(self.drop.source, self._root + b"/" + rel, reason)
        try:
            self._move(rel, REFUSED)
        except OSError as error:
            self._stuck.add((rel, _Version.of(info)))
            log.warning("a refused entry cannot be moved aside (errno %d)", error.errno)
        return 1

    def _move(self, rel: bytes, into: bytes) -> None:
        """Rename an entry to a free name in the same place below `into`; never overwrites.

        Nobody else renames into these folders while this watcher holds the folder's lock,
        so a name found free stays free until the rename. An entry gone meanwhile, or below
        a folder swapped since the scan, is left be.

        Raises:
            OSError: the entry cannot be moved.
        """
        parent, _, name = rel.rpartition(b"/")
        opened: list[int] = []
        folder = self._aside[into]
        try:
            for part in parent.split(b"/") if parent else []:
                folder = _free_subfolder(folder, part)
                opened.append(folder)
            free = next(name for name in _names_for(name) if not _exists(name, folder))
            with (
                contextlib.suppress(FileNotFoundError),
                self._held.entry(rel) as (source, source_name),
            ):
                os.rename(source_name, free, src_dir_fd=source, dst_dir_fd=folder)
        finally:
            for fd in opened:
                os.close(fd)


def _subfolder(parent_fd: int, name: bytes) -> int:
    """A descriptor of the folder `name` below `parent_fd`, made if missing; never a link.

    Raises:
        NotADirectoryError: `name` is taken by a file or a link.
    """
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, dir_fd=parent_fd)
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    return os.open(name, flags, dir_fd=parent_fd)


def _free_subfolder(parent_fd: int, name: bytes) -> int:
    """The folder below `parent_fd` that mirrors a dropped folder `name`: itself, or where a
    file of that name was moved before, `name~1` and so on."""
    names = _names_for(name)
    while True:
        with contextlib.suppress(NotADirectoryError):
            return _subfolder(parent_fd, next(names))


def _exists(name: bytes, folder_fd: int) -> bool:
    try:
        os.stat(name, dir_fd=folder_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _names_for(name: bytes) -> Iterator[bytes]:
    """`name`, then `stem~1.ext`, `stem~2.ext`, ...: the same name dropped twice keeps both,
    each within NAME_MAX (the stem is cut, byte-wise, to fit)."""
    yield name
    stem, dot, extension = name.rpartition(b".")
    if not stem or len(extension) > 16:
        stem, dot, extension = name, b"", b""
    number = 1
    while True:
        suffix = b"~%d" % number + dot + extension
        yield stem[: _NAME_MAX - len(suffix)] + suffix
        number += 1


def _stopped(stop: threading.Event | None) -> bool:
    return stop is not None and stop.is_set()
