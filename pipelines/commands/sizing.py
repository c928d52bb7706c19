"""`qarina plan`: the cores, GPUs and days that clear a backlog, from `qarina bench` files.

The arithmetic lives in `pipelines/sizing/plan.py`; this module parses options, prints the
table and writes the page.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from pipelines.commands.base import app, console, out, write_json
from pipelines.sizing.costs import BenchFileError, load_bench
from pipelines.sizing.plan import (
    SECONDS_PER_DAY,
    Backlog,
    Plan,
    PlanError,
    make_plan,
    parse_mix,
    parse_units,
    plan_html,
    plan_json,
    summary_lines,
)


@app.command("plan")
def plan(
    backlog: Annotated[int, typer.Option("--backlog", help="Items to clear.")],
    mix: Annotated[str, typer.Option("--mix", help="Shares by kind: photo=0.7,video=0.2,...")],
    bench: Annotated[
        list[Path], typer.Option("--bench", help="A `qarina bench --json` file; repeatable.")
    ],
    video_minutes: Annotated[
        float, typer.Option("--video-minutes", help="Average video length, minutes.")
    ] = 0.0,
    audio_minutes: Annotated[
        float, typer.Option("--audio-minutes", help="Average recording length, minutes.")
    ] = 0.0,
    deadline: Annotated[
        str | None, typer.Option("--deadline", help="YYYY-MM-DD (00:00 UTC): cores/GPUs needed.")
    ] = None,
    cluster: Annotated[
        str | None, typer.Option("--cluster", help="cpu=64,gpu=2: days to clear on it.")
    ] = None,
    html_out: Annotated[
        Path | None, typer.Option("--html", help="Write the page with the chart here.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """How many cores and GPUs clear a backlog by a date, or how long a cluster takes."""
    try:
        due = dt.date.fromisoformat(deadline) if deadline else None
    except ValueError:
        console.print(f"[red]--deadline takes a date as YYYY-MM-DD, got {deadline!r}[/red]")
        raise typer.Exit(2) from None
    try:
        benches = [load_bench(path) for path in bench]
        result = make_plan(
            Backlog(backlog, parse_mix(mix), video_minutes, audio_minutes),
            benches,
            deadline=due,
            cluster=parse_units(cluster) if cluster else None,
        )
    except (PlanError, BenchFileError) as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from None
    if html_out is not None:
        html_out.write_text(plan_html(result), encoding="utf-8")
    if as_json:
        write_json(plan_json(result))
        return
    out.print(_table(result))
    for line in summary_lines(result):
        out.print(line)
    if html_out is not None:
        console.print(f"wrote {html_out}")


def _table(result: Plan) -> Table:
    """Stages x device work; with a deadline the units each stage alone needs, with a cluster
    the days it alone takes, so the bottleneck stands out."""
    table = Table(title=f"Work per stage (efficiency {result.efficiency:.0%} of device time)")
    for column in ("stage", "device", "device-hours", "share of device"):
        table.add_column(column, justify="left" if column in ("stage", "device") else "right")
    if result.available_s is not None:
        table.add_column("units by deadline", justify="right")
    if result.cluster is not None:
        table.add_column("days on cluster", justify="right")
    for work in result.works:
        total = result.seconds[work.device]
        row = [
            work.stage,
            work.device.upper(),
            f"{work.seconds / 3600:,.2f}",
            f"{work.seconds / total:.1%}" if total else "-",
        ]
        if result.available_s is not None:
            row.append(f"{work.seconds / (result.available_s * result.efficiency):,.2f}")
        if result.cluster is not None:
            units = result.cluster.of(work.device)
            row.append(
                f"{work.seconds / (units * result.efficiency) / SECONDS_PER_DAY:,.2f}"
                if units
                else "-"
            )
        table.add_row(*row)
    return table
