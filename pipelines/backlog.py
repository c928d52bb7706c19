"""Where a request for assistance stands, and when it will be done: what operations staff tell
a prosecutor, read from the store for `qarina status --request` and the HTTP API alike.

The figures are read from the job table (the source of truth on every node) in a handful of
grouped queries, so a request of a million jobs costs no more Python than one of ten.

How the ETA is reached, stage by stage (stages run side by side in pools of their own):

* **The request's work**: its open jobs (queued and leased) under the plan's current keys,
  and the jobs still to come: those not queued yet because a stage before them has not
  finished. Each open job upstream of a stage leads to one of that stage's jobs when its
  item's kind needs it. The kind is read from the job's key where the key is for one kind
  (keyframes run on videos only; hashes have a key for photos and one for videos), so a
  probed item counts exactly. An item not probed yet counts in the share of the kind mix
  that needs the stage: the request's own probed items once it has `OWN_MIX_MIN` of them,
  the whole store's before that. A skip (a video without keyframes gets no hashes job) or a
  failure still to happen upstream makes the estimate high, never low.
* **Work ahead of it**: leasing takes the highest priority first, then the oldest, so other
  work runs first when it is leased already, queued before the request's last job of the
  stage in that order, or open upstream at a higher priority than the request's work here
  (it will queue this stage's jobs ahead of the request's; in the kind mix's share). Work
  that arrives later with a higher priority is not foreseen.
* **Throughput**: jobs of the stage ended per second across the whole store over the recent
  window (`Store.status`), whoever they belonged to: it is the stage's capacity as it ran.
  A stage starved by its upstream shows less than it could do; a stage nothing of which
  ended in the window has no throughput, and then there is no ETA, only a lower bound.
* **ETA**: the largest (work + work ahead) / throughput over the stages; the stage that gives
  it is the bottleneck. A deadline holds when the projected finish leaves a margin of
  `MARGIN_SHARE` of the time left; it is at risk when it leaves less (or is after it),
  missed once it has passed with work left or the work ended after it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

import sqlalchemy as sa

from evidence import requests
from evidence.controls import PauseState, pause_state
from evidence.db import as_utc, utc_now
from evidence.jobs import DEAD, FAILED, LEASED, OPEN_STATES, QUEUED
from evidence.records import ResultKey
from evidence.schema import acquisitions, items, jobs, under_keys
from evidence.store import Store
from pipelines.plan import Plan
from workers.base import Kind

#: Throughput is averaged over this window, as in `qarina status`.
WINDOW_S = 300
#: Probed items of a request from which its own kind mix, rather than the store's, estimates
#: what its unprobed items will need: below it a handful of items would swing the shares.
OWN_MIX_MIN = 100
#: The share of the time left to a deadline that a projection must leave to spare for the
#: deadline to hold: throughput is measured over minutes while a backlog's mix changes over
#: hours, so a projection that uses more than four fifths of the time is one slow hour from
#: missing.
MARGIN_SHARE = 0.2

_KINDS = {kind.value: kind for kind in Kind}


@dataclass(frozen=True)
class StageProgress:
    """One stage of the request: its jobs by state, what is still to come, what runs first."""

    stage: str
    #: The request's jobs under the plan's current keys, by state.
    counts: dict[str, int]
    #: Estimated jobs not queued yet (an earlier stage has not finished); None while no item
    #: in the store has a kind to estimate from.
    to_come: float | None
    #: Estimated jobs of other work that run before the request's last job of this stage.
    ahead: float
    #: Jobs ended per second over the window, across the store; None when none ended.
    throughput_per_s: float | None
    #: Seconds for this stage's work and the work ahead at that throughput.
    time_s: float | None

    @property
    def open(self) -> int:
        return sum(self.counts.get(state, 0) for state in OPEN_STATES)

    @property
    def left(self) -> float | None:
        """The request's own jobs still to run here (open and to come)."""
        return None if self.to_come is None else self.open + self.to_come


