"""Intake: copy files into the blob store by content, record each arrival, queue its first stage.

Every path given ends as a record: a stored item with an acquisition, or a custody event that
says why it was refused (a FIFO, a device, a socket, a symlink, an unreadable file). Walking a
folder never follows symlinks, so a link to /dev or outside the evidence cannot be swallowed.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import stat
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from evidence.blobs import BlobIntegrityError, IngestRefused, StoredBlob
from evidence.store import Acquisition, Store
from pipelines.config import QarinaConfig
from pipelines.plan import Plan

log = logging.getLogger(__name__)


@dataclass
class IngestSummary:
    files: int = 0
    new_items: int = 0
    duplicates: int = 0
    bytes: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    sha256s: list[str] = field(default_factory=list)


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


def _put(store: Store, path: Path) -> StoredBlob | str:
    """Store one file; a refusal comes back as its reason instead of an exception."""
    try:
        return store.blobs.put(path)
    except IngestRefused as refused:
        return refused.reason
    except BlobIntegrityError:
        return "integrity_error"
    except OSError as error:
        return f"os_error:{error.errno}"


def _stored_in_order(
    store: Store, paths: Iterator[Path], threads: int
) -> Iterator[tuple[Path, StoredBlob | str]]:
    """Copy files in on several threads, yielding in walk order.

    Hashing releases the GIL and each file waits on its own fsyncs, so a few threads keep both
    cores and the disk busy where one thread would leave them idle between files. The window
    of files in flight is bounded, so a folder of 400,000 files is never listed up front.
    """
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="ingest") as pool:
        window: deque[tuple[Path, Future[StoredBlob | str]]] = deque()
        for path in paths:
            window.append((path, pool.submit(_put, store, path)))
            if len(window) >= threads * 2:
                done_path, future = window.popleft()
                yield done_path, future.result()
        while window:
            done_path, future = window.popleft()
            yield done_path, future.result()


def ingest_paths(
    store: Store,
    plan: Plan,
    config: QarinaConfig,
    paths: Iterable[Path],
    source: str,
    priority: int = 0,
    request_ref: str | None = None,
) -> IngestSummary:
    """Store and register every file under `paths`; never stops on one bad input.

    Registration (database and custody) happens in this thread, in walk order, so the custody
    log lists arrivals in the order they were found.
    """
    summary = IngestSummary()
    actor = f"qarina-ingest@{config.operator}"
    initial = plan.initial_jobs()
    for path, stored in _stored_in_order(store, _walk(paths), config.ingest_threads):
        summary.files += 1
        raw_path = os.fsencode(path.absolute())
        if isinstance(stored, str):
            _refuse(store, summary, source, raw_path, stored, actor)
            continue
        registered = store.register(
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
            initial,
            actor,
            config.max_attempts,
        )
        summary.bytes += stored.size_bytes
        summary.sha256s.append(stored.sha256)
        if registered.new_item:
            summary.new_items += 1
        else:
            summary.duplicates += 1
        log.info(
            "ingested item %s (%s)", stored.sha256[:16], "new" if registered.new_item else "known"
        )
    return summary


def _refuse(
    store: Store, summary: IngestSummary, source: str, raw_path: bytes, reason: str, actor: str
) -> None:
    store.record_refusal(source, raw_path, reason, actor)
    summary.refused[reason] = summary.refused.get(reason, 0) + 1
    log.warning("refused an input: %s", reason)


def _mtime(path: Path) -> dt.datetime | None:
    try:
        info = path.lstat()
    except OSError:
        return None
    if not stat.S_ISREG(info.st_mode):
        return None
    return dt.datetime.fromtimestamp(info.st_mtime, dt.UTC)
