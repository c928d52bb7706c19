"""Steering the backlog: requests for assistance, requeueing failures, pausing and resuming,
and the progress block `qarina status --request` shows.

Every change is a custody event naming who asked: `qarina-<command>@<operator>`, where the
operator is the OS user or QARINA_OPERATOR.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from typing import Annotated

import typer
from rich.console import Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from evidence import controls, requests
from evidence.controls import PauseState
from evidence.db import as_utc
from evidence.requeue import requeue_failed
from pipelines.backlog import BacklogProgress, Deadline, StageProgress
from pipelines.commands.base import app, checked_name, config_of, console, out, write_json
from pipelines.config import QarinaConfig
from pipelines.plan import Plan
from pipelines.session import open_store
from workers.base import FailureReason

request_app = typer.Typer(
    no_args_is_help=True, help="Requests for assistance: named sets of items, priority, deadline."
)
app.add_typer(request_app, name="request")

#: Dates and times as operators type them; a date alone is its first moment (00:00), the
#: earlier reading of "by 5 December", so a deadline is never later than the one meant.
DATE_FORMATS = ["%Y-%m-%d", "%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M:%S%z"]
JSON = typer.Option("--json", help="Machine-readable output.")


def _actor(config: QarinaConfig, command: str) -> str:
    return f"qarina-{command}@{config.operator}"


def _request_json(request: requests.Request) -> dict[str, object]:
    return {
        "ref": request.ref,
        "priority": request.priority,
        "deadline": request.deadline.isoformat() if request.deadline else None,
        "created_at": request.created_at.isoformat(),
        "created_by": request.created_by,
    }


@request_app.command("create")
def request_create(
    ctx: typer.Context,
    ref: Annotated[
        str,
        typer.Argument(help="The request's reference, e.g. RFA-2291.", callback=checked_name),
    ],
    priority: Annotated[
        int | None,
        typer.Option(help="Higher runs first; its items' queued jobs take it at once."),
    ] = None,
    deadline: Annotated[
        dt.datetime | None,
        typer.Option(
            help="Date or date and time, UTC unless an offset is given; a date alone means"
            " 00:00 that day.",
            formats=DATE_FORMATS,
        ),
    ] = None,
    no_deadline: Annotated[
        bool, typer.Option("--no-deadline", help="Remove the request's deadline.")
    ] = False,
    as_json: Annotated[bool, JSON] = False,
) -> None:
    """Create a request, or change the priority or deadline of an existing one (what is not
    given is kept)."""
    config = config_of(ctx)
    store = open_store(config)
    try:
        existing = requests.get(store.database, ref)
        request = requests.create(
            store.database,
            ref,
            _actor(config, "request"),
            priority=priority,
            deadline=as_utc(deadline) if deadline is not None else None,
            clear_deadline=no_deadline,
        )
    finally:
        store.close()
    if as_json:
        write_json(_request_json(request))
        return
    when = _when(request.deadline) if request.deadline else "no deadline"
    verb = "updated" if existing else "created"
    out.print(f"request {request.ref} {verb}: priority {request.priority}, {when}", markup=False)


@request_app.command("priority")
def request_priority(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="The request's reference.")],
    priority: Annotated[int, typer.Argument(help="Higher runs first.")],
    as_json: Annotated[bool, JSON] = False,
) -> None:
    """Re-prioritise a request: its items' queued jobs move at once (an item in a more
    urgent request, or that arrived more urgently, keeps the higher priority)."""
    config = config_of(ctx)
    store = open_store(config)
    try:
        changed = requests.set_priority(store.database, ref, priority, _actor(config, "request"))
    except requests.UnknownRequest:
        console.print(f"no request {ref} (`qarina request create {ref}` makes one)")
        raise typer.Exit(1) from None
    finally:
        store.close()
    if as_json:
        write_json({"ref": ref, "priority": priority, "queued_jobs_changed": changed})
        return
    out.print(
        f"request {ref}: priority {priority}; {changed} queued jobs re-prioritised", markup=False
    )


@request_app.command("list")
def request_list(ctx: typer.Context, as_json: Annotated[bool, JSON] = False) -> None:
    """Every request with its priority and deadline."""
    store = open_store(config_of(ctx))
    try:
        found = requests.all_requests(store.database)
    finally:
        store.close()
    if as_json:
        write_json([_request_json(request) for request in found])
        return
    table = Table("request", "priority", "deadline", "created", "by")
    for request in found:
        table.add_row(
            Text(request.ref),
            str(request.priority),
            _when(request.deadline) if request.deadline else "",
            _when(request.created_at),
            Text(request.created_by),
        )
    out.print(table if found else "no requests")


@app.command()
def requeue(
    ctx: typer.Context,
    failed: Annotated[
        bool, typer.Option("--failed", help="Queue failed and dead jobs again.")
    ] = False,
    stage: Annotated[str | None, typer.Option("--stage", help="Only this stage.")] = None,
    reason: Annotated[
        str | None,
        typer.Option("--reason", help="Only jobs that ended with this failure reason."),
    ] = None,
    note: Annotated[
        str, typer.Option(help="Why, in the operator's words; kept in each item's custody.")
    ] = "another try asked for by an operator",
    request: Annotated[
        str | None, typer.Option("--request", help="Only items of this request.")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only count.")] = False,
    as_json: Annotated[bool, JSON] = False,
) -> None:
    """Queue failed and dead jobs under the current keys again, attempts reset (after a fix,
    a new tool or a freed node); the failure each one ends stays in custody."""
    if not failed:
        console.print("say what to requeue: --failed (failed and dead jobs)")
        raise typer.Exit(2)
    config = config_of(ctx)
    plan = Plan.default(settings=config)
    if stage is not None and stage not in plan.stages:
        console.print(f"no stage {stage}; stages: {', '.join(plan.stages)}")
        raise typer.Exit(2)
    if reason is not None and reason not in {failure.value for failure in FailureReason}:
        console.print(f"no failure reason {reason}; reasons: {', '.join(FailureReason)}")
        raise typer.Exit(2)
    current = plan.current_keys()
    store = open_store(config)
    try:
        if request is not None and requests.get(store.database, request) is None:
            console.print(f"no request {request}")
            raise typer.Exit(1)
        # What a requeue takes: the failed and dead jobs the status counts, per stage and
        # reason, under the same keys.
        report = store.status(request, current=current)
        failures = {
            (name, why): count
            for (name, why), count in report.failures_by_stage.items()
            if (stage is None or name == stage) and (reason is None or why == reason)
        }
        requeued = sum(failures.values())
        if not dry_run:
            keys = [key for name in plan.stages for key in current[name]]
            requeued = requeue_failed(
                store.database,
                keys,
                _actor(config, "requeue"),
                note,
                stage=stage,
                request_ref=request,
                failure_reason=reason,
            )
    finally:
        store.close()
    if as_json:
        write_json(
            {
                "requeued": requeued,
                "dry_run": dry_run,
                "by_stage_and_reason": [
                    {"stage": name, "reason": why, "jobs": count}
                    for (name, why), count in sorted(failures.items())
                ],
            }
        )
        return
    out.print(f"{'would requeue' if dry_run else 'requeued'} {requeued} failed and dead jobs")
    for (name, why), count in sorted(failures.items()):
        out.print(f"  {name}: {why} {count}")


@app.command()
def pause(
    ctx: typer.Context,
    reason: Annotated[
        str | None, typer.Option(help="Why, in the operator's words; kept in custody.")
    ] = None,
    as_json: Annotated[bool, JSON] = False,
) -> None:
    """Stop new leases on every driver and service: running jobs finish, `qarina run` ends."""
    config = config_of(ctx)
    store = open_store(config)
    try:
        changed = controls.set_paused(store.database, True, _actor(config, "pause"), reason)
    finally:
        store.close()
    if as_json:
        write_json({"paused": True, "changed": changed})
        return
    out.print(
        "paused: running jobs finish, no new jobs are leased (`qarina resume` lifts it)"
        if changed
        else "already paused"
    )


@app.command()
def resume(ctx: typer.Context, as_json: Annotated[bool, JSON] = False) -> None:
    """Let drivers and services lease again after `qarina pause`."""
    config = config_of(ctx)
    store = open_store(config)
    try:
        changed = controls.set_paused(store.database, False, _actor(config, "resume"))
    finally:
        store.close()
    if as_json:
        write_json({"paused": False, "changed": changed})
        return
    out.print("resumed: drivers lease again" if changed else "not paused")


def pause_line(state: PauseState) -> str | None:
    """What `status` and `run` say while leasing is paused."""
    if not state.paused:
        return None
    since = f" since {_when(state.since)}" if state.since else ""
    why = f": {state.reason}" if state.reason else ""
    return f"PAUSED{since} by {state.by}{why} (no new leases; `qarina resume` lifts it)"


def _when(moment: dt.datetime) -> str:
    return as_utc(moment).strftime("%Y-%m-%d %H:%M UTC")


def duration(seconds: float) -> str:
    """Two units at most: an estimate from minutes of throughput is no more precise."""
    whole = round(seconds)
    units = (("d", 86_400), ("h", 3_600), ("min", 60), ("s", 1))
    at = next((at for at, (_, size) in enumerate(units) if whole >= size), len(units) - 1)
    name, size = units[at]
    parts = [f"{whole // size} {name}"]
    # The second unit is the next smaller one (1 h 5 min, never 1 h 1 s), left out at 0.
    if at + 1 < len(units) and (rest := whole % size // units[at + 1][1]):
        parts.append(f"{rest} {units[at + 1][0]}")
    return " ".join(parts)


def _stage_time(stage: StageProgress) -> str:
    if stage.time_s is None:
        return "?"
    return duration(stage.time_s) if stage.time_s > 0 else ""


def _jobs(value: float | None) -> str:
    return "?" if value is None else f"{round(value):,}"


_VERDICTS = {
    Deadline.HOLDS: "holds",
    Deadline.AT_RISK: "AT RISK",
    Deadline.MISSED: "MISSED",
    Deadline.NO_DEADLINE: "no deadline",
    Deadline.UNKNOWN: "unknown",
}


def progress_view(progress: BacklogProgress) -> RenderableType:
    """The request's block in `qarina status --request`: counts only, never names."""
    items = progress.items
    header = Text(
        f"request {progress.request}: priority {progress.priority},"
        f" {_when(progress.deadline) if progress.deadline else 'no deadline'}\n"
        f"items: {items.total} total, {items.finished} finished, {items.failed} failed,"
        f" {items.in_progress} in progress"
    )
    table = Table("stage", "open", "done", "failed", "to come", "ahead", "jobs/s", "time")
    for stage in progress.stages:
        table.add_row(
            stage.stage,
            _jobs(stage.open),
            _jobs(stage.counts.get("done", 0)),
            _jobs(stage.counts.get("failed", 0) + stage.counts.get("dead", 0)),
            _jobs(stage.to_come),
            _jobs(stage.ahead),
            "" if stage.throughput_per_s is None else f"{stage.throughput_per_s:.3g}",
            _stage_time(stage),
        )
    return Group(header, table, Text(_eta_line(progress)), Text(_verdict_line(progress)))