@dataclass(frozen=True)
class ItemProgress:
    total: int
    #: Items with a job still open (or a later stage's job still to come).
    in_progress: int
    #: Items whose every job ended, at least one of them failed or dead.
    failed: int
    #: Items whose every job ended without a failure.
    finished: int


@dataclass(frozen=True)
class Eta:
    """When the work ends at the measured throughput, and what that rests on."""

    #: None when a stage with work left has no throughput, or its work no estimate.
    seconds: float | None
    #: At least this long, from the stages that could be estimated.
    at_least_s: float
    finish_at: dt.datetime | None
    #: The stage whose work takes longest.
    bottleneck: str | None
    window_s: int
    #: The throughput (jobs/s) of each stage with work left, as used.
    throughput_per_s: dict[str, float]
    #: Stages with work left and no throughput: nothing of them ended in the window.
    unmeasured: tuple[str, ...]
    #: Stages whose work cannot be told yet: no item in the store has a kind to estimate
    #: what the unprobed ones will need.
    unestimated: tuple[str, ...] = ()


class Deadline(StrEnum):
    """Whether a request's deadline holds (see the module docstring)."""

    HOLDS = "holds"
    AT_RISK = "at_risk"
    MISSED = "missed"
    NO_DEADLINE = "no_deadline"
    #: A stage with work left has no measured throughput yet, or nothing has arrived.
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Verdict:
    state: Deadline
    #: Seconds between the projected (or actual) finish and the deadline; negative: late.
    slack_s: float | None = None


@dataclass(frozen=True)
class BacklogProgress:
    """Progress of one request (or, with `request` None, of everything queued)."""

    request: str | None
    priority: int | None
    deadline: dt.datetime | None
    measured_at: dt.datetime
    #: Leasing paused: nothing moves until `qarina resume`, and the ETA counts from then.
    pause: PauseState
    items: ItemProgress
    stages: list[StageProgress]
    eta: Eta
    verdict: Verdict
    #: The kinds of probed items the estimate of unprobed ones used, and whose they were
    #: ("request" or "store").
    kind_mix: dict[str, int] = field(default_factory=dict)
    kind_mix_source: str = "store"

    def to_json(self) -> dict[str, Any]:
        """Plain JSON data: estimates rounded to whole jobs and seconds, as precise as they are."""
        return {
            "request": self.request,
            "priority": self.priority,
            "deadline": _iso(self.deadline),
            "measured_at": _iso(self.measured_at),
            "paused": self.pause.paused,
            "pause": {
                "reason": self.pause.reason,
                "since": _iso(self.pause.since),
                "by": self.pause.by,
            }
            if self.pause.paused
            else None,
            "items": {
                "total": self.items.total,
                "in_progress": self.items.in_progress,
                "finished": self.items.finished,
                "failed": self.items.failed,
            },
            "stages": {
                stage.stage: {
                    "counts": stage.counts,
                    "to_come": _whole(stage.to_come),
                    "ahead": _whole(stage.ahead),
                    "throughput_per_s": _rate(stage.throughput_per_s),
                    "time_s": _whole(stage.time_s),
                }
                for stage in self.stages
            },
            "eta": {
                "seconds": _whole(self.eta.seconds),
                "at_least_s": _whole(self.eta.at_least_s),
                "finish_at": _iso(self.eta.finish_at),
                "bottleneck": self.eta.bottleneck,
                "window_s": self.eta.window_s,
                "throughput_per_s": {
                    stage: _rate(rate) for stage, rate in self.eta.throughput_per_s.items()
                },
                "unmeasured": list(self.eta.unmeasured),
                "unestimated": list(self.eta.unestimated),
            },
            "deadline_verdict": self.verdict.state.value,
            "slack_s": _whole(self.verdict.slack_s),
            "kind_mix": self.kind_mix,
            "kind_mix_source": self.kind_mix_source,
        }


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _whole(value: float | None) -> int | None:
    return None if value is None else round(value)


