"""`qarina export --format jsonl`: one JSON line per item, for bulk loading elsewhere.

A line is what `qarina show --json` gives for the item, plus `custody`: the sequence number,
action and hash of each of its custody events, which tie the line to the chain (`qarina
verify`, a custody export). UTF-8, non-ASCII kept as it is (Arabic reads as Arabic).

Items are read a page at a time in SHA-256 order, by keyset (never OFFSET), and written as
they are read, so a store of millions of items never sits in memory: only the hashes of the
items written do, as 32 bytes each (32 MB for a million).

The file is written under a hidden name beside the target. Then every item written gets an
`export` event naming the file's SHA-256, all of them in one transaction. Last, the file is
renamed into place. A crash before the commit leaves no file and no event; a crash between
the commit and the rename leaves the complete file under its hidden name, recorded. Custody
may then say more left the store than did, never less, and never for some of the items only.

`Store.record_sharing` appends the events a page at a time within its one transaction, so
they never sit in memory all at once (about 1.4 kB an event, measured with 100,000 on
SQLite). The transaction holds the chain's lock while it appends, about 25 s per million
events on SQLite (same measurement). Other writers wait for it: on SQLite within its 60 s
busy timeout, on PostgreSQL at the chain's advisory lock.
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
from evidence.custody import StoredEvent
from evidence.db import Database
from evidence.records import CurrentKeys
from evidence.schema import acquisitions, items
from evidence.store import Store
from pipelines.export.bundle import ExportError, publish

#: Items per page: each costs a `show` (a handful of small queries) and one line in memory.
PAGE = 500
_DIGEST_BYTES = 32


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


def _lines(store: Store, current: CurrentKeys, shas: list[str]) -> Iterator[tuple[str, bytes]]:
    """(item, its line) for each item."""
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
        yield sha256, (json.dumps(record, ensure_ascii=False) + "\n").encode()


def _record(
    store: Store, written: bytes, actor: str, details: dict[str, object], page: int
) -> StoredEvent | None:
    """One `export` event per item of `written` (their SHA-256s, 32 bytes each), all in one
    transaction; returns the chain head they are anchored to, read just before."""
    with store.database.reader.connect() as connection:
        head = custody.chain_head(connection)
    if head is None:
        anchor = {"chain_head_seq": 0, "chain_head_hash": custody.GENESIS_HASH}
    else:
        anchor = {"chain_head_seq": head.seq, "chain_head_hash": head.event_hash}
    recorded = {**details, **anchor}
    store.record_sharing(
        "export",
        actor,
        (
            (written[offset : offset + _DIGEST_BYTES].hex(), recorded)
            for offset in range(0, len(written), _DIGEST_BYTES)
        ),
        page,
    )
    return head


def export_jsonl(
    store: Store,
    current: CurrentKeys,
    selection: Selection,
    out: Path,
    actor: str,
    page: int = PAGE,
) -> JsonlReport:
    """Write the selected items to the new file `out`, recording the export in custody
    before the file is renamed into place (see the module's docstring).

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
    written = bytearray()
    try:
        with work.open("xb") as stream:
            for shas in item_pages(store.database, selection, page):
                for sha256, line in _lines(store, current, shas):
                    stream.write(line)
                    hasher.update(line)
                    written += bytes.fromhex(sha256)
        details: dict[str, object] = {
            "format": "jsonl",
            "file_sha256": hasher.hexdigest(),
            "items": len(written) // _DIGEST_BYTES,
        }
        head = _record(store, bytes(written), actor, details, page)
    except BaseException:
        work.unlink(missing_ok=True)
        raise
    publish(work, out)
    return JsonlReport(
        out,
        len(written) // _DIGEST_BYTES,
        hasher.hexdigest(),
        0 if head is None else head.seq,
        custody.GENESIS_HASH if head is None else head.event_hash,
    )
