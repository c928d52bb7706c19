"""Intake commands: `qarina ingest` (files and folders), `qarina watch` (drop folders), and
`qarina bench intake`. They store and register only; `qarina run` or `serve` processes.

Progress shows counts, bytes and rates, never a file name.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer
from rich.progress import (
    FileSizeColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)

from pipelines.commands.base import (
    app,
    bench_app,
    checked_name,
    config_of,
    console,
    out,
    write_json,
)
from pipelines.ingest import IngestSummary, ingest_paths
from pipelines.plan import Plan
from pipelines.session import open_store
from pipelines.watch import DropFolder, PollReport, Watcher

SOURCE = typer.Option("--source", help="Who or what the material came from.", callback=checked_name)
PRIORITY = typer.Option(help="Higher runs first.")
REQUEST = typer.Option(
    "--request", help="The request (for assistance) the material is for.", callback=checked_name
)


@app.command()
def ingest(
    ctx: typer.Context,
    paths: Annotated[list[Path], typer.Argument(help="Files and folders (recursive).")],
    source: Annotated[str, SOURCE],
    priority: Annotated[int, PRIORITY] = 0,
    request: Annotated[str | None, REQUEST] = None,
) -> None:
    """Copy files into the store by content, record each arrival and queue its processing."""
    config = config_of(ctx)
    store = open_store(config)
    # No total: counting a 400,000-file folder first would cost a second walk of it.
    progress = Progress(
        SpinnerColumn(),
        TextColumn("[bold]ingesting[/] {task.fields[files]} files ({task.fields[rate]}/s)"),
        FileSizeColumn(),
        TransferSpeedColumn(),
        TextColumn("{task.fields[refused]} refused"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
    try:
        plan = Plan.default(settings=config)
        with progress:
            task = progress.add_task("ingest", total=None, files=0, rate=0, refused=0)
            started = time.monotonic()

            def advance(summary: IngestSummary) -> None:
                progress.update(
                    task,
                    completed=summary.bytes,
                    files=summary.files,
                    rate=round(summary.files / max(time.monotonic() - started, 1e-3)),
                    refused=sum(summary.refused.values()),
                )

            summary = ingest_paths(
                store, plan, config, paths, source, priority, request, progress=advance
            )
    finally:
        store.close()
    out.print(
        f"{summary.files} files: {summary.new_items} new items,"
        f" {summary.duplicates} already stored,"
        f" {sum(summary.refused.values())} refused {summary.refused or ''}".rstrip()
    )


@dataclass
class _Tally:
    """Totals over the drop folders a `qarina watch` looks after, updated from their threads."""

    ingested: int = 0
    duplicates: int = 0
    refused: int = 0
    resumed: int = 0
    #: Per folder, from its last pass: files waiting, and whether another watcher holds it.
    waiting: dict[int, int] = field(default_factory=dict)
    held_elsewhere: dict[int, bool] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def one_ingested(self) -> None:
        """Counted as each file is registered, so a long pass shows its progress."""
        with self.lock:
            self.ingested += 1

    def add(self, folder: int, report: PollReport) -> None:
        with self.lock:
            self.duplicates += report.duplicates
            self.refused += report.refused
            self.resumed += report.resumed
            self.waiting[folder] = report.waiting
            self.held_elsewhere[folder] = report.held_elsewhere

    def line(self) -> str:
        with self.lock:
            standing_by = sum(self.held_elsewhere.values())
            return (
                f"{self.ingested} ingested ({self.duplicates} already stored),"
                f" {self.refused} refused, {sum(self.waiting.values())} waiting"
                + (f", {self.resumed} resumed after a crash" if self.resumed else "")
                + (f"; {standing_by} folders held by another watcher" if standing_by else "")
            )


@app.command()
def watch(
    ctx: typer.Context,
    folders: Annotated[list[Path], typer.Argument(help="Drop folders.")],
    source: Annotated[str, SOURCE],
    priority: Annotated[int, PRIORITY] = 0,
    request: Annotated[str | None, REQUEST] = None,
    settle_s: Annotated[
        float,
        typer.Option(help="Seconds a file must stay unchanged before it is taken (no marker)."),
    ] = 2.0,
    every_s: Annotated[float, typer.Option(help="Seconds between looks at a folder.")] = 0.5,
    once: Annotated[
        bool, typer.Option("--once", help="Take what is complete now (one look), then exit.")
    ] = False,
) -> None:
    """Ingest files dropped into FOLDERS as they complete, each once (intake only).

    Complete: a NAME.done marker beside the file, or no change for --settle-s seconds.
    Taken files go to FOLDER/.ingested/; links, FIFOs, devices, sockets to FOLDER/.refused/.
    Runs until Ctrl-C or SIGTERM; `qarina run` or `serve` processes what it registers.
    """
    config = config_of(ctx)
    for folder in folders:
        if not folder.is_dir():
            console.print(f"not a folder: {folder}")
            raise typer.Exit(2)
    store = open_store(config)
    plan = Plan.default(settings=config)
    tally = _Tally()
    watchers = [
        Watcher(
            store,
            plan,
            config,
            DropFolder(folder.resolve(), source, priority, request),
            settle_s,
            tally.one_ingested,
        )
        for folder in folders
    ]
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {
        number: signal.signal(number, on_signal) for number in (signal.SIGTERM, signal.SIGINT)
    }
    progress = Progress(
        SpinnerColumn(),
        TextColumn("[bold]watching[/] {task.description}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
    try:
        with progress:
            task = progress.add_task(tally.line(), total=None)
            if once:
                _look_once(watchers, settle_s, stop, tally)
            else:
                _watch_until_stopped(
                    watchers,
                    every_s,
                    stop,
                    tally,
                    lambda: progress.update(task, description=tally.line()),
                )
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        store.close()
    out.print(tally.line())


def _look_once(
    watchers: list[Watcher], settle_s: float, stop: threading.Event, tally: _Tally
) -> None:
    """One pass, and a second after `settle_s` when files were settling: what is complete
    now is taken, what is still being written is left (and counted as waiting)."""
    try:
        reports = [watcher.poll(stop) for watcher in watchers]
        for number, report in enumerate(reports):
            tally.add(number, report)
        if settle_s > 0 and any(report.waiting for report in reports) and not stop.is_set():
            stop.wait(settle_s)
            for number, watcher in enumerate(watchers):
                tally.add(number, watcher.poll(stop))
    finally:
        for watcher in watchers:
            watcher.close()


def _watch_until_stopped(
    watchers: list[Watcher],
    every_s: float,
    stop: threading.Event,
    tally: _Tally,
    refresh: Callable[[], None],
) -> None:
    """A thread per folder, as `qarina serve` runs them; this thread keeps the display."""
    threads = [
        threading.Thread(
            target=watcher.run,
            args=(stop, every_s, lambda report, number=number: tally.add(number, report)),
            name=f"watch-{number}",
        )
        for number, watcher in enumerate(watchers)
    ]
    for thread in threads:
        thread.start()
    try:
        while not stop.wait(0.2):
            refresh()
    finally:
        stop.set()
        for thread in threads:
            thread.join()


@bench_app.command("intake")
def bench_intake(
    ctx: typer.Context,
    files: Annotated[int, typer.Option(help="Small files dropped at once.")] = 10_000,
    runs: Annotated[int, typer.Option(help="Rounds; the median is reported.")] = 3,
    output: Annotated[Path, typer.Option(help="JSON results.")] = Path("bench-results/intake.json"),
) -> None:
    """A drop folder taking FILES files dropped at once: exactly once, rate, and latency from
    a file's completion to its registration, against `qarina ingest` of the same files."""
    from pipelines.bench.intake import bench_intake as run_bench

    write_json(run_bench(config_of(ctx), output, files=files, runs=runs))