def _rate(value: float | None) -> float | None:
    """Three significant figures: more would claim a precision a window of minutes lacks."""
    return None if value is None else float(f"{value:.3g}")


def estimate_eta(
    work: Mapping[str, float | None],
    throughput: Mapping[str, float],
    window_s: int,
    now: dt.datetime,
) -> Eta:
    """The ETA of `work` (jobs per stage, None: not estimable) at `throughput` (jobs/s).

    Stages run side by side, so the work ends when its slowest stage does; the few seconds
    the last item then takes through later stages are left out.
    """
    times: dict[str, float] = {}
    used: dict[str, float] = {}
    unmeasured: list[str] = []
    unestimated: list[str] = []
    for stage, jobs_left in work.items():
        rate = throughput.get(stage)
        if jobs_left is None:
            unestimated.append(stage)
            continue
        if jobs_left <= 0:
            continue
        if not rate:
            unmeasured.append(stage)
            continue
        used[stage] = rate
        times[stage] = jobs_left / rate
    at_least = max(times.values(), default=0.0)
    bottleneck = max(times, key=lambda stage: times[stage]) if times else None
    seconds = None if unmeasured or unestimated else at_least
    return Eta(
        seconds=seconds,
        at_least_s=at_least,
        finish_at=None if seconds is None else now + dt.timedelta(seconds=seconds),
        bottleneck=bottleneck,
        window_s=window_s,
        throughput_per_s=used,
        unmeasured=tuple(unmeasured),
        unestimated=tuple(unestimated),
    )


def deadline_verdict(
    deadline: dt.datetime | None,
    now: dt.datetime,
    eta: Eta,
    work_left: bool,
    last_finished: dt.datetime | None = None,
) -> Verdict:
    """Whether the deadline holds: see the module docstring for the margin.

    `last_finished` is when the request's last job ended, for a request with no work left.
    """
    if deadline is None:
        return Verdict(Deadline.NO_DEADLINE)
    if not work_left:
        done = None if last_finished is None else (deadline - last_finished).total_seconds()
        return Verdict(Deadline.MISSED if done is not None and done < 0 else Deadline.HOLDS, done)
    time_left = (deadline - now).total_seconds()
    needed = eta.at_least_s if eta.seconds is None else eta.seconds
    slack = time_left - needed
    if time_left <= 0:
        return Verdict(Deadline.MISSED, slack)
    if slack < MARGIN_SHARE * time_left:
        # Even what could be measured runs past the margin.
        return Verdict(Deadline.AT_RISK, slack if eta.seconds is not None else None)
    if eta.seconds is None:
        return Verdict(Deadline.UNKNOWN)
    return Verdict(Deadline.HOLDS, slack)


@dataclass(frozen=True)
class _Jobs:
    """Jobs under one of the plan's keys in one state at one priority."""

    state: str
    stage: str
    #: The kinds of item the key is for: a stage that reads different results for different
    #: kinds has a key per kind (hashes of photos and of videos' keyframes).
    kinds: frozenset[Kind]
    priority: int
    count: int
    max_id: int


class _Plan:
    """What the estimate needs of the plan: each current key's stage and kinds, and which
    stages each kind needs before a stage."""

    def __init__(self, plan: Plan) -> None:
        self.stages = list(plan.stages)
        kinds_of: dict[ResultKey, set[Kind]] = {}
        for name, stage in plan.stages.items():
            for kind in stage.kinds:
                kinds_of.setdefault(plan.key(name, kind), set()).add(kind)
        self.key_of = {key: (key.stage, frozenset(kinds)) for key, kinds in kinds_of.items()}
        self.keys = {name: [key for key in kinds_of if key.stage == name] for name in self.stages}
        #: Per stage and kind it accepts, every stage an item of that kind needs before it.
        self.before = {
            name: {kind: _upstream(plan, name, kind) for kind in stage.kinds}
            for name, stage in plan.stages.items()
        }

    def stages_before(self, stage: str) -> frozenset[str]:
        return frozenset().union(*self.before[stage].values())

    def share(
        self, before: str, kinds: frozenset[Kind], stage: str, mix: Mapping[Kind, int]
    ) -> float | None:
        """The jobs of `stage` that one job of `before` on an item of one of `kinds` leads to:
        0 or 1 when every such kind says the same, else the share of the kind mix that needs
        it (None without a mix to tell)."""
        leads = {kind: before in self.before[stage].get(kind, ()) for kind in kinds}
        if len(set(leads.values())) == 1:
            return float(next(iter(leads.values())))
        weights = {kind: mix.get(kind, 0) for kind in kinds}
        total = sum(weights.values())
        if not total:
            return None
        return sum(n for kind, n in weights.items() if leads[kind]) / total


