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
from evidence.db import Database, utc_now, write_retrying
from evidence.records import (
    Failure,
    JobSpec,
    LeasedJob,
    Outcome,
    ResultKey,
    Success,
    Unstarted,
)
from evidence.schema import artifacts, items, jobs, results, under_keys

QUEUED, LEASED, DONE, FAILED, DEAD = "queued", "leased", "done", "failed", "dead"
#: Workers a job may lose while it runs alone before it is given up (dead, `tool_crash`).
#: Apart from attempts and larger: a worker killed from outside or a lost node looks the same
#: as a file that crashes its worker. An estimate, not a measurement: if a cluster losing a
#: random worker every 30 s, with only one long stage left running, lost the job's worker on
#: a third of its runs, eight in a row would happen to about one job in 15,000 (`qarina bench
#: soak` measures it). A file that takes its worker down every time costs eight restarts.
MAX_WORKER_LOSSES = 8
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
    #: Jobs handed back to the queue unchanged: their batch never started (`Unstarted`).
    returned: int = 0


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
    return _enqueue_all(database, connection, [(sha256, list(specs), priority, max_attempts)])


def _enqueue_all(
    database: Database,
    connection: sa.Connection,
    wanted: Sequence[tuple[str, Sequence[JobSpec], int, int]],
) -> int:
    """Queue the jobs of many items, each (sha256, specs, priority, max_attempts), with one
    look at the results they require and one insert: a commit queues a batch's follow-ups
    at once. A spec whose required results are not all stored is passed over.
    """
    present = _ok_results(
        connection,
        {
            (sha256, key)
            for sha256, specs, _, _ in wanted
            for spec in specs
            for key in spec.requires
        },
    )
    now = utc_now()
    rows = [
        {
            "sha256": sha256,
            "stage": spec.stage,
            "stage_version": spec.stage_version,
            "config_hash": spec.config_hash,
            "state": QUEUED,
            "priority": priority,
            "max_attempts": max_attempts,
            "created_at": now,
            "updated_at": now,
        }
        for sha256, specs, priority, max_attempts in wanted
        for spec in specs
        if all((sha256, key) in present for key in spec.requires)
    ]
    if not rows:
        return 0
    return connection.execute(database.insert(jobs).on_conflict_do_nothing(), rows).rowcount


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


def results_exist(connection: sa.Connection, sha256: str, keys: Sequence[ResultKey]) -> bool:
    """Whether the item holds a successful result under each of these keys."""
    wanted = {(sha256, key) for key in keys}
    return _ok_results(connection, wanted) == wanted


def _ok_results(
    connection: sa.Connection, wanted: Collection[tuple[str, ResultKey]]
) -> set[tuple[str, ResultKey]]:
    """Which of these (sha256, key) pairs hold a successful result."""
    if not wanted:
        return set()
    rows = connection.execute(
        sa.select(
            results.c.sha256, results.c.stage, results.c.stage_version, results.c.config_hash
        ).where(
            results.c.sha256.in_({sha256 for sha256, _ in wanted}),
            under_keys(results, {key for _, key in wanted}),
            results.c.status == "ok",
        )
    )
    found = {(row.sha256, ResultKey(row.stage, row.stage_version, row.config_hash)) for row in rows}
    return found & set(wanted)


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
    """Return jobs whose lease ran out (a lost worker or driver) to the queue.

    This and the other queue writes (lease, renew, release) ride out a locked or lost store
    like a commit (`write_retrying`): each is safe to run again after a COMMIT whose answer was
    lost, and a long-running service must not stop for a database restart. The count may then
    miss what the lost COMMIT released; it only feeds logs.
    """
    return _release(database, jobs.c.lease_expires_at < utc_now(), "release of expired leases")


def release_owners(database: Database, owners: Sequence[str]) -> int:
    """Return the leases of owners known to be dead (a killed driver on this host) at once."""
    if not owners:
        return 0
    return _release(database, jobs.c.lease_owner.in_(owners), "release of leases")


def _release(database: Database, which: sa.ColumnElement[bool], what: str) -> int:
    def release(connection: sa.Connection) -> int:
        return connection.execute(
            sa.update(jobs)
            .where(jobs.c.state == LEASED, which)
            .values(state=QUEUED, lease_owner=None, lease_expires_at=None, updated_at=utc_now())
        ).rowcount

    return write_retrying(database, release, what)


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
    return lease_each(database, owner, [(keys, limit)], ttl)[0]