def _eta_line(progress: BacklogProgress) -> str:
    eta = progress.eta
    basis = (
        f"jobs/s measured over the last {eta.window_s} s across the store; 'to come' are"
        f" jobs later stages will get (unprobed items by the {progress.kind_mix_source}'s"
        " kind mix); 'ahead' is other work that leasing takes first"
    )
    if eta.seconds is not None and eta.finish_at is not None:
        if eta.seconds == 0:
            return "ETA: nothing left to run"
        slowest = next(stage for stage in progress.stages if stage.stage == eta.bottleneck)
        return (
            f"ETA: {duration(eta.seconds)} (about {_when(eta.finish_at)}), bottleneck"
            f" {eta.bottleneck}: {_jobs((slowest.left or 0) + slowest.ahead)} jobs at"
            f" {eta.throughput_per_s[slowest.stage]:.3g} jobs/s; {basis}"
        )
    why = []
    if eta.unmeasured:
        why.append(f"no jobs of {', '.join(eta.unmeasured)} ended in the last {eta.window_s} s")
    if eta.unestimated:
        why.append(f"what {', '.join(eta.unestimated)} will get is unknown until items are probed")
    at_least = f"; at least {duration(eta.at_least_s)}" if eta.at_least_s else ""
    return f"ETA: unknown: {'; '.join(why)}{at_least}"


def _verdict_line(progress: BacklogProgress) -> str:
    verdict = progress.verdict
    line = f"deadline: {_VERDICTS[verdict.state]}"
    if verdict.state is Deadline.UNKNOWN:
        line += " (no ETA yet)" if progress.items.total else " (nothing has arrived for it yet)"
    if verdict.slack_s is not None and verdict.state is not Deadline.NO_DEADLINE:
        spare = duration(abs(verdict.slack_s))
        line += f" ({spare} {'to spare' if verdict.slack_s >= 0 else 'late'})"
    if progress.pause.paused:
        line += "; leasing is paused: the ETA counts from `qarina resume`"
    return line


def watch(view: Callable[[], RenderableType], every_s: float, refreshes: int | None) -> None:
    """Redraw `view` every `every_s` seconds until Ctrl-C (or `refreshes` draws, for tests)."""
    drawn = 1
    try:
        with Live(view(), console=out, auto_refresh=False) as live:
            while refreshes is None or drawn < refreshes:
                time.sleep(every_s)
                live.update(view(), refresh=True)
                drawn += 1
    except KeyboardInterrupt:
        pass