def _upstream(plan: Plan, stage: str, kind: Kind) -> frozenset[str]:
    """Every stage whose result an item of `kind` needs before `stage`, directly or not."""
    found: set[str] = set()
    waiting = list(plan.stage(stage).requires_for(kind))
    while waiting:
        name = waiting.pop()
        if name not in found:
            found.add(name)
            waiting.extend(plan.stage(name).requires_for(kind))
    return frozenset(found)


def backlog_progress(
    store: Store, plan: Plan, request_ref: str | None = None, window_s: int = WINDOW_S
) -> BacklogProgress:
    """The progress, ETA and deadline verdict of request `request_ref` (None: of everything).

    A request's figures are read through its acquisitions, so they cost what its own jobs
    cost; the whole backlog's come from the lease index, except the item counts, which look
    at every item once.

    Raises:
        requests.UnknownRequest: no request has this reference.
    """
    request = None
    if request_ref is not None:
        request = requests.get(store.database, request_ref)
        if request is None:
            raise requests.UnknownRequest(request_ref)
    deadline = None if request is None else request.deadline
    now = utc_now()
    shape = _Plan(plan)
    everything = store.status(None, window_s, plan.current_keys())
    rates = everything.throughput_by_stage
    with store.database.reader.connect() as connection:
        kinds = _kinds(connection, request_ref)
        own_mix = _known(kinds)
        if request_ref is None:
            own = _histogram(connection, shape, None, OPEN_STATES)
            counts = {stage.stage: stage.counts for stage in everything.stages}
            others: list[_Jobs] = []
        else:
            own = _histogram(connection, shape, request_ref, None)
            counts = _counts(own)
            own = [group for group in own if group.state in OPEN_STATES]
            others = _others(_histogram(connection, shape, None, OPEN_STATES), own)
        own_mix_used = request_ref is not None and sum(own_mix.values()) >= OWN_MIX_MIN
        mix = own_mix if own_mix_used or request_ref is None else _known(_kinds(connection, None))
        stages: list[StageProgress] = []
        for stage in shape.stages:
            to_come = _to_come(shape, own, stage, mix)
            ahead = _ahead(connection, shape, stage, own, others, to_come, mix)
            progress = StageProgress(
                stage, counts.get(stage, {}), to_come, ahead, rates.get(stage), None
            )
            stages.append(replace(progress, time_s=_time(_work(progress), rates.get(stage))))
        eta = estimate_eta({stage.stage: _work(stage) for stage in stages}, rates, window_s, now)
        work_left = any(stage.left is None or stage.left > 0 for stage in stages)
        items_now = _items(connection, shape, request_ref, sum(kinds.values()))
        last_finished = None
        if deadline is not None and not work_left:
            last_finished = _last_finished(connection, shape, request_ref)
    return BacklogProgress(
        request=request_ref,
        priority=None if request is None else request.priority,
        deadline=deadline,
        measured_at=now,
        pause=pause_state(store.database),
        items=items_now,
        stages=stages,
        eta=eta,
        verdict=Verdict(Deadline.UNKNOWN)
        if deadline is not None and not items_now.total
        else deadline_verdict(deadline, now, eta, work_left, last_finished),
        kind_mix={kind.value: n for kind, n in sorted(mix.items())},
        kind_mix_source="request" if own_mix_used else "store",
    )


