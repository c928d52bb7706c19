"""Requeueing failed work: a new tool, a fixed bug or a freed node makes old failures worth
another try, and an operator says so.

Failed (final) and dead (out of attempts) jobs under the plan's keys go back to the queue with
their attempts reset; the failure they end is kept in custody, with who asked and why, so the
history of an item still shows every attempt. A page of jobs per transaction keeps a requeue
of millions from holding one long lock.
"""

from __future__ import annotations

from collections.abc import Collection

import sqlalchemy as sa

from evidence import custody, requests
from evidence.custody import CustodyEntry
from evidence.db import Database, utc_now
from evidence.jobs import DEAD, FAILED, QUEUED
from evidence.records import ResultKey
from evidence.schema import acquisitions, jobs, under_keys

_PAGE = 500


def requeue_failed(
    database: Database,
    keys: Collection[ResultKey],
    actor: str,
    note: str,
    *,
    stage: str | None = None,
    request_ref: str | None = None,
    failure_reason: str | None = None,
) -> int:
    """Queue again the failed and dead jobs under `keys` (of one stage, of one request's
    items, ended with one failure reason, when given); how many were requeued. `note` is
    the operator's why, kept in each job's custody.

    Pages follow the job id, so a job requeued here that fails again while later pages
    are requeued (a driver runs meanwhile) is not taken twice, and the call ends however
    fast its jobs fail. A requeued job of a request's item takes the priority its requests
    ask for now, not the one it failed with.
    """
    conditions = [jobs.c.state.in_((FAILED, DEAD)), under_keys(jobs, keys)]
    if stage is not None:
        conditions.append(jobs.c.stage == stage)
    if failure_reason is not None:
        conditions.append(jobs.c.error_reason == failure_reason)
    if request_ref is not None:
        conditions.append(
            jobs.c.sha256.in_(
                sa.select(acquisitions.c.sha256).where(acquisitions.c.request_ref == request_ref)
            )
        )
    requeued = last_id = 0
    while True:
        with database.writer.begin() as connection:
            page = (
                sa.select(
                    jobs.c.id,
                    jobs.c.sha256,
                    jobs.c.stage,
                    jobs.c.stage_version,
                    jobs.c.config_hash,
                    jobs.c.state,
                    jobs.c.attempts,
                    jobs.c.error_reason,
                    jobs.c.error_detail,
                )
                .where(*conditions, jobs.c.id > last_id)
                .order_by(jobs.c.id)
                .limit(_PAGE)
            )
            if not database.is_sqlite:
                # Two requeues at once (an operator and the API) take a job once: the
                # second waits for the first's rows and finds them queued.
                page = page.with_for_update()
            rows = connection.execute(page).all()
            if not rows:
                return requeued
            connection.execute(
                sa.update(jobs)
                .where(jobs.c.id.in_([row.id for row in rows]))
                .values(
                    state=QUEUED,
                    attempts=0,
                    error_reason=None,
                    error_detail=None,
                    finished_at=None,
                    updated_at=utc_now(),
                )
            )
            requests.reapply_priority(connection, [row.sha256 for row in rows])
            custody.append(
                connection,
                [
                    CustodyEntry(
                        actor=actor,
                        action="requeue",
                        item_sha256=row.sha256,
                        stage=row.stage,
                        details={
                            "stage_version": row.stage_version,
                            "config_hash": row.config_hash,
                            "reason": note,
                            "only_failure_reason": failure_reason,
                            "ended": {
                                "state": row.state,
                                "attempts": row.attempts,
                                "reason": row.error_reason,
                                "detail": row.error_detail,
                            },
                        },
                    )
                    for row in rows
                ],
            )
            requeued += len(rows)
            last_id = rows[-1].id
