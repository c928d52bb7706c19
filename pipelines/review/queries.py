"""What the review pages read from the store besides `Store.show`, custody and reviews: a
page's rows, and the backlog's figures, each in one grouped query whatever the store's size.

An item's state follows what `qarina status` counts (pipelines/backlog.py's item progress):
work open under the plan's current keys makes it in progress; else a failed or dead job
under them makes it failed; else it is processed, unless none of its jobs is under a
current key at all, when only results made under older keys are there (superseded only,
until `qarina reprocess`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from evidence.db import Database, as_utc
from evidence.jobs import DEAD, FAILED, OPEN_STATES
from evidence.records import ResultKey
from evidence.schema import acquisitions, artifacts, items, jobs, matches, results, under_keys

#: The states an item is listed under, in the order the backlog's table shows them.
STATES: tuple[str, ...] = ("processed", "in progress", "failed", "superseded only", "no jobs")


@dataclass(frozen=True)
class Scope:
    """The items a set of pages covers: a request's (every item with an acquisition for it),
    or items named one by one. `shas` answers "is it in scope?" without a query; `where`
    narrows a query by a subquery for a request, so that a request of a million items is
    never sent to the database as a list."""

    label: str
    shas: frozenset[str]
    request_ref: str | None = None

    def where(self, column: sa.ColumnElement[str]) -> sa.ColumnElement[bool]:
        if self.request_ref is not None:
            return column.in_(
                sa.select(acquisitions.c.sha256).where(
                    acquisitions.c.request_ref == self.request_ref
                )
            )
        return column.in_(sorted(self.shas))


class UnknownItems(LookupError):
    """Hashes named for a report that no item has."""

    def __init__(self, missing: Collection[str]) -> None:
        super().__init__(", ".join(sorted(missing)))
        self.missing = sorted(missing)


def request_scope(database: Database, request_ref: str) -> Scope:
    """The items with an acquisition for `request_ref` (none for a request nothing arrived
    for; whether the request exists is for the caller to ask)."""
    with database.reader.connect() as connection:
        shas = connection.execute(
            sa.select(acquisitions.c.sha256)
            .where(acquisitions.c.request_ref == request_ref)
            .distinct()
        ).scalars()
        return Scope(f"request {request_ref}", frozenset(shas), request_ref)


def items_scope(database: Database, shas: Collection[str]) -> Scope:
    """The named items.

    Raises:
        UnknownItems: some hash names no item.
    """
    wanted = {sha.lower() for sha in shas}
    with database.reader.connect() as connection:
        known = set(
            connection.execute(
                sa.select(items.c.sha256).where(items.c.sha256.in_(sorted(wanted)))
            ).scalars()
        )
    if wanted - known:
        raise UnknownItems(wanted - known)
    count = len(known)
    return Scope(f"{count} named item{'' if count == 1 else 's'}", frozenset(known))


def _where(scope: Scope | None, column: sa.ColumnElement[str]) -> sa.ColumnElement[bool]:
    return sa.true() if scope is None else scope.where(column)


def _state(planned: Collection[ResultKey]) -> sa.ColumnElement[str]:
    """An item's state (see the module docstring) as one SQL expression, so that a page of
    items and the backlog's counts read it the same way."""

    def any_job(*conditions: Any) -> sa.Exists:
        job = jobs.alias()
        return sa.exists().where(
            job.c.sha256 == items.c.sha256, *(condition(job) for condition in conditions)
        )

    def current(job: sa.FromClause) -> sa.ColumnElement[bool]:
        return under_keys(job, planned)

    return sa.case(
        (any_job(current, lambda job: job.c.state.in_(OPEN_STATES)), STATES[1]),
        (any_job(current, lambda job: job.c.state.in_((FAILED, DEAD))), STATES[2]),
        (any_job(current), STATES[0]),
        (any_job(), STATES[3]),
        else_=STATES[4],
    )


def kinds_and_states(
    database: Database, planned: Collection[ResultKey], scope: Scope | None
) -> dict[tuple[str, str], int]:
    """Items per (kind, state); an item not probed yet has the kind "unknown"."""
    state = _state(planned).label("state")
    with database.reader.connect() as connection:
        rows = connection.execute(
            sa.select(items.c.kind, state, sa.func.count())
            .where(_where(scope, items.c.sha256))
            .group_by(items.c.kind, state)
        )
        return {(kind or "unknown", state_name): int(count) for kind, state_name, count in rows}


def failures(
    database: Database, planned: Collection[ResultKey], scope: Scope | None
) -> list[tuple[str, str, int]]:
    """(reason, stage, jobs) of failed and dead jobs under the current keys, most first."""
    with database.reader.connect() as connection:
        rows = connection.execute(
            sa.select(jobs.c.error_reason, jobs.c.stage, sa.func.count())
            .where(
                jobs.c.state.in_((FAILED, DEAD)),
                under_keys(jobs, planned),
                _where(scope, jobs.c.sha256),
            )
            .group_by(jobs.c.error_reason, jobs.c.stage)
        )
        found = [
            (str(reason or "unknown"), str(stage), int(count)) for reason, stage, count in rows
        ]
    return sorted(found, key=lambda row: (-row[2], row[0], row[1]))