def lease_each(
    database: Database,
    owner: str,
    wanted: Sequence[tuple[Collection[ResultKey], int]],
    ttl: dt.timedelta,
) -> list[list[LeasedJob]]:
    """Lease for several stages in one transaction: for each (keys, limit), the jobs `lease`
    would take, in the same order. A driver fills the free slots of all its stages at once,
    since each write transaction costs SQLite the write lock and an fsync; an empty poll
    takes neither, as a read-only look comes first.
    """
    asked = [(keys, limit) for keys, limit in wanted if limit > 0 and keys]
    if not asked or not any_queued(database, {key for keys, _ in asked for key in keys}):
        return [[] for _ in wanted]

    def take(connection: sa.Connection) -> list[LeasedJob]:
        # A retry after a COMMIT whose answer was lost leases other jobs; those it had
        # leased stay ours until their lease runs out and they return to the queue.
        now = utc_now()
        ids: list[int] = []
        for keys, limit in asked:
            candidates = (
                sa.select(jobs.c.id)
                .where(jobs.c.state == QUEUED, under_keys(jobs, keys))
                .order_by(jobs.c.priority.desc(), jobs.c.id)
                .limit(limit)
            )
            if not database.is_sqlite:
                candidates = candidates.with_for_update(skip_locked=True)
            ids += connection.execute(candidates).scalars()
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
                jobs.c.worker_losses,
                jobs.c.error_reason.label("last_error"),
            )
            .join(items, items.c.sha256 == jobs.c.sha256)
            .where(jobs.c.id.in_(ids))
            .order_by(jobs.c.priority.desc(), jobs.c.id)
        ).all()
        return [LeasedJob(**row._mapping) for row in rows]

    leased = write_retrying(database, take, "lease")
    return [
        [job for job in leased if job.key in keys] if limit > 0 else [] for keys, limit in wanted
    ]


