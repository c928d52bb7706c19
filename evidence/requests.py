"""Requests for assistance: named sets of items with a priority and a deadline.

A request's items are those whose acquisitions carry its reference. Its priority is what
their queued jobs take: raising it moves them ahead of the backlog at once, and an item that
also belongs to a more urgent request, or arrived more urgently, keeps the higher priority.
Every change is a custody event naming who asked.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from evidence import custody
from evidence.custody import CustodyEntry
from evidence.db import Database, as_utc, utc_now
from evidence.jobs import LEASED, QUEUED
from evidence.schema import acquisitions, requests
from evidence.schema import jobs as jobs_table

#: Items updated per statement: within every backend's limit on bound parameters.
_CHUNK = 1000


@dataclass(frozen=True)
class Request:
    ref: str
    priority: int
    deadline: dt.datetime | None
    created_at: dt.datetime
    created_by: str


class UnknownRequest(LookupError):
    """No request has this reference."""


def _row_request(row: sa.Row[tuple[object, ...]]) -> Request:
    deadline = row.deadline
    return Request(
        row.ref,
        int(row.priority),
        as_utc(deadline) if deadline is not None else None,
        as_utc(row.created_at),
        row.created_by,
    )


def get(database: Database, ref: str) -> Request | None:
    with database.reader.connect() as connection:
        row = connection.execute(sa.select(requests).where(requests.c.ref == ref)).first()
    return None if row is None else _row_request(row)


def all_requests(database: Database) -> list[Request]:
    with database.reader.connect() as connection:
        rows = connection.execute(sa.select(requests).order_by(requests.c.ref)).all()
    return [_row_request(row) for row in rows]


def _insert_new(
    database: Database,
    connection: sa.Connection,
    ref: str,
    priority: int,
    actor: str,
    now: dt.datetime,
) -> bool:
    """Insert request `ref` with no deadline unless it exists; whether this call made it."""
    inserted = connection.execute(
        database.insert(requests)
        .values(
            ref=ref,
            priority=priority,
            deadline=None,
            created_at=now,
            created_by=actor,
            updated_at=now,
        )
        .on_conflict_do_nothing()
    ).rowcount
    return bool(inserted)


def ensure(
    database: Database, connection: sa.Connection, ref: str, priority: int, actor: str
) -> int:
    """The priority of request `ref` inside the caller's transaction, creating the request
    (with `priority`, no deadline) when an intake route names one not created before."""
    asked = sa.select(requests.c.priority).where(requests.c.ref == ref)
    # On PostgreSQL a shared lock waits for a re-prioritisation in flight, so an arrival
    # never takes the priority it replaces.
    found = connection.execute(
        asked if database.is_sqlite else asked.with_for_update(read=True)
    ).scalar()
    if found is not None:
        return int(found)
    if not _insert_new(database, connection, ref, priority, actor, utc_now()):
        # another intake created it first
        return int(
            connection.execute(
                sa.select(requests.c.priority).where(requests.c.ref == ref)
            ).scalar_one()
        )
    custody.append(
        connection,
        [
            CustodyEntry(
                actor=actor,
                action="request",
                details={"ref": ref, "priority": priority, "deadline": None, "implicit": True},
            )
        ],
    )
    return priority


def create(
    database: Database,
    ref: str,
    actor: str,
    *,
    priority: int | None = None,
    deadline: dt.datetime | None = None,
    clear_deadline: bool = False,
) -> Request:
    """Create a request, or change an existing one: what is not given is kept (a new one
    starts at priority 0 with no deadline), and `clear_deadline` removes its deadline.

    Items already acquired under the reference take the priority at once.
    """
    now = utc_now()
    with database.writer.begin() as connection:
        # A request first named by an intake at this moment is created there: create it
        # here only if nobody has, then change it like an existing one, under a row lock.
        created = _insert_new(
            database, connection, ref, 0 if priority is None else priority, actor, now
        )
        locked = sa.select(requests).where(requests.c.ref == ref)
        row = connection.execute(locked if database.is_sqlite else locked.with_for_update()).one()
        existing = None if created else row
        if priority is None:
            priority = int(row.priority)
        if clear_deadline:
            deadline = None
        elif deadline is None and existing is not None:
            deadline = existing.deadline
        connection.execute(
            sa.update(requests)
            .where(requests.c.ref == ref)
            .values(priority=priority, deadline=deadline, updated_at=now)
        )
        changed = _apply_priority(connection, ref)
        custody.append(
            connection,
            [
                CustodyEntry(
                    actor=actor,
                    action="request",
                    details={
                        "ref": ref,
                        "priority": priority,
                        "deadline": deadline.isoformat() if deadline else None,
                        "replaces": None
                        if existing is None
                        else {
                            "priority": existing.priority,
                            "deadline": as_utc(existing.deadline).isoformat()
                            if existing.deadline
                            else None,
                        },
                        "queued_jobs_changed": changed,
                    },
                )
            ],
        )
    found = get(database, ref)
    assert found is not None  # written just above
    return found


def set_priority(database: Database, ref: str, priority: int, actor: str) -> int:
    """Re-prioritise a request and its items' queued jobs; how many jobs changed.

    Raises:
        UnknownRequest: no request has this reference.
    """
    with database.writer.begin() as connection:
        before = connection.execute(
            sa.select(requests.c.priority).where(requests.c.ref == ref)
        ).scalar()
        if before is None:
            raise UnknownRequest(ref)
        connection.execute(
            sa.update(requests)
            .where(requests.c.ref == ref)
            .values(priority=priority, updated_at=utc_now())
        )
        changed = _apply_priority(connection, ref)
        custody.append(
            connection,
            [
                CustodyEntry(
                    actor=actor,
                    action="request_priority",
                    details={
                        "ref": ref,
                        "priority": priority,
                        "previous": int(before),
                        "queued_jobs_changed": changed,
                    },
                )
            ],
        )
    return changed


def _apply_priority(connection: sa.Connection, ref: str) -> int:
    """Set the open jobs of the request's items to what their requests and arrivals ask
    for now: the highest of the priorities of the requests an item belongs to and of its
    arrivals' own (an arrival that asked for more than its request keeps it). Leased jobs
    change too: the follow-ups they queue when they finish take their priority."""
    return _apply_to(
        connection, sa.select(acquisitions.c.sha256).where(acquisitions.c.request_ref == ref)
    )


def reapply_priority(connection: sa.Connection, shas: Sequence[str]) -> int:
    """Give the queued jobs of these items that belong to a request the priority their
    requests ask for now, inside the caller's transaction: a job queued again after its
    request was re-prioritised (requeued failures) must not keep the priority it had."""
    return _apply_to(
        connection,
        sa.select(acquisitions.c.sha256).where(
            acquisitions.c.sha256.in_(shas), acquisitions.c.request_ref.is_not(None)
        ),
    )


def _apply_to(connection: sa.Connection, members: sa.Select[tuple[str]]) -> int:
    wanted = (
        sa.select(
            acquisitions.c.sha256,
            sa.func.max(
                sa.case(
                    (requests.c.priority > acquisitions.c.priority, requests.c.priority),
                    else_=acquisitions.c.priority,
                )
            ),
        )
        .outerjoin(requests, requests.c.ref == acquisitions.c.request_ref)
        .where(acquisitions.c.sha256.in_(members))
        .group_by(acquisitions.c.sha256)
    )
    changed = 0
    by_priority: dict[int, list[str]] = {}
    for sha256, priority in connection.execute(wanted):
        by_priority.setdefault(int(priority), []).append(sha256)
    for priority, shas in by_priority.items():
        for start in range(0, len(shas), _CHUNK):
            changed += connection.execute(
                sa.update(jobs_table)
                .where(
                    jobs_table.c.sha256.in_(shas[start : start + _CHUNK]),
                    jobs_table.c.state.in_((QUEUED, LEASED)),
                    jobs_table.c.priority != priority,
                )
                .values(priority=priority, updated_at=utc_now())
            ).rowcount
    return changed