def _work(stage: StageProgress) -> float | None:
    """Jobs the stage must run before the request is done with it: its own, and the work
    ahead of them (none when the request has nothing left there)."""
    left = stage.left
    if left is None or left <= 0:
        return left
    return left + stage.ahead


def _time(work: float | None, rate: float | None) -> float | None:
    if work is None:
        return None
    if work <= 0:
        return 0.0
    return work / rate if rate else None


def _known(kinds: Mapping[Kind | None, int]) -> dict[Kind, int]:
    return {kind: n for kind, n in kinds.items() if kind is not None}


def _members(request_ref: str) -> sa.Subquery:
    """The request's items, once each: joined to first, so that its figures are read
    through the request's acquisitions rather than by scanning the whole job table."""
    return (
        sa.select(acquisitions.c.sha256)
        .where(acquisitions.c.request_ref == request_ref)
        .distinct()
        .subquery("members")
    )


def _jobs_of(request_ref: str | None) -> sa.FromClause:
    if request_ref is None:
        return jobs
    members = _members(request_ref)
    return members.join(jobs, jobs.c.sha256 == members.c.sha256)


def _histogram(
    connection: sa.Connection,
    shape: _Plan,
    request_ref: str | None,
    states: Iterable[str] | None,
) -> list[_Jobs]:
    """Jobs under the plan's keys grouped by state, key and priority (of the request's items,
    or of all); only in `states` when given. Grouped by key and filtered here, as `qarina
    status` does: the groups of all jobs are read from the lease index alone."""
    grouped = [jobs.c.state, jobs.c.stage, jobs.c.stage_version, jobs.c.config_hash]
    grouped.append(jobs.c.priority)
    query = sa.select(*grouped, sa.func.count(), sa.func.max(jobs.c.id)).select_from(
        _jobs_of(request_ref)
    )
    if states is not None:
        query = query.where(jobs.c.state.in_(list(states)))
    found = []
    for state, *key, priority, count, max_id in connection.execute(query.group_by(*grouped)):
        known = shape.key_of.get(ResultKey(*key))
        if known is not None:
            found.append(_Jobs(state, *known, int(priority), int(count), int(max_id)))
    return found


def _counts(groups: Iterable[_Jobs]) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for group in groups:
        states = counts.setdefault(group.stage, {})
        states[group.state] = states.get(group.state, 0) + group.count
    return counts


def _others(every: Iterable[_Jobs], own: Iterable[_Jobs]) -> list[_Jobs]:
    """The open jobs that are not the request's, per state, key kinds and priority."""
    counts: dict[tuple[str, str, frozenset[Kind], int], int] = {}
    for group, sign in [*((group, 1) for group in every), *((group, -1) for group in own)]:
        key = (group.state, group.stage, group.kinds, group.priority)
        counts[key] = counts.get(key, 0) + sign * group.count
    return [_Jobs(*key, count, 0) for key, count in counts.items() if count > 0]


def _to_come(
    shape: _Plan, own: Iterable[_Jobs], stage: str, mix: Mapping[Kind, int]
) -> float | None:
    """The request's jobs of `stage` that its open jobs upstream will queue (module docstring)."""
    before = shape.stages_before(stage)
    total = 0.0
    for group in own:
        if group.stage in before:
            share = shape.share(group.stage, group.kinds, stage, mix)
            if share is None:
                return None
            total += group.count * share
    return total


