"""Intake: copy files into the blob store by content, record each arrival, queue its first stage.

Every path given ends as a record: a stored item with an acquisition, or a custody event that
says why it was refused (a FIFO, a device, a socket, a symlink, an unreadable file). Walking a
folder never follows symlinks, so a link to /dev or outside the evidence cannot be swallowed.

Folders are walked by descriptor, never by path (see `Tree`): a subfolder swapped for a symlink
while it is walked, copied from or moved out of leads nowhere, so a dropper cannot make a
drop folder, or a registration by path (`ingest_below`), take files from outside it. The paths
an operator gives `qarina ingest` are the operator's and are resolved as given; what lies below
them is walked the same way, one walk for every route.

`Intake` is what every intake route shares (`qarina ingest`, the drop-folder watcher): storing
a file, registering its arrival and recording a refusal, each logged by hash, never by name.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import logging
import os
import stat
from collections import deque
from collections.abc import Callable, Container, Generator, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from evidence.blobs import BlobIntegrityError, IngestRefused, StoredBlob
from evidence.store import Acquisition, Registered, Store
from pipelines.config import QarinaConfig
from pipelines.plan import Plan

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Opening a folder: never through a link, never inherited by a tool's process.
_FOLDER = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass
class IngestSummary:
    files: int = 0
    new_items: int = 0
    duplicates: int = 0
    bytes: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    sha256s: list[str] = field(default_factory=list)


class Intake:
    """Storing, registering and refusing for one intake route, as one actor.

    The route decides what an arrival is (its source, name, path, intake key); this class
    makes every route store and record it the same way.
    """

    def __init__(self, store: Store, plan: Plan, config: QarinaConfig, actor: str) -> None:
        self.store = store
        self.config = config
        self.actor = actor
        self._initial = plan.initial_jobs()

    def put(self, path: Path) -> StoredBlob | str:
        """Store one file; a refusal or failure comes back as its reason, not an exception.

        Reasons: what `IngestRefused` names (symlink, fifo, ...), `integrity_error`, or
        `os_error:ERRNO` (unreadable, vanished, a full blob disk).
        """
        return _stored(lambda: self.store.blobs.put(path))

    def put_below(self, tree: Tree, rel: bytes) -> StoredBlob | str:
        """Store the file `rel` below a tree, come down to by descriptor (see `Tree`); reasons
        as `put` gives them (a folder on the way gone, or swapped for a link: `os_error:2`)."""

        def put() -> StoredBlob:
            with tree.entry(rel) as (folder, name):
                return self.store.blobs.put_at(folder, name)

        return _stored(put)

    def stored_in_order(
        self, entries: Iterable[T], put: Callable[[T], StoredBlob | str]
    ) -> Generator[tuple[T, StoredBlob | str], None, None]:
        """Copy files in on several threads, yielding in the order given.

        Hashing releases the GIL and each file waits on its own fsyncs, so a few threads keep
        both cores and the disk busy where one thread would leave them idle between files. The
        window of files in flight is bounded, so a folder of 400,000 files is never listed up
        front. Closing the iterator early waits for the copies in flight, and drops them.
        """
        threads = self.config.ingest_threads
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="ingest") as pool:
            window: deque[tuple[T, Future[StoredBlob | str]]] = deque()
            for entry in entries:
                window.append((entry, pool.submit(put, entry)))
                if len(window) >= threads * 2:
                    done, future = window.popleft()
                    yield done, future.result()
            while window:
                done, future = window.popleft()
                yield done, future.result()

    def register(self, stored: StoredBlob, acquisition: Acquisition) -> Registered:
        """Record the arrival (nothing new when its intake key was registered before)."""
        registered = self.store.register(
            stored, acquisition, self._initial, self.actor, self.config.max_attempts
        )
        if registered.acquisition_id is not None:
            log.info(
                "ingested item %s (%s)",
                stored.sha256[:16],
                "new" if registered.new_item else "known",
            )
        return registered

    def refuse(self, source: str, raw_path: bytes, reason: str) -> None:
        """Custody for an input that could not be stored; the log names only the reason."""
        self.store.record_refusal(source, raw_path, reason, self.actor)
        log.warning("refused an input: %s", reason)


def _stored(put: Callable[[], StoredBlob]) -> StoredBlob | str:
    try:
        return put()
    except IngestRefused as refused:
        return refused.reason
    except BlobIntegrityError:
        return "integrity_error"
    except OSError as error:
        return f"os_error:{error.errno}"


class NotBelow(Exception):
    """A path leaves the folder it must stay below: a symlink on the way or at its end (never
    followed), or a `..` above that folder. Nothing was stored."""


class Tree:
    """The entries below one folder held open, come down to by descriptor, never through a link.

    A path is resolved again at every use, and any folder on it can be swapped for a symlink
    between two uses: a walk that checks a subfolder with lstat and then lists it by path, or
    copies or renames a file by path, would take files from the link's target (the blob store,
    another case's folder). So a tree lists each subfolder through a descriptor opened relative
    to its parent without following links, and only when it is the folder its parent's listing
    saw (device and inode); every later use of an entry (copying, checking, moving it) comes
    down again the same way from the top (`entry`). Names stay raw bytes.

    Owns the top's descriptor (`close`). The entries a walk yielded may be used on several
    threads at once, while the walk goes on.
    """

    def __init__(self, top_fd: int) -> None:
        self._top = top_fd
        #: Each subfolder the last walk entered, by path below the top: (device, inode).
        self._folders: dict[bytes, tuple[int, int]] = {}

    @property
    def top_fd(self) -> int:
        return self._top

    def close(self) -> None:
        """Let the top go; a second close does nothing (an ingest lets a tree go as soon as
        its last file is stored, and every tree at its end)."""
        if self._top >= 0:
            os.close(self._top)
            self._top = -1

    def __enter__(self) -> Tree:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def walk(self, skip: Container[bytes] = ()) -> Iterator[tuple[bytes, os.stat_result]]:
        """Every entry below the top that is not a folder, by its path below the top, with what
        lstat said, in the order of `os.walk`: a folder's entries by name, then each subfolder's.

        Names in `skip` are passed over at the top. A subfolder that vanishes, cannot be listed
        or is no longer the folder listed is passed over, as `os.walk` passes over the first two.

        Raises:
            OSError: the top itself cannot be listed.
        """
        self._folders = {}
        pending = [b""]
        while pending:
            below = pending.pop()
            try:
                listed = self._list(below)
            except OSError:
                if not below:
                    raise
                continue
            folders = []
            for name, info in listed:
                if not below and name in skip:
                    continue
                rel = below + b"/" + name if below else name
                if stat.S_ISDIR(info.st_mode):
                    self._folders[rel] = (info.st_dev, info.st_ino)
                    folders.append(rel)
                else:
                    yield rel, info
            pending.extend(reversed(folders))

    def _list(self, below: bytes) -> list[tuple[bytes, os.stat_result]]:
        """A folder's entries by name with lstat's answer (one gone meanwhile is left out)."""
        listed = []
        with self.folder(below) as fd, os.scandir(fd) as entries:
            for entry in entries:
                with contextlib.suppress(FileNotFoundError):
                    # A descriptor's listing names entries as str: back to the bytes they were.
                    listed.append((os.fsencode(entry.name), entry.stat(follow_symlinks=False)))
        listed.sort(key=lambda named: named[0])
        return listed

    @contextlib.contextmanager
    def folder(self, rel: bytes) -> Iterator[int]:
        """A descriptor of the folder `rel` below the top (b"": the top), come down to one folder
        at a time, each the folder the last walk entered.

        Raises:
            FileNotFoundError: a folder on the way is gone, a link or a file now, or another
                folder than the one walked: for the entries below it, they are gone.
        """
        fd = self._top
        try:
            prefix = b""
            for part in rel.split(b"/") if rel else []:
                prefix = prefix + b"/" + part if prefix else part
                parent, fd = fd, _open_folder(part, fd, self._folders.get(prefix))
                if parent != self._top:
                    os.close(parent)
            yield fd
        finally:
            if fd != self._top:
                os.close(fd)

    @contextlib.contextmanager
    def entry(self, rel: bytes) -> Iterator[tuple[int, bytes]]:
        """The folder holding the entry `rel` (see `folder`) and the entry's name in it: what
        `os.stat`, `os.rename` and `BlobStore.put_at` take."""
        parent, _, name = rel.rpartition(b"/")
        with self.folder(parent) as fd:
            yield fd, name


def _open_folder(name: bytes, parent_fd: int | None, seen: tuple[int, int] | None) -> int:
    """The folder `name` (below `parent_fd`), opened without following a link, if it is the
    folder seen: same (device, inode).

    Raises:
        FileNotFoundError: it is gone, a link or a file now, or another folder.
    """
    try:
        fd = os.open(name, _FOLDER, dir_fd=parent_fd)
    except OSError as error:
        if error.errno in (errno.ENOTDIR, errno.ELOOP):
            raise FileNotFoundError(errno.ENOENT, "not the folder walked") from None
        raise
    opened = os.fstat(fd)
    if (opened.st_dev, opened.st_ino) != seen:
        os.close(fd)
        raise FileNotFoundError(errno.ENOENT, "not the folder walked")
    return fd


@dataclass(frozen=True)
class _Input:
    """One input of an ingest: the path it is recorded under, what lstat said (None: nothing
    there), and where it is stored from: an entry below a tree, or (no tree) the path itself."""

    path: bytes
    info: os.stat_result | None
    tree: Tree | None = None
    rel: bytes = b""

    def put(self, intake: Intake) -> StoredBlob | str:
        if self.tree is None:
            return intake.put(Path(os.fsdecode(self.path)))
        return intake.put_below(self.tree, self.rel)


def _walked(tree: Tree, base: bytes) -> Iterator[_Input]:
    """Every entry below a tree as an input recorded under `base`; a top that cannot be listed
    gives none, as `os.walk` gave none."""
    try:
        for rel, info in tree.walk():
            yield _Input(os.path.join(base, rel), info, tree, rel)
    except OSError:  # only the top's listing raises
        return


def _inputs_of(paths: Iterable[Path], trees: contextlib.ExitStack) -> Iterator[_Input]:
    """Each path given, or every entry below it when it is a folder (not a link to one). The
    trees opened are left to `trees` (and to `_register_all`, which lets each go early)."""
    for path in paths:
        raw = os.fsencode(path.absolute())
        try:
            info: os.stat_result | None = os.lstat(raw)
        except OSError:
            info = None
        if info is None or not stat.S_ISDIR(info.st_mode):
            yield _Input(raw, info)
            continue
        try:
            tree = trees.enter_context(Tree(_open_folder(raw, None, (info.st_dev, info.st_ino))))
        except OSError:
            continue  # gone since lstat: as `os.walk` passed it over
        empty = True
        for found in _walked(tree, raw):
            empty = False
            yield found
        if empty:
            tree.close()  # no copy can be using it


def ingest_paths(
    store: Store,
    plan: Plan,
    config: QarinaConfig,
    paths: Iterable[Path],
    source: str,
    priority: int = 0,
    request_ref: str | None = None,
    progress: Callable[[IngestSummary], None] | None = None,
) -> IngestSummary:
    """Store and register every file under `paths`; never stops on one bad input.

    Registration (database and custody) happens in this thread, in walk order, so the custody
    log lists arrivals in the order they were found. `progress` sees the running summary
    after each file (a progress bar; counts only, never a name).
    """
    intake = Intake(store, plan, config, f"qarina-ingest@{config.operator}")
    with contextlib.ExitStack() as trees:
        inputs = _inputs_of(paths, trees)
        return _register_all(intake, inputs, source, priority, request_ref, progress)


def ingest_below(
    store: Store,
    plan: Plan,
    config: QarinaConfig,
    top: Path,
    parts: Sequence[bytes],
    source: str,
    priority: int = 0,
    request_ref: str | None = None,
) -> IngestSummary:
    """Store and register the file, or every file under the folder, that `parts` name below
    the folder `top`, as `ingest_paths` does, but come down to from `top` by descriptor: no
    link on the way is followed, not even one swapped in while this runs, so nothing outside
    `top` is taken (a registration by path stays inside its allowed root).

    Raises:
        NotBelow: a symlink on the way or at the end, or a `..` above `top` (nothing stored).
        FileNotFoundError, NotADirectoryError: nothing by that name (nothing stored).
    """
    tree, path, only = _reach(top, parts)
    with tree:
        if only is None:
            inputs: Iterable[_Input] = _walked(tree, path)
        else:
            name, info = only
            inputs = [_Input(os.path.join(path, name), info, tree, name)]
        intake = Intake(store, plan, config, f"qarina-ingest@{config.operator}")
        return _register_all(intake, inputs, source, priority, request_ref, None)


def _reach(
    top: Path, parts: Sequence[bytes]
) -> tuple[Tree, bytes, tuple[bytes, os.stat_result] | None]:
    """Come down from `top` along `parts` one folder at a time: the tree of the folder named
    (or of the one holding the file named), the path it is recorded under, and the file's
    name with what lstat said (None: the whole folder). `..` goes back up the way it came.

    Raises:
        NotBelow, FileNotFoundError, NotADirectoryError: as `ingest_below`.
    """
    opened = [os.open(top, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)]
    names: list[bytes] = []
    try:
        for number, part in enumerate(parts):
            if part == b"..":
                if len(opened) == 1:
                    raise NotBelow
                os.close(opened.pop())
                names.pop()
                continue
            info = os.stat(part, dir_fd=opened[-1], follow_symlinks=False)
            if stat.S_ISLNK(info.st_mode):
                raise NotBelow
            if not stat.S_ISDIR(info.st_mode):
                if number < len(parts) - 1:
                    raise NotADirectoryError(errno.ENOTDIR, "not a folder")
                return Tree(opened.pop()), os.path.join(os.fsencode(top), *names), (part, info)
            try:
                opened.append(_open_folder(part, opened[-1], (info.st_dev, info.st_ino)))
            except FileNotFoundError:
                now = os.stat(part, dir_fd=opened[-1], follow_symlinks=False)
                if stat.S_ISLNK(now.st_mode):  # swapped for a link since the lstat above
                    raise NotBelow from None
                raise
            names.append(part)
        return Tree(opened.pop()), os.path.join(os.fsencode(top), *names), None
    finally:
        for fd in opened:
            os.close(fd)


def _register_all(
    intake: Intake,
    inputs: Iterable[_Input],
    source: str,
    priority: int,
    request_ref: str | None,
    progress: Callable[[IngestSummary], None] | None,
) -> IngestSummary:
    """Store `inputs` (on several threads) and record each, in order, as an arrival or a refusal.

    A tree is let go as soon as an input of another comes back: inputs come back in order, so
    no copy uses it any more, and a run over thousands of folders holds a few open at a time.
    """
    summary = IngestSummary()
    config = intake.config
    last: Tree | None = None
    stored_inputs = intake.stored_in_order(inputs, lambda found: found.put(intake))
    with contextlib.closing(stored_inputs):  # closed early, it waits for the copies in flight
        for found, stored in stored_inputs:
            if last is not None and found.tree is not last:
                last.close()
            last = found.tree
            summary.files += 1
            if isinstance(stored, str):
                intake.refuse(source, found.path, stored)
                summary.refused[stored] = summary.refused.get(stored, 0) + 1
            else:
                info = found.info
                registered = intake.register(
                    stored,
                    Acquisition(
                        source=source,
                        original_name=found.path.rpartition(b"/")[2],
                        original_path=found.path,
                        operator=config.operator,
                        original_mtime=None
                        if info is None or not stat.S_ISREG(info.st_mode)
                        else modified_at(info),
                        priority=priority,
                        request_ref=request_ref,
                    ),
                )
                summary.bytes += stored.size_bytes
                summary.sha256s.append(stored.sha256)
                if registered.new_item:
                    summary.new_items += 1
                else:
                    summary.duplicates += 1
            if progress is not None:
                progress(summary)
    return summary


def modified_at(info: os.stat_result) -> dt.datetime:
    """A file's mtime as an aware UTC time (to the microsecond the store keeps)."""
    return dt.datetime.fromtimestamp(info.st_mtime_ns / 1e9, dt.UTC)
