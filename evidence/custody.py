"""The custody log: append-only and hash-chained, so any later edit of any event is detectable.

Each event's hash covers its sequence number, time, actor, action, item, stage, canonical JSON
details and the previous event's hash. `verify_chain` recomputes every hash from the first
event on; the first mismatch names the event where the record stops being trustworthy.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from evidence.db import as_utc, utc_now
from evidence.schema import custody_events

GENESIS_HASH = "0" * 64
_CHAIN_LOCK_KEY = 7412
_VERIFY_PAGE = 5000


def canonical_json(value: Any) -> str:
    """One byte-exact JSON spelling for a value, so the same event always hashes the same."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def _event_hash(
    seq: int,
    at_iso: str,
    actor: str,
    action: str,
    item_sha256: str | None,
    stage: str | None,
    details: str,
    prev_hash: str,
) -> str:
    material = canonical_json([seq, at_iso, actor, action, item_sha256, stage, details, prev_hash])
    return hashlib.sha256(material.encode()).hexdigest()


@dataclass(frozen=True)
class CustodyEntry:
    """What a caller wants recorded; sequence, time and hashes are assigned on append."""

    actor: str
    action: str
    item_sha256: str | None = None
    stage: str | None = None
    details: Mapping[str, Any] | None = None


def append(connection: sa.Connection, entries: list[CustodyEntry]) -> None:
    """Append events inside the caller's transaction, so they commit with what they record.

    The chain has one head: on PostgreSQL a transaction-scoped advisory lock serialises
    appenders; on SQLite the IMMEDIATE transaction already holds the only write lock.
    """
    if not entries:
        return
    if connection.dialect.name == "postgresql":
        connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _CHAIN_LOCK_KEY})
    head = connection.execute(
        sa.select(custody_events.c.seq, custody_events.c.event_hash)
        .order_by(custody_events.c.seq.desc())
        .limit(1)
    ).first()
    seq, prev_hash = (head.seq, head.event_hash) if head else (0, GENESIS_HASH)
    at = utc_now()
    at_iso = at.isoformat(timespec="microseconds")
    rows = []
    for entry in entries:
        seq += 1
        details = canonical_json(dict(entry.details or {}))
        event_hash = _event_hash(
            seq,
            at_iso,
            entry.actor,
            entry.action,
            entry.item_sha256,
            entry.stage,
            details,
            prev_hash,
        )
        rows.append(
            {
                "seq": seq,
                "at": at,
                "actor": entry.actor,
                "action": entry.action,
                "item_sha256": entry.item_sha256,
                "stage": entry.stage,
                "details": details,
                "prev_hash": prev_hash,
                "event_hash": event_hash,
            }
        )
        prev_hash = event_hash
    connection.execute(sa.insert(custody_events), rows)


@dataclass(frozen=True)
class StoredEvent:
    """One event as the chain holds it: every field its hash covers, so a copy of it (a page,
    an export) can be checked again without the store. `details_text` is the exact canonical
    text that was hashed; `details` is it parsed."""

    seq: int
    at_iso: str
    actor: str
    action: str
    item_sha256: str | None
    stage: str | None
    details_text: str
    prev_hash: str
    event_hash: str

    @property
    def details(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.details_text)
        return parsed

    def recomputed_hash(self) -> str:
        return _event_hash(
            self.seq,
            self.at_iso,
            self.actor,
            self.action,
            self.item_sha256,
            self.stage,
            self.details_text,
            self.prev_hash,
        )


def _stored(row: sa.Row[Any]) -> StoredEvent:
    return StoredEvent(
        seq=row.seq,
        at_iso=as_utc(row.at).isoformat(timespec="microseconds"),
        actor=row.actor,
        action=row.action,
        item_sha256=row.item_sha256,
        stage=row.stage,
        details_text=row.details,
        prev_hash=row.prev_hash,
        event_hash=row.event_hash,
    )


def events(connection: sa.Connection, after_seq: int = 0) -> Iterator[StoredEvent]:
    """Every event after `after_seq`, oldest first, a page at a time: a copy of the chain
    (an export from genesis) never holds it all."""
    for row in _rows(connection, after_seq):
        yield _stored(row)


def item_trail(connection: sa.Connection, sha256: str) -> list[StoredEvent]:
    """The events that name one item, oldest first: its custody trail."""
    return [
        _stored(row)
        for row in connection.execute(
            sa.select(custody_events)
            .where(custody_events.c.item_sha256 == sha256)
            .order_by(custody_events.c.seq)
        )
    ]


def chain_head(connection: sa.Connection) -> StoredEvent | None:
    """The newest event: what a copy of part of the chain is anchored to."""
    row = connection.execute(
        sa.select(custody_events).order_by(custody_events.c.seq.desc()).limit(1)
    ).first()
    return None if row is None else _stored(row)


@dataclass(frozen=True)
class ChainBreak:
    seq: int
    problem: str


@dataclass(frozen=True)
class ChainReport:
    events: int
    head_hash: str
    first_break: ChainBreak | None


def _rows(connection: sa.Connection, after_seq: int = 0) -> Iterator[sa.Row[Any]]:
    last_seq = after_seq
    while True:
        page = connection.execute(
            sa.select(custody_events)
            .where(custody_events.c.seq > last_seq)
            .order_by(custody_events.c.seq)
            .limit(_VERIFY_PAGE)
        ).all()
        if not page:
            return
        yield from page
        last_seq = page[-1].seq


def verify_chain(connection: sa.Connection) -> ChainReport:
    """Re-walk the whole chain; report the first event whose content or link does not hold."""
    expected_seq, prev_hash, count = 1, GENESIS_HASH, 0
    for row in _rows(connection):
        count += 1
        if row.seq != expected_seq:
            return ChainReport(count, prev_hash, ChainBreak(expected_seq, "event missing"))
        if row.prev_hash != prev_hash:
            return ChainReport(
                count, prev_hash, ChainBreak(row.seq, "link to previous event broken")
            )
        if _stored(row).recomputed_hash() != row.event_hash:
            return ChainReport(count, prev_hash, ChainBreak(row.seq, "event content altered"))
        prev_hash, expected_seq = row.event_hash, expected_seq + 1
    return ChainReport(count, prev_hash, None)
