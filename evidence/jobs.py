"""The durable job queue: the store, not Ray, is the source of truth for what is left to do.

A job is leased with an owner, an expiry and a fencing token; its outcome is committed together
with its result, artifacts, custody event and follow-up jobs in one transaction, and only if
the token still matches. Kill any process at any moment: an expired or orphaned lease returns
the job to the queue, and a result that was already committed is never stored twice.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import sqlalchemy as sa

from evidence import archives, custody
from evidence.custody import CustodyEntry, canonical_json
from evidence.db import Database, utc_now
from evidence.records import Failure, JobSpec, LeasedJob, Outcome, ResultKey, Success
from evidence.schema import artifacts, items, jobs, results, under_keys

QUEUED, LEASED, DONE, FAILED, DEAD = "queued", "leased", "done", "failed", "dead"
#: A queued job an operator replaced by one under the current key (`qarina reprocess`):
#: final, never leased, kept so the job table still shows what was once asked for.
SUPERSEDED = "superseded"
#: States in which a job still has work ahead of it.
OPEN_STATES = (QUEUED, LEASED)


@dataclass(frozen=True)
class CommitReport:
    committed: int
    #: Outcomes refused because the lease had moved on (expired and re-leased elsewhere).
    stale: int


def enqueue(
    database: Database,
    connection: sa.Connection,
    sha256: str,
    specs: Iterable[JobSpec],
    priority: int,
    max_attempts: int,
) -> int:
    """Queue jobs for an item inside the caller's transaction; existing jobs are kept once.

    Returns how many jobs were new.
    """
    now = utc_now()
    new = 0
    for spec in specs:
        if spec.requires and not results_exist(connection, sha256, spec.requires):
            continue
        statement = (
            database.insert(jobs)
            .values(
                sha256=sha256,
                stage=spec.stage,
                stage_version=spec.stage_version,
                config_hash=spec.config_hash,
                state=QUEUED,
                priority=priority,
                max_attempts=max_attempts,
                created_at=now,
                updated_at=now,
            )
            .on_conflict_do_nothing()
        )
        new += connection.execute(statement).rowcount
    return new


def raise_priority(connection: sa.Connection, sha256: str, priority: int) -> None:
    """Raise an item's open jobs to `priority`: an urgent re-acquisition jumps the queue,
    and a job running now passes the priority on to the follow-ups it queues.

    The item's jobs are found through the sha256 key first: a predicate on `state` would let
    the planner scan every queued job of a large backlog instead.
    """
    lower = [
        job_id
        for job_id, state, current in connection.execute(
            sa.select(jobs.c.id, jobs.c.state, jobs.c.priority).where(jobs.c.sha256 == sha256)
        )
        if state in OPEN_STATES and current < priority
    ]
    if lower:
        connection.execute(
            sa.update(jobs)
            .where(jobs.c.id.in_(lower))
            .values(priority=priority, updated_at=utc_now())
        )


def results_exist(
    connection: sa.Connection, sha256: str, keys: Sequence[ResultKey]
) -> bool:
    """Whether the item holds a successful result under each of these keys."""
    found = connection.execute(
        sa.select(sa.func.count()).where(
            results.c.sha256 == sha256, under_keys(results, keys), results.c.status == "ok"
        )
    ).scalar_one()
    return int(found) == len(set(keys))


def only_under_other_keys(
    stage: str, current: Collection[ResultKey]
) -> list[sa.ColumnElement[bool]]:
    """Conditions on `jobs` rows of `stage` under other keys than `current`, of items that
    hold no job of it under a current key: work done, or asked for, under keys the plan no
    longer names, which `qarina reprocess` would queue again."""
    newer = jobs.alias("newer")
    has_current = sa.exists().where(
        newer.c.sha256 == jobs.c.sha256, newer.c.stage == stage, under_keys(newer, current)
    )
    return [jobs.c.stage == stage, ~under_keys(jobs, current), ~has_current]


def release_expired(database: Database) -> int:
    """Return jobs whose lease ran out (a lost worker or driver) to the queue."""
    with database.writer.begin() as connection:
        return connection.execute(
            sa.update(jobs)
            .where(jobs.c.state == LEASED, jobs.c.lease_expires_at < utc_now())
            .values(state=QUEUED, lease_owner=None, lease_expires_at=None, updated_at=utc_now())
        ).rowcount


def release_owners(database: Database, owners: Sequence[str]) -> int:
    """Return the leases of owners known to be dead (a killed driver on this host) at once."""
    if not owners:
        return 0
    with database.writer.begin() as connection:
        return connection.execute(
            sa.update(jobs)
            .where(jobs.c.state == LEASED, jobs.c.lease_owner.in_(owners))
            .values(state=QUEUED, lease_owner=None, lease_expires_at=None, updated_at=utc_now())
        ).rowcount


def lease_owners(database: Database) -> list[str]:
    with database.reader.connect() as connection:
        return list(
            connection.execute(
                sa.select(jobs.c.lease_owner).where(jobs.c.state == LEASED).distinct()
            ).scalars()
        )


def any_queued(database: Database, keys: Collection[ResultKey]) -> bool:
    """A read-only look first: an empty poll must not take SQLite's write lock and fsync."""
    with database.reader.connect() as connection:
        found = connection.execute(
            sa.select(jobs.c.id).where(jobs.c.state == QUEUED, under_keys(jobs, keys)).limit(1)
        ).first()
    return found is not None


