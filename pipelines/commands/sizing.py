"""`qarina plan`: the cores, GPUs and days that clear a backlog, from `qarina bench` files;
`qarina plan-check`: that plan checked end to end on this machine.

The arithmetic lives in `pipelines/sizing/plan.py`; this module parses options, prints the
table and writes the page.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from models import whisper
from pipelines.commands.base import app, config_of, console, out, write_json
from pipelines.sizing.costs import BenchFileError, load_bench
from pipelines.sizing.plan import (
    EFFICIENCY,
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
    efficiency: Annotated[
        float,
        typer.Option(
            "--efficiency",
            help="Share of device time that goes to stage work (the rest: scheduling, commits,"
            " the queue's tail); measured by qarina plan-check.",
        ),
    ] = EFFICIENCY,
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
            efficiency=efficiency,
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


@app.command("plan-check")
def plan_check(
    ctx: typer.Context,
    sample_items: Annotated[int, typer.Option(help="Items in the benched sample.")] = 200,
    backlog_items: Annotated[int, typer.Option(help="Items in the processed backlog.")] = 1000,
    runs: Annotated[int, typer.Option(help="Bench runs on the sample; medians.")] = 1,
    video_share: Annotated[float, typer.Option(help="Share of videos (10-120 s).")] = 0.1,
    audio_share: Annotated[float, typer.Option(help="Share of voice notes (2-60 s).")] = 0.1,
    json_out: Annotated[Path, typer.Option("--json", help="The check's report.")] = Path(
        "bench-results/plan-check.json"
    ),
    bench_out: Annotated[
        Path | None, typer.Option("--bench", help="Also keep the sample's bench file here.")
    ] = None,
) -> None:
    """Bench a phone-shaped sample, plan a backlog of the same shape on this machine from that
    bench file, process the backlog as `qarina run` does, and compare: within 20%?"""
    from pipelines.sizing.check import run_check

    try:
        report = run_check(
            config_of(ctx), sample_items=sample_items, backlog_items=backlog_items, runs=runs,
            video_share=video_share, audio_share=audio_share, json_out=json_out,
            bench_out=bench_out, progress=console,
        )  # fmt: skip
    except (ValueError, whisper.ModelMissing) as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from None
    table = Table("stage", "predicted core-s", "measured reserved core-s", "predicted/measured")
    for row in report["stages"]:
        ratio = row["predicted_over_measured"]
        table.add_row(
            row["stage"], f"{row['predicted_s']:,.1f}", f"{row['measured_s']:,.1f}",
            "-" if ratio is None else f"{ratio:.2f}",
        )  # fmt: skip
    out.print(table)
    comparison, measured = report["comparison"], report["measured"]
    out.print(
        f"time to clear {report['backlog']['items']} items on {report['predicted']['cores']} cores:"
        f" predicted {comparison['predicted_s']:,.1f} s (efficiency "
        f"{report['predicted']['efficiency']:.0%}), measured {comparison['measured_s']:,.1f} s"
        f" of processing ({measured['wall_s']:,.1f} s with intake): error "
        f"{comparison['error']:+.1%}, {'within' if comparison['within'] else 'outside'} 20%"
    )
    out.print(
        f"measured efficiency {measured['efficiency']:.0%} (reserved core-s / cores x wall); "
        f"the margin that would have been exact: {report['efficiency_for_exact']:.0%}"
    )
    console.print(f"wrote {json_out}")