def finished_per_hour(
    database: Database, scope: Scope | None, since: dt.datetime
) -> dict[dt.datetime, int]:
    """Jobs that ended (done or failed) per UTC hour since `since`, keyed by the hour's start.

    Counted in the database per hour since the epoch, so a busy week costs one grouped scan
    of the `finished_at` index, not a row per job; SQLite keeps timestamps as UTC text.
    """
    if database.is_sqlite:
        hour = sa.cast(sa.func.strftime("%s", jobs.c.finished_at), sa.Integer) // 3600
    else:
        hour = sa.cast(sa.func.floor(sa.extract("epoch", jobs.c.finished_at) / 3600), sa.Integer)
    hour = hour.label("hour")
    with database.reader.connect() as connection:
        rows = connection.execute(
            sa.select(hour, sa.func.count())
            .where(jobs.c.finished_at >= since, _where(scope, jobs.c.sha256))
            .group_by(hour)
        )
        return {
            dt.datetime.fromtimestamp(int(index) * 3600, dt.UTC): int(count)
            for index, count in rows
        }


@dataclass(frozen=True)
class ItemRow:
    """One line of the items list."""

    sha256: str
    kind: str | None
    size_bytes: int
    first_seen: dt.datetime
    state: str


def count_items(database: Database, scope: Scope | None) -> int:
    with database.reader.connect() as connection:
        return int(
            connection.execute(
                sa.select(sa.func.count()).select_from(items).where(_where(scope, items.c.sha256))
            ).scalar_one()
        )


def item_rows(
    database: Database,
    planned: Collection[ResultKey],
    scope: Scope | None,
    offset: int,
    limit: int,
) -> list[ItemRow]:
    """A page of items in the order they were first seen (the hash breaks ties)."""
    with database.reader.connect() as connection:
        rows = connection.execute(
            sa.select(
                items.c.sha256,
                items.c.kind,
                items.c.size_bytes,
                items.c.created_at,
                _state(planned).label("state"),
            )
            .where(_where(scope, items.c.sha256))
            .order_by(items.c.created_at, items.c.sha256)
            .offset(offset)
            .limit(limit)
        )
        return [
            ItemRow(row.sha256, row.kind, int(row.size_bytes), as_utc(row.created_at), row.state)
            for row in rows
        ]


def first_seen(database: Database, shas: Collection[str]) -> dict[str, dt.datetime]:
    """When each item first arrived (its first acquisition registered it)."""
    with database.reader.connect() as connection:
        rows = connection.execute(
            sa.select(items.c.sha256, items.c.created_at).where(items.c.sha256.in_(sorted(shas)))
        )
        return {sha256: as_utc(created) for sha256, created in rows}


@dataclass(frozen=True)
class Frame:
    """A keyframe a video's current keyframes result stored: its picture and its time."""

    artifact_sha256: str
    t: float


def keyframes(
    database: Database, keyframes_keys: Collection[ResultKey], shas: Sequence[str]
) -> dict[str, list[Frame]]:
    """Per video among `shas`: the keyframes of its result under the current keys, in time
    order (items with none are absent)."""
    with database.reader.connect() as connection:
        rows = connection.execute(
            sa.select(artifacts.c.parent_sha256, artifacts.c.sha256, artifacts.c.meta)
            .join(results, results.c.id == artifacts.c.result_id)
            .where(
                artifacts.c.parent_sha256.in_(sorted(set(shas))),
                artifacts.c.role == "keyframe",
                results.c.status == "ok",
                under_keys(results, keyframes_keys),
            )
        )
        found: dict[str, list[Frame]] = {}
        for parent, artifact, meta in rows:
            found.setdefault(parent, []).append(Frame(artifact, float(meta.get("t", 0.0))))
    return {sha: sorted(frames, key=lambda frame: frame.t) for sha, frames in found.items()}


def item_shas(database: Database, scope: Scope | None) -> list[str]:
    """Every item in scope, in the order the items list shows them."""
    with database.reader.connect() as connection:
        return list(
            connection.execute(
                sa.select(items.c.sha256)
                .where(_where(scope, items.c.sha256))
                .order_by(items.c.created_at, items.c.sha256)
            ).scalars()
        )


def newest_link_id(database: Database) -> int:
    """The id of the newest near-duplicate link (0 without any). Links are only ever added,
    so while it stays the same, so do the clusters: one lookup of the primary key's end."""
    with database.reader.connect() as connection:
        return int(connection.execute(sa.select(sa.func.max(matches.c.id))).scalar() or 0)