def lease(
    database: Database,
    owner: str,
    keys: Collection[ResultKey],
    limit: int,
    ttl: dt.timedelta,
) -> list[LeasedJob]:
    """Lease up to `limit` queued jobs under these keys, highest priority first, oldest first.

    Only jobs of exactly the keys the driver's plan names: a driver running newer code or
    other options never stores its output under another key.
    """
    if limit <= 0 or not keys or not any_queued(database, keys):
        return []
    now = utc_now()
    with database.writer.begin() as connection:
        candidates = (
            sa.select(jobs.c.id)
            .where(jobs.c.state == QUEUED, under_keys(jobs, keys))
            .order_by(jobs.c.priority.desc(), jobs.c.id)
            .limit(limit)
        )
        if not database.is_sqlite:
            candidates = candidates.with_for_update(skip_locked=True)
        ids = list(connection.execute(candidates).scalars())
        if not ids:
            return []
        connection.execute(
            sa.update(jobs)
            .where(jobs.c.id.in_(ids))
            .values(
                state=LEASED,
                lease_owner=owner,
                lease_expires_at=now + ttl,
                lease_token=jobs.c.lease_token + 1,
                updated_at=now,
            )
        )
        rows = connection.execute(
            sa.select(
                jobs.c.id,
                jobs.c.lease_token.label("token"),
                jobs.c.sha256,
                jobs.c.stage,
                jobs.c.stage_version,
                jobs.c.config_hash,
                items.c.kind,
                jobs.c.priority,
                jobs.c.attempts,
                jobs.c.max_attempts,
            )
            .join(items, items.c.sha256 == jobs.c.sha256)
            .where(jobs.c.id.in_(ids))
            .order_by(jobs.c.priority.desc(), jobs.c.id)
        ).all()
    return [LeasedJob(**row._mapping) for row in rows]


def renew(database: Database, owner: str, job_ids: Sequence[int], ttl: dt.timedelta) -> None:
    """Extend the leases a live driver still holds, so long jobs are not taken from it."""
    if not job_ids:
        return
    with database.writer.begin() as connection:
        connection.execute(
            sa.update(jobs)
            .where(jobs.c.id.in_(job_ids), jobs.c.lease_owner == owner, jobs.c.state == LEASED)
            .values(lease_expires_at=utc_now() + ttl)
        )


