"""What `qarina status` and the metrics endpoint report: the queue, throughput, failures, and
how much of the store the current plan has not caught up with.

Counts come from a few grouped queries over the job and result tables, so a status call
costs the same whether one driver runs or twenty, and is right after any crash.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection
from dataclasses import dataclass, field

import sqlalchemy as sa

from evidence import jobs, reviews
from evidence.db import Database, as_utc, utc_now
from evidence.records import CurrentKeys, ResultKey
from evidence.schema import acquisitions, items
from evidence.schema import jobs as jobs_table

#: The failure reason of a bug in our own stage code, counted apart from the item's faults.
STAGE_ERROR = "stage_error"


@dataclass(frozen=True)
class StageCounts:
    stage: str
    counts: dict[str, int]


@dataclass(frozen=True)
class StatusReport:
    stages: list[StageCounts]
    items: int
    #: Jobs ended per second over the recent window; None before anything finished in it.
    throughput_per_s: float | None
    open_jobs: int
    eta_s: float | None
    window_s: int
    failures_by_reason: dict[str, int] = field(default_factory=dict)
    #: Jobs ended per second over the window, per stage (stages that ended none are absent).
    throughput_by_stage: dict[str, float] = field(default_factory=dict)
    #: Failed and dead jobs per (stage, reason).
    failures_by_stage: dict[tuple[str, str], int] = field(default_factory=dict)
    #: Per stage, items whose results (or jobs still to run) are all under keys the current
    #: plan no longer names (a new model, a new stage version): what `qarina reprocess`
    #: would queue.
    superseded_items: dict[str, int] = field(default_factory=dict)
    #: Per stage and state, jobs under keys the current plan does not name: queued ones
    #: there wait for a driver with another plan, or for `qarina reprocess`.
    other_key_jobs: dict[str, dict[str, int]] = field(default_factory=dict)
    #: Photos, videos and recordings that no one has reviewed, neither them nor any copy
    #: in their near-duplicate cluster (`evidence.reviews`).
    unreviewed_items: int = 0

    @property
    def stage_errors(self) -> dict[str, int]:
        """Jobs ended by a bug in stage code, per stage: counted apart so bugs show."""
        return {
            stage: count
            for (stage, reason), count in sorted(self.failures_by_stage.items())
            if reason == STAGE_ERROR
        }


#: The lease index's leading columns: state, then the key.
_BY_KEY = (
    jobs_table.c.state,
    jobs_table.c.stage,
    jobs_table.c.stage_version,
    jobs_table.c.config_hash,
)


def _in_request(column: sa.ColumnElement[str], request_ref: str | None) -> sa.ColumnElement[bool]:
    if request_ref is None:
        return sa.true()
    return column.in_(
        sa.select(acquisitions.c.sha256).where(acquisitions.c.request_ref == request_ref)
    )


def status_report(
    database: Database,
    request_ref: str | None = None,
    window_s: int = 300,
    current: CurrentKeys | None = None,
) -> StatusReport:
    """Counts per stage and state, recent throughput and an ETA, in a few indexed queries.

    With `current` (the keys a plan names), job counts, failures and the ETA cover those
    keys only, and items still holding only superseded results are counted per stage;
    without it, every job counts whatever its key.
    """
    scope = _in_request(jobs_table.c.sha256, request_ref)
    planned = None if current is None else {key for keys in current.values() for key in keys}
    since = utc_now() - dt.timedelta(seconds=window_s)
    with database.reader.connect() as connection:
        # Every planned stage is listed, even one the plan has queued nothing for yet.
        per_stage: dict[str, dict[str, int]] = {stage: {} for stage in current or {}}
        # Grouped by key and filtered here: a handful of groups read from the lease index
        # alone, where a filter on the key columns in SQL would read every row.
        other_keys: dict[str, dict[str, int]] = {}
        for state, stage, version, config_hash, count in connection.execute(
            sa.select(*_BY_KEY, sa.func.count()).where(scope).group_by(*_BY_KEY)
        ):
            known = planned is None or ResultKey(stage, version, config_hash) in planned
            counts = per_stage.setdefault(stage, {}) if known else other_keys.setdefault(stage, {})
            counts[state] = counts.get(state, 0) + count
        failures_by_stage: dict[tuple[str, str], int] = {}
        for stage, version, config_hash, reason, count in connection.execute(
            sa.select(*_BY_KEY[1:], jobs_table.c.error_reason, sa.func.count())
            .where(scope, jobs_table.c.state.in_((jobs.FAILED, jobs.DEAD)))
            .group_by(*_BY_KEY[1:], jobs_table.c.error_reason)
        ):
            if planned is None or ResultKey(stage, version, config_hash) in planned:
                failed = (str(stage), str(reason))
                failures_by_stage[failed] = failures_by_stage.get(failed, 0) + int(count)
        recent_by_stage = connection.execute(
            sa.select(jobs_table.c.stage, sa.func.count(), sa.func.min(jobs_table.c.finished_at))
            .where(scope, jobs_table.c.finished_at >= since)
            .group_by(jobs_table.c.stage)
        ).all()
        item_count = connection.execute(
            sa.select(sa.func.count())
            .select_from(items)
            .where(_in_request(items.c.sha256, request_ref))
        ).scalar_one()
        # Only stages with jobs under other keys (rare: after a new version or model) cost
        # a look at their items.
        superseded = {
            stage: behind
            for stage in sorted(other_keys)
            if (behind := _items_behind(connection, stage, (current or {}).get(stage), scope))
        }
    open_count = sum(
        counts.get(state, 0) for counts in per_stage.values() for state in jobs.OPEN_STATES
    )
    now = utc_now()
    by_stage = {
        str(stage): count / max((now - as_utc(oldest)).total_seconds(), 1.0)
        for stage, count, oldest in recent_by_stage
        if count and oldest is not None
    }
    throughput = None
    if recent_by_stage:
        finished_recently = sum(count for _, count, _ in recent_by_stage)
        oldest = min(as_utc(first) for _, _, first in recent_by_stage if first is not None)
        throughput = finished_recently / max((now - oldest).total_seconds(), 1.0)
    failures: dict[str, int] = {}
    for (_, reason), count in failures_by_stage.items():
        failures[reason] = failures.get(reason, 0) + count
    return StatusReport(
        stages=[StageCounts(stage, per_stage[stage]) for stage in sorted(per_stage)],
        items=int(item_count),
        throughput_per_s=throughput,
        open_jobs=open_count,
        eta_s=open_count / throughput if throughput else None,
        window_s=window_s,
        failures_by_reason=failures,
        throughput_by_stage=by_stage,
        failures_by_stage=failures_by_stage,
        superseded_items=superseded,
        other_key_jobs=other_keys,
        unreviewed_items=reviews.unreviewed_count(database, request_ref),
    )


def _items_behind(
    connection: sa.Connection,
    stage: str,
    current: Collection[ResultKey] | None,
    scope: sa.ColumnElement[bool],
) -> int:
    """Items whose work on `stage` is under other keys only (what reprocess would queue)."""
    return int(
        connection.execute(
            sa.select(sa.func.count(sa.distinct(jobs_table.c.sha256))).where(
                scope, *jobs.only_under_other_keys(stage, current or ())
            )
        ).scalar_one()
    )