def renew(database: Database, owner: str, job_ids: Sequence[int], ttl: dt.timedelta) -> None:
    """Extend the leases a live driver still holds, so long jobs are not taken from it."""
    if not job_ids:
        return
    write_retrying(
        database,
        lambda connection: connection.execute(
            sa.update(jobs)
            .where(jobs.c.id.in_(job_ids), jobs.c.lease_owner == owner, jobs.c.state == LEASED)
            .values(lease_expires_at=utc_now() + ttl)
        ),
        "lease renewal",
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

    One transaction for the whole batch keeps SQLite's fsyncs per batch rather than per item,
    and each kind of write is one statement for the batch (the successes' fencing update, the
    results, artifacts, item kinds, follow-up jobs, custody), not one per outcome: a backlog
    of tiny items is bound by this fixed cost per outcome (issue 13 measured 3.7 ms of
    SQLAlchemy work per commit). A failure, rarer, ends its lease in a statement of its own,
    as its reason is its own. Every outcome is still all-or-nothing with the others, so no
    partial result exists. An outcome whose lease token no longer matches (the job expired
    and went to someone else) is refused: its job has a newer owner. Custody events follow
    the order of `outcomes`.

    A database locked past its busy timeout or a connection lost does not lose the batch: the
    commit is tried again after a pause (`write_retrying`). The fencing check makes that safe
    where a lost connection hides whether the COMMIT landed: if it had, the retry finds the
    leases ended and counts the outcomes stale, storing nothing twice.

    An `Unstarted` outcome hands its job back to the queue as it was: no attempt, no event.
    """
    # The same outcome delivered twice (a retried call) commits once: the copy is stale.
    first: dict[tuple[int, int], tuple[LeasedJob, Outcome]] = {}
    for job, outcome in outcomes:
        first.setdefault((job.id, job.token), (job, outcome))
    batch = list(first.values())
    held, returned = write_retrying(
        database, lambda connection: _commit_batch(database, connection, batch, actor), "commit"
    )
    return CommitReport(held, len(outcomes) - held - returned, returned)


def _commit_batch(
    database: Database,
    connection: sa.Connection,
    batch: Sequence[tuple[LeasedJob, Outcome]],
    actor: str,
) -> tuple[int, int]:
    """`commit`'s writes, in the caller's transaction; returns how many leases still held
    were ended, and how many were handed back unstarted."""
    now = utc_now()
    # Nothing happened to an unstarted job's item: back to the queue as it was, no event.
    returned = _finish(
        connection,
        [job for job, outcome in batch if isinstance(outcome, Unstarted)],
        now,
        state=QUEUED,
    )
    successes = [(job, outcome) for job, outcome in batch if isinstance(outcome, Success)]
    priorities = _finish(
        connection,
        [job for job, _ in successes],
        now,
        state=DONE,
        finished_at=now,
        error_reason=None,
        error_detail=None,
    )
    failed = {
        (job.id, job.token): state
        for job, outcome in batch
        if isinstance(outcome, Failure)
        and (state := _finish_failure(connection, job, outcome, now)) is not None
    }
    held = set(priorities) | set(failed)
    kept = [(job, outcome) for job, outcome in successes if (job.id, job.token) in priorities]
    stored = _insert_results(database, connection, kept, now)
    _set_kinds(
        connection,
        [
            (job.sha256, outcome.item_kind)
            for job, outcome in batch
            if (job.id, job.token) in held and not isinstance(outcome, Unstarted)
        ],
    )
    _enqueue_all(
        database,
        connection,
        [
            (job.sha256, outcome.follow_ups, priorities[job.id, job.token], job.max_attempts)
            for job, outcome in kept
        ],
    )
    entries: list[CustodyEntry] = []
    for job, outcome in batch:
        lease = (job.id, job.token)
        if lease not in held:
            continue
        if isinstance(outcome, Success):
            entries += _success_entries(
                database, connection, job, outcome, stored[job.id], priorities[lease], actor
            )
        elif isinstance(outcome, Failure):
            entries.append(_failure_entry(job, outcome, failed[lease], actor))
    custody.append(connection, entries)
    return len(held), len(returned)


def _finish(
    connection: sa.Connection, leased: Sequence[LeasedJob], now: dt.datetime, **values: Any
) -> dict[tuple[int, int], int]:
    """End these leases, but only those still held under their token (the fencing check).

    Returns, by (job id, token), each ended job's priority as it is now (a lease that had
    moved on is absent): a request re-prioritised while the job ran has changed it, and its
    follow-ups must take the new one.
    """
    if not leased:
        return {}
    rows = connection.execute(
        sa.update(jobs)
        .where(
            # The id list finds the rows by primary key; the pairs are the fencing check.
            jobs.c.id.in_([job.id for job in leased]),
            sa.tuple_(jobs.c.id, jobs.c.lease_token).in_([(job.id, job.token) for job in leased]),
            jobs.c.state == LEASED,
        )
        .values(lease_owner=None, lease_expires_at=None, updated_at=now, **values)
        .returning(jobs.c.id, jobs.c.lease_token, jobs.c.priority)
    )
    return {(row.id, row.lease_token): row.priority for row in rows}


def _finish_failure(
    connection: sa.Connection, job: LeasedJob, outcome: Failure, now: dt.datetime
) -> str | None:
    """End a failed job's lease: queued again while a retry may pass and attempts are left,
    else final. Returns the state it ended in, None when the lease had moved on."""
    attempts = job.attempts + (outcome.counts_against == "attempts")
    losses = job.worker_losses + (outcome.counts_against == "worker_losses")
    if not outcome.retryable:
        state = FAILED
    elif attempts < job.max_attempts and losses < MAX_WORKER_LOSSES:
        state = QUEUED
    else:
        state = DEAD
    ended = _finish(
        connection,
        [job],
        now,
        state=state,
        attempts=attempts,
        worker_losses=losses,
        error_reason=outcome.reason,
        error_detail=outcome.detail,
        finished_at=None if state == QUEUED else now,
    )
    return state if ended else None


@dataclass(frozen=True)
class _Stored:
    """A success's result as the commit wrote it: its row id (None when the same key was
    stored before, so nothing new was) and the hash of its data."""

    result_id: int | None
    data_sha256: str


def _insert_results(
    database: Database,
    connection: sa.Connection,
    kept: Sequence[tuple[LeasedJob, Success]],
    now: dt.datetime,
) -> dict[int, _Stored]:
    """Insert the results of successes whose lease held, and their artifacts, by job id.

    A result whose key is stored already inserts nothing (the idempotency key), so the rows
    that come back are matched to their jobs by key, not by position.
    """
    digests = {
        job.id: hashlib.sha256(canonical_json(dict(outcome.data)).encode()).hexdigest()
        for job, outcome in kept
    }
    ids: dict[tuple[str, ResultKey], int] = {}
    if kept:
        rows = connection.execute(
            database.insert(results)
            .on_conflict_do_nothing()
            .returning(
                results.c.id,
                results.c.sha256,
                results.c.stage,
                results.c.stage_version,
                results.c.config_hash,
            ),
            [
                {
                    "sha256": job.sha256,
                    "stage": job.stage,
                    "stage_version": job.stage_version,
                    "config_hash": job.config_hash,
                    "status": "skipped" if outcome.skip_reason else "ok",
                    "skip_reason": outcome.skip_reason,
                    "data": dict(outcome.data),
                    "data_sha256": digests[job.id],
                    "provenance": dict(outcome.provenance),
                    "created_at": now,
                }
                for job, outcome in kept
            ],
        )
        ids = {
            (row.sha256, ResultKey(row.stage, row.stage_version, row.config_hash)): row.id
            for row in rows
        }
    stored = {job.id: _Stored(ids.get((job.sha256, job.key)), digests[job.id]) for job, _ in kept}
    # One row per file and role of a result: two keyframes of a still shot can be the same
    # JPEG, byte for byte. The result's data names each of them (time, artifact hash), so
    # the first's row stands for both; a second row would break the unique key and with it
    # the whole commit.
    derived: list[dict[str, Any]] = []
    filed: set[tuple[int, str, str]] = set()
    for job, outcome in kept:
        result_id = stored[job.id].result_id
        if result_id is None:
            continue
        for artifact in outcome.artifacts:
            if (result_id, artifact.sha256, artifact.role) in filed:
                continue
            filed.add((result_id, artifact.sha256, artifact.role))
            derived.append(
                {
                    "sha256": artifact.sha256,
                    "parent_sha256": job.sha256,
                    "result_id": result_id,
                    "stage": job.stage,
                    "role": artifact.role,
                    "media_type": artifact.media_type,
                    "size_bytes": artifact.size_bytes,
                    "meta": dict(artifact.meta),
                }
            )
    if derived:
        connection.execute(sa.insert(artifacts), derived)
    return stored


def _set_kinds(connection: sa.Connection, decided: Sequence[tuple[str, str | None]]) -> None:
    """Record the kinds outcomes decided, one statement per kind; where one batch decides an
    item twice, the later outcome wins, as it would committed one at a time."""
    latest = {sha256: kind for sha256, kind in decided if kind is not None}
    by_kind: dict[str, list[str]] = {}
    for sha256, kind in latest.items():
        by_kind.setdefault(kind, []).append(sha256)
    for kind, shas in by_kind.items():
        connection.execute(sa.update(items).where(items.c.sha256.in_(shas)).values(kind=kind))


def _success_entries(
    database: Database,
    connection: sa.Connection,
    job: LeasedJob,
    outcome: Success,
    stored: _Stored,
    priority: int,
    actor: str,
) -> list[CustodyEntry]:
    """A success's custody event, after what registering an archive's members records."""
    entries: list[CustodyEntry] = []
    if stored.result_id is not None and outcome.members:
        entries, found = archives.register_members(
            database, connection, job, outcome.members, stored.result_id, actor
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
            "result_sha256": stored.data_sha256,
            "already_stored": stored.result_id is None,
            "skip_reason": outcome.skip_reason,
            "artifacts": sorted(artifact.sha256 for artifact in outcome.artifacts),
            **({"members": len(outcome.members)} if outcome.members else {}),
            "provenance": dict(outcome.provenance),
        },
    )
    return [result_entry, *entries]


def _failure_entry(job: LeasedJob, outcome: Failure, state: str, actor: str) -> CustodyEntry:
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
            "attempt": job.attempts + 1,
            "state": state,
            "provenance": dict(outcome.provenance),
            **(
                {"counts_against": outcome.counts_against}
                if outcome.counts_against != "attempts"
                else {}
            ),
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
