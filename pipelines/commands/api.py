"""`qarina bench api`: the HTTP API under many concurrent intake clients (see
pipelines/bench/api.py). The API itself runs inside `qarina serve --http`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipelines.commands.base import bench_app, config_of, write_json


@bench_app.command("api")
def bench_api(
    ctx: typer.Context,
    clients: Annotated[int, typer.Option(help="HTTP clients uploading at once.")] = 50,
    uploads: Annotated[int, typer.Option(help="Photos each client uploads.")] = 20,
    runs: Annotated[int, typer.Option(help="Rounds; the median is reported.")] = 3,
    output: Annotated[Path, typer.Option(help="JSON results.")] = Path("bench-results/api.json"),
) -> None:
    """Concurrent uploads on loopback: latency (median, p99) and every upload stored exactly
    once, against one client and `qarina ingest` registering the same files."""
    from pipelines.bench.api import bench_api as run_bench

    write_json(run_bench(config_of(ctx), output, clients=clients, uploads=uploads, runs=runs))