@dataclass(frozen=True)
class StoredResult:
    """One successful result as a later stage reads it: its data, the hash that proves which
    result it was, and the SHA-256s of the files it derived (its own artifacts only)."""

    key: ResultKey
    data: dict[str, Any]
    data_sha256: str
    artifacts: tuple[str, ...] = ()


def upstream_results(
    database: Database, wanted: Iterable[tuple[str, ResultKey]]
) -> dict[tuple[str, ResultKey], StoredResult]:
    """Successful results of (sha256, key) pairs that later stages read instead of
    recomputing; each with the artifacts of that result, never those of another key's."""
    pairs = set(wanted)
    if not pairs:
        return {}
    found: dict[tuple[str, ResultKey], StoredResult] = {}
    by_id: dict[int, tuple[str, ResultKey]] = {}
    with database.reader.connect() as connection:
        rows = connection.execute(
            sa.select(
                results.c.id,
                results.c.sha256,
                results.c.stage,
                results.c.stage_version,
                results.c.config_hash,
                results.c.data,
                results.c.data_sha256,
            ).where(
                results.c.sha256.in_({sha for sha, _ in pairs}),
                under_keys(results, {key for _, key in pairs}),
                results.c.status == "ok",
            )
        )
        for row in rows:
            pair = (row.sha256, ResultKey(row.stage, row.stage_version, row.config_hash))
            if pair in pairs:
                found[pair] = StoredResult(pair[1], row.data, row.data_sha256)
                by_id[row.id] = pair
        derived: dict[int, list[str]] = {}
        if by_id:
            for result_id, sha256 in connection.execute(
                sa.select(artifacts.c.result_id, artifacts.c.sha256)
                .where(artifacts.c.result_id.in_(by_id))
                .order_by(artifacts.c.id)
            ):
                derived.setdefault(result_id, []).append(sha256)
    for result_id, pair in by_id.items():
        found[pair] = replace(found[pair], artifacts=tuple(derived.get(result_id, ())))
    return found


def commit(
    database: Database,
    outcomes: Sequence[tuple[LeasedJob, Outcome]],
    actor: str,
) -> CommitReport:
    """Commit outcomes atomically: each result with its artifacts, custody and follow-ups.

    One transaction for the whole batch keeps SQLite's fsyncs per batch rather than per item;
    every outcome is still all-or-nothing with the others, so no partial result exists. An
    outcome whose lease token no longer matches (the job expired and went to someone else) is
    refused: its job has a newer owner.
    """
    committed = stale = 0
    with database.writer.begin() as connection:
        entries: list[CustodyEntry] = []
        for job, outcome in outcomes:
            if isinstance(outcome, Success):
                recorded = _commit_success(database, connection, job, outcome, actor)
            else:
                failure = _commit_failure(connection, job, outcome, actor)
                recorded = None if failure is None else [failure]
            if recorded is None:
                stale += 1
            else:
                entries += recorded
                committed += 1
        custody.append(connection, entries)
    return CommitReport(committed, stale)


def _finish(connection: sa.Connection, job: LeasedJob, **values: Any) -> int | None:
    """End the lease, but only if it is still this job's lease (the fencing check).

    Returns the job's priority as it is now (None when the lease had moved on): a request
    re-prioritised while the job ran has changed it, and its follow-ups must take the new one.
    """
    priority: int | None = connection.execute(
        sa.update(jobs)
        .where(jobs.c.id == job.id, jobs.c.lease_token == job.token, jobs.c.state == LEASED)
        .values(lease_owner=None, lease_expires_at=None, updated_at=utc_now(), **values)
        .returning(jobs.c.priority)
    ).scalar()
    return priority


def _set_kind(connection: sa.Connection, sha256: str, kind: str | None) -> None:
    if kind is not None:
        connection.execute(sa.update(items).where(items.c.sha256 == sha256).values(kind=kind))


