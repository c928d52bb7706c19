"""Reprocessing: queue a stage under the key the current plan names for items whose work on
that stage was done (or asked for) under another key.

A better model arrives, a stage gets a new version: the items already processed keep their
results, which stay in the store as superseded, and get a job under the new key. Each such
item gets a custody event saying what the new job replaces and why, so the new result's
existence is explained in the item's history. Work happens a page of items per transaction,
so a backlog of millions is requeued without one huge transaction or lock.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from evidence import custody, jobs, requests
from evidence.custody import CustodyEntry
from evidence.db import Database, utc_now
from evidence.records import JobSpec, ResultKey
from evidence.schema import acquisitions, items, results, under_keys
from evidence.schema import jobs as jobs_table

#: Items requeued per transaction: small enough that a page commits in well under a second.
_PAGE = 500


@dataclass(frozen=True)
class Selection:
    """Which items an operator asks to reprocess: all, or those of one request, one kind, or
    acquired since a moment (any acquisition of the item counts; a naive time is UTC)."""

    request_ref: str | None = None
    kind: str | None = None
    acquired_since: dt.datetime | None = None


@dataclass(frozen=True)
class Request:
    """An operator's reprocessing request: which items, at what priority, by whom, why.

    `priority` None gives each job its item's highest acquisition priority, so an item of
    an urgent request stays urgent.
    """

    selection: Selection
    priority: int | None
    max_attempts: int
    actor: str
    reason: str


@dataclass
class ReprocessReport:
    """What a reprocess did (or, dry, would do)."""

    #: Items that got a job under the current key.
    queued: int = 0
    #: Items whose stage needs an upstream result under its current key first.
    waiting_for_upstream: dict[str, int] = field(default_factory=dict)
    #: Queued jobs under older keys that the new ones replace (they will never run).
    retired: int = 0


#: Says, for a requeued item, what makes the new key differ from an old one (a new version,
#: changed options, other upstream results), given the old result's provenance (None where
#: the old job left no result), the old key and the new spec.
Explain = Callable[[Mapping[str, Any] | None, ResultKey, JobSpec], list[str]]


def reprocess(
    database: Database,
    specs: Sequence[tuple[str | None, JobSpec]],
    request: Request,
    explain: Explain,
    dry_run: bool = False,
) -> ReprocessReport:
    """Queue each spec for the items (of its paired kind; None: any kind) that hold jobs of
    its stage under other keys and none under its own.

    Custody records, per item, the keys replaced, what changed and the operator's reason.
    `dry_run` only counts.
    """
    report = ReprocessReport()
    for kind, spec in specs:
        after = ""
        while page := _behind(database, spec.key, kind, request.selection, after):
            after = page[-1]
            if dry_run:
                _count_dry(database, spec, page, report)
                continue
            with database.writer.begin() as connection:
                requeued = [
                    _requeue(database, connection, sha256, spec, request, explain, report)
                    for sha256 in page
                ]
                custody.append(connection, [entry for entry in requeued if entry is not None])
    return report


def _selected(selection: Selection, kind: str | None) -> list[sa.ColumnElement[bool]]:
    conditions: list[sa.ColumnElement[bool]] = []
    if kind is not None:
        conditions.append(items.c.kind == kind)
    if selection.kind is not None:
        conditions.append(items.c.kind == selection.kind)
    arrivals: list[sa.ColumnElement[bool]] = []
    if selection.request_ref is not None:
        arrivals.append(acquisitions.c.request_ref == selection.request_ref)
    if selection.acquired_since is not None:
        # Times are stored in UTC, and SQLite compares them as written: convert, never
        # compare a wall-clock time of another zone.
        since = selection.acquired_since
        since = since.astimezone(dt.UTC) if since.tzinfo else since.replace(tzinfo=dt.UTC)
        arrivals.append(acquisitions.c.acquired_at >= since)
    if arrivals:
        conditions.append(items.c.sha256.in_(sa.select(acquisitions.c.sha256).where(*arrivals)))
    return conditions


def _behind(
    database: Database, current: ResultKey, kind: str | None, selection: Selection, after: str
) -> list[str]:
    """The next page of items (by SHA-256) with a job of the stage under another key and
    none under `current`."""
    query = (
        sa.select(jobs_table.c.sha256)
        .join(items, items.c.sha256 == jobs_table.c.sha256)
        .where(
            *jobs.only_under_other_keys(current.stage, [current]),
            jobs_table.c.sha256 > after,
            *_selected(selection, kind),
        )
        .group_by(jobs_table.c.sha256)
        .order_by(jobs_table.c.sha256)
        .limit(_PAGE)
    )
    with database.reader.connect() as connection:
        return list(connection.execute(query).scalars())


def _count_dry(
    database: Database, spec: JobSpec, page: list[str], report: ReprocessReport
) -> None:
    with database.reader.connect() as connection:
        for sha256 in page:
            missing = _missing(connection, sha256, spec)
            if missing:
                report.waiting_for_upstream[missing] = (
                    report.waiting_for_upstream.get(missing, 0) + 1
                )
                continue
            report.queued += 1
            old_jobs = _old_jobs(connection, sha256, spec)
            report.retired += sum(row.state == jobs.QUEUED for row in old_jobs)


def _missing(connection: sa.Connection, sha256: str, spec: JobSpec) -> str | None:
    """The first upstream stage whose result under the planned key the item lacks."""
    for key in spec.requires:
        if not jobs.results_exist(connection, sha256, [key]):
            return key.stage
    return None


def _old_jobs(
    connection: sa.Connection, sha256: str, spec: JobSpec
) -> list[sa.Row[tuple[int, str, str, str, int]]]:
    """The item's jobs of the stage under other keys than the spec's."""
    return list(
        connection.execute(
            sa.select(
                jobs_table.c.id,
                jobs_table.c.stage_version,
                jobs_table.c.config_hash,
                jobs_table.c.state,
                jobs_table.c.priority,
            ).where(
                jobs_table.c.sha256 == sha256,
                jobs_table.c.stage == spec.stage,
                ~under_keys(jobs_table, [spec.key]),
            )
        )
    )


def _requeue(
    database: Database,
    connection: sa.Connection,
    sha256: str,
    spec: JobSpec,
    request: Request,
    explain: Explain,
    report: ReprocessReport,
) -> CustodyEntry | None:
    """Inside the page's write transaction: the page was read before it, so whether the
    item still lacks a job under the new key, and which old jobs are still queued, is
    decided here again."""
    missing = _missing(connection, sha256, spec)
    if missing is not None:
        report.waiting_for_upstream[missing] = report.waiting_for_upstream.get(missing, 0) + 1
        return None
    old_jobs = _old_jobs(connection, sha256, spec)
    priority = request.priority
    if priority is None:
        # The item's urgency: its most urgent arrival, or a queued job raised since.
        arrival = connection.execute(
            sa.select(sa.func.coalesce(sa.func.max(acquisitions.c.priority), 0)).where(
                acquisitions.c.sha256 == sha256
            )
        ).scalar_one()
        queued = [row.priority for row in old_jobs if row.state == jobs.QUEUED]
        priority = max([int(arrival), *queued])
    if not jobs.enqueue(database, connection, sha256, [spec], priority, request.max_attempts):
        return None  # another reprocess got there first
    if request.priority is None:
        # An item of a request takes what its requests ask for now, as intake gives it.
        requests.reapply_priority(connection, [sha256])
    retired = set(
        connection.execute(
            sa.update(jobs_table)
            .where(
                jobs_table.c.id.in_([row.id for row in old_jobs]),
                jobs_table.c.state == jobs.QUEUED,
            )
            .values(state=jobs.SUPERSEDED, updated_at=utc_now(), finished_at=utc_now())
            .returning(jobs_table.c.id)
        ).scalars()
    )
    report.queued += 1
    report.retired += len(retired)
    provenance = {
        (version, config_hash): stored
        for version, config_hash, stored in connection.execute(
            sa.select(results.c.stage_version, results.c.config_hash, results.c.provenance).where(
                results.c.sha256 == sha256, results.c.stage == spec.stage
            )
        )
    }
    replaced = []
    for row in old_jobs:
        old = ResultKey(spec.stage, row.stage_version, row.config_hash)
        stored = provenance.get((row.stage_version, row.config_hash))
        replaced.append(
            {
                **old.as_json(),
                "state": jobs.SUPERSEDED if row.id in retired else row.state,
                "had_result": stored is not None,
                "changed": explain(stored, old, spec),
            }
        )
    return CustodyEntry(
        actor=request.actor,
        action="reprocess",
        item_sha256=sha256,
        stage=spec.stage,
        details={
            "to": spec.key.as_json(),
            "replaces": replaced,
            "reason": request.reason,
            "priority": priority,
        },
    )