def _ahead(
    connection: sa.Connection,
    shape: _Plan,
    stage: str,
    own: list[_Jobs],
    others: list[_Jobs],
    to_come: float | None,
    mix: Mapping[Kind, int],
) -> float:
    """Jobs of other work that run before the request's last job of `stage` (module
    docstring): leased, queued before it, or open upstream at a higher priority."""
    before = shape.stages_before(stage)
    contributing = [
        group
        for group in own
        if group.stage == stage
        or (group.stage in before and shape.share(group.stage, group.kinds, stage, {}) != 0)
    ]
    if not contributing or not others:
        return 0.0
    here = [group for group in others if group.stage == stage]
    ahead = float(sum(group.count for group in here if group.state == LEASED))
    queued = [group for group in here if group.state == QUEUED]
    lowest = min(group.priority for group in contributing)
    own_queued = [group for group in own if group.stage == stage and group.state == QUEUED]
    if to_come is None or to_come > 0:
        # The request's last job here is still to be queued, after every job queued now.
        ahead += sum(group.count for group in queued if group.priority >= lowest)
    elif own_queued:
        last = min(group.priority for group in own_queued)
        last_id = max(group.max_id for group in own_queued if group.priority == last)
        ahead += sum(group.count for group in queued if group.priority > last)
        # Jobs at its priority queued before it, less the request's own.
        ahead += _queued_before(connection, shape.keys[stage], last, last_id) - (
            sum(group.count for group in own_queued if group.priority == last) - 1
        )
    for group in others:
        if group.stage in before and group.priority > lowest:
            ahead += group.count * (shape.share(group.stage, group.kinds, stage, mix) or 0)
    return ahead


def _queued_before(
    connection: sa.Connection, keys: Iterable[ResultKey], priority: int, job_id: int
) -> int:
    """Queued jobs under `keys` at `priority` that leasing takes before job `job_id`."""
    return int(
        connection.execute(
            sa.select(sa.func.count()).where(
                jobs.c.state == QUEUED,
                under_keys(jobs, keys),
                jobs.c.priority == priority,
                jobs.c.id < job_id,
            )
        ).scalar_one()
    )


def _kinds(connection: sa.Connection, request_ref: str | None) -> dict[Kind | None, int]:
    """Items per kind (None: not probed yet)."""
    source: sa.FromClause = items
    if request_ref is not None:
        members = _members(request_ref)
        source = members.join(items, items.c.sha256 == members.c.sha256)
    found: dict[Kind | None, int] = {}
    for kind, count in connection.execute(
        sa.select(items.c.kind, sa.func.count()).select_from(source).group_by(items.c.kind)
    ):
        known = None if kind is None else _KINDS.get(kind)
        found[known] = found.get(known, 0) + int(count)
    return found


def _items(
    connection: sa.Connection, shape: _Plan, request_ref: str | None, total: int
) -> ItemProgress:
    """Items with work open, items ended with a failure, the rest finished.

    An item with nothing open has nothing to come either: follow-up jobs are queued in the
    transaction that ends the job before them.
    """
    planned = list(shape.key_of)
    source = items if request_ref is None else _members(request_ref)
    still_open = jobs.alias("still_open")
    open_of = sa.exists().where(
        still_open.c.state.in_(OPEN_STATES), under_keys(still_open, planned)
    )
    in_progress = connection.execute(
        sa.select(sa.func.count())
        .select_from(source)
        .where(open_of.where(still_open.c.sha256 == source.c.sha256))
    ).scalar_one()
    failed = connection.execute(
        sa.select(sa.func.count(sa.distinct(jobs.c.sha256)))
        .select_from(_jobs_of(request_ref))
        .where(
            jobs.c.state.in_((FAILED, DEAD)),
            under_keys(jobs, planned),
            ~open_of.where(still_open.c.sha256 == jobs.c.sha256),
        )
    ).scalar_one()
    return ItemProgress(
        total=total,
        in_progress=int(in_progress),
        failed=int(failed),
        finished=max(0, total - int(in_progress) - int(failed)),
    )


def _last_finished(
    connection: sa.Connection, shape: _Plan, request_ref: str | None
) -> dt.datetime | None:
    """When the last of the request's jobs ended."""
    found = connection.execute(
        sa.select(sa.func.max(jobs.c.finished_at))
        .select_from(_jobs_of(request_ref))
        .where(under_keys(jobs, list(shape.key_of)))
    ).scalar()
    return None if found is None else as_utc(found)