def _commit_success(
    database: Database,
    connection: sa.Connection,
    job: LeasedJob,
    outcome: Success,
    actor: str,
) -> list[CustodyEntry] | None:
    now = utc_now()
    priority = _finish(
        connection, job, state=DONE, finished_at=now, error_reason=None, error_detail=None
    )
    if priority is None:
        return None
    data = dict(outcome.data)
    data_sha256 = hashlib.sha256(canonical_json(data).encode()).hexdigest()
    inserted = connection.execute(
        database.insert(results)
        .values(
            sha256=job.sha256,
            stage=job.stage,
            stage_version=job.stage_version,
            config_hash=job.config_hash,
            status="skipped" if outcome.skip_reason else "ok",
            skip_reason=outcome.skip_reason,
            data=data,
            data_sha256=data_sha256,
            provenance=dict(outcome.provenance),
            created_at=now,
        )
        .on_conflict_do_nothing()
        .returning(results.c.id)
    ).scalar()
    if inserted is not None and outcome.artifacts:
        connection.execute(
            sa.insert(artifacts),
            [
                {
                    "sha256": artifact.sha256,
                    "parent_sha256": job.sha256,
                    "result_id": inserted,
                    "stage": job.stage,
                    "role": artifact.role,
                    "media_type": artifact.media_type,
                    "size_bytes": artifact.size_bytes,
                    "meta": dict(artifact.meta),
                }
                for artifact in outcome.artifacts
            ],
        )
    _set_kind(connection, job.sha256, outcome.item_kind)
    enqueue(database, connection, job.sha256, outcome.follow_ups, priority, job.max_attempts)
    entries: list[CustodyEntry] = []
    if inserted is not None and outcome.members:
        entries, found = archives.register_members(
            database, connection, job, outcome.members, inserted, actor
        )
        for member_sha256, new_item in found.items():
            enqueue(
                database,
                connection,
                member_sha256,
                outcome.member_jobs,
                priority,
                job.max_attempts,
            )
            if not new_item:
                raise_priority(connection, member_sha256, priority)
    result_entry = CustodyEntry(
        actor=actor,
        action="result" if outcome.skip_reason is None else "skip",
        item_sha256=job.sha256,
        stage=job.stage,
        details={
            "stage_version": job.stage_version,
            "config_hash": job.config_hash,
            "result_sha256": data_sha256,
            "already_stored": inserted is None,
            "skip_reason": outcome.skip_reason,
            "artifacts": sorted(artifact.sha256 for artifact in outcome.artifacts),
            **({"members": len(outcome.members)} if outcome.members else {}),
            "provenance": dict(outcome.provenance),
        },
    )
    return [result_entry, *entries]


def _commit_failure(
    connection: sa.Connection, job: LeasedJob, outcome: Failure, actor: str
) -> CustodyEntry | None:
    attempts = job.attempts + 1
    if not outcome.retryable:
        state = FAILED
    elif attempts < job.max_attempts:
        state = QUEUED
    else:
        state = DEAD
    if (
        _finish(
            connection,
            job,
            state=state,
            attempts=attempts,
            error_reason=outcome.reason,
            error_detail=outcome.detail,
            finished_at=None if state == QUEUED else utc_now(),
        )
        is None
    ):
        return None
    _set_kind(connection, job.sha256, outcome.item_kind)
    return CustodyEntry(
        actor=actor,
        action="failure",
        item_sha256=job.sha256,
        stage=job.stage,
        details={
            "stage_version": job.stage_version,
            "config_hash": job.config_hash,
            "reason": outcome.reason,
            "detail": outcome.detail,
            "attempt": attempts,
            "state": state,
            "provenance": dict(outcome.provenance),
        },
    )


def open_jobs(database: Database, keys: Iterable[ResultKey]) -> int:
    """Jobs under these keys not yet ended (queued, or leased by anyone)."""
    with database.reader.connect() as connection:
        return int(
            connection.execute(
                sa.select(sa.func.count())
                .select_from(jobs)
                .where(jobs.c.state.in_(OPEN_STATES), under_keys(jobs, keys))
            ).scalar_one()
        )
