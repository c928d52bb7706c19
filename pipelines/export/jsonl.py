"""`qarina export --format jsonl`: one JSON line per item, for bulk loading elsewhere.

A line is what `qarina show --json` gives for the item, plus `custody`: the sequence number,
action and hash of each of its custody events, which tie the line to the chain (`qarina
verify`, a custody export). UTF-8, non-ASCII kept as it is (Arabic reads as Arabic).

Items are read a page at a time in SHA-256 order, by keyset (never OFFSET), and written as
they are read, so a store of millions of items never sits in memory. The file is written
under a hidden name beside the target and renamed when complete; then each exported item gets
an `export` event naming the file's SHA-256, read back from the file itself, a page at a time.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from evidence import custody, requests
from evidence.db import Database
from evidence.records import CurrentKeys
from evidence.schema import acquisitions, items
from evidence.store import Store
from pipelines.export.bundle import ExportError

#: Items per page: each costs a `show` (a handful of small queries) and one line in memory.
PAGE = 500


@dataclass(frozen=True)
class Selection:
    """The items to export: those named, or a request's, or (neither given) all of them."""

    shas: tuple[str, ...] = ()
    request_ref: str | None = None


@dataclass(frozen=True)
class JsonlReport:
    path: Path
    items: int
    file_sha256: str
    head_seq: int
    head_hash: str


def item_pages(database: Database, selection: Selection, page: int = PAGE) -> Iterator[list[str]]:
    """The selected items' hashes in SHA-256 order, `page` at a time."""
    if selection.shas:
        named = sorted({sha256.lower() for sha256 in selection.shas})
        for start in range(0, len(named), page):
            yield named[start : start + page]
        return
    query = sa.select(items.c.sha256).order_by(items.c.sha256).limit(page)
    if selection.request_ref is not None:
        query = query.where(
            items.c.sha256.in_(
                sa.select(acquisitions.c.sha256).where(
                    acquisitions.c.request_ref == selection.request_ref
                )
            )
        )
    last = ""
    while True:
        with database.reader.connect() as connection:
            shas = list(connection.execute(query.where(items.c.sha256 > last)).scalars())
        if not shas:
            return
        yield shas
        last = shas[-1]


def _lines(store: Store, current: CurrentKeys, shas: list[str]) -> Iterator[bytes]:
    for sha256 in shas:
        record = store.show(sha256, current)
        if record is None:
            raise ExportError(f"no item {sha256}")
        with store.database.reader.connect() as connection:
            trail = custody.item_trail(connection, sha256)
        record["custody"] = [
            {"seq": event.seq, "action": event.action, "event_hash": event.event_hash}
            for event in trail
        ]
        yield (json.dumps(record, ensure_ascii=False) + "\n").encode()


def _exported(path: Path, page: int) -> Iterator[list[str]]:
    """The items the written file holds, read back from it, `page` at a time."""
    shas: list[str] = []
    with path.open(encoding="utf-8") as stream:
        for line in stream:
            shas.append(json.loads(line)["sha256"])
            if len(shas) == page:
                yield shas
                shas = []
    if shas:
        yield shas


def export_jsonl(
    store: Store,
    current: CurrentKeys,
    selection: Selection,
    out: Path,
    actor: str,
    page: int = PAGE,
) -> JsonlReport:
    """Write the selected items to the new file `out`, then record the export in custody.

    Raises:
        ExportError: `out` exists, or a named item or the request is not in the store.
    """
    if out.exists():
        raise ExportError(f"{out} exists: an export is written to a new file")
    if (
        selection.request_ref is not None
        and requests.get(store.database, selection.request_ref) is None
    ):
        raise ExportError(f"no request {selection.request_ref} (`qarina request list` lists them)")
    work = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:12]}"
    hasher = hashlib.sha256()
    count = 0
    try:
        with work.open("xb") as stream:
            for shas in item_pages(store.database, selection, page):
                for line in _lines(store, current, shas):
                    stream.write(line)
                    hasher.update(line)
                    count += 1
        work.rename(out)
    except BaseException:
        work.unlink(missing_ok=True)
        raise
    with store.database.reader.connect() as connection:
        head = custody.chain_head(connection)
    head_seq, head_hash = (0, custody.GENESIS_HASH) if head is None else (head.seq, head.event_hash)
    details: dict[str, object] = {
        "format": "jsonl",
        "file_sha256": hasher.hexdigest(),
        "chain_head_seq": head_seq,
        "chain_head_hash": head_hash,
        "items": count,
    }
    for shas in _exported(out, page):
        store.record_sharing("export", shas, actor, details)
    return JsonlReport(out, count, hasher.hexdigest(), head_seq, head_hash)
