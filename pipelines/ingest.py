"""Intake: copy files into the blob store by content, record each arrival, queue its first stage.

Every path given ends as a record: a stored item with an acquisition, or a custody event that
says why it was refused (a FIFO, a device, a socket, a symlink, an unreadable file). Walking a
folder never follows symlinks, so a link to /dev or outside the evidence cannot be swallowed.

`Intake` is what every intake route shares (`qarina ingest`, the drop-folder watcher): storing
a file, registering its arrival and recording a refusal, each logged by hash, never by name.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import stat
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
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
        try:
            return self.store.blobs.put(path)
        except IngestRefused as refused:
            return refused.reason
        except BlobIntegrityError:
            return "integrity_error"
        except OSError as error:
            return f"os_error:{error.errno}"

    def stored_in_order(
        self, entries: Iterable[T], path_of: Callable[[T], Path]
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
                window.append((entry, pool.submit(self.put, path_of(entry))))
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


def _walk(paths: Iterable[Path]) -> Iterator[Path]:
    """Files below the given paths in a stable order; links and special files are yielded as is."""
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            for directory, subdirs, files in os.walk(path, followlinks=False):
                subdirs.sort()
                # os.walk lists symlinks to directories under subdirs; they are inputs too.
                base = Path(directory)
                for name in sorted(files + [d for d in subdirs if (base / d).is_symlink()]):
                    yield base / name
        else:
            yield path


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
    summary = IngestSummary()
    intake = Intake(store, plan, config, f"qarina-ingest@{config.operator}")
    for path, stored in intake.stored_in_order(_walk(paths), lambda path: path):
        summary.files += 1
        raw_path = os.fsencode(path.absolute())
        if isinstance(stored, str):
            intake.refuse(source, raw_path, stored)
            summary.refused[stored] = summary.refused.get(stored, 0) + 1
        else:
            registered = intake.register(
                stored,
                Acquisition(
                    source=source,
                    original_name=os.fsencode(path.name),
                    original_path=raw_path,
                    operator=config.operator,
                    original_mtime=_mtime(path),
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


def _mtime(path: Path) -> dt.datetime | None:
    try:
        info = path.lstat()
    except OSError:
        return None
    if not stat.S_ISREG(info.st_mode):
        return None
    return modified_at(info)


def modified_at(info: os.stat_result) -> dt.datetime:
    """A file's mtime as an aware UTC time (to the microsecond the store keeps)."""
    return dt.datetime.fromtimestamp(info.st_mtime_ns / 1e9, dt.UTC)
