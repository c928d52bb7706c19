"""`qarina serve`: the warm service that intake drives (see pipelines/service.py)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from models import whisper
from pipelines.commands.base import (
    app,
    bench_app,
    checked_names,
    config_of,
    console,
    out,
    write_json,
)

#: The API's default address: loopback, so nothing outside this host reaches it unless an
#: operator binds it elsewhere on purpose.
_DEFAULT_HTTP = "127.0.0.1:8470"


def _host_port(value: str) -> tuple[str, int]:
    """HOST:PORT, with an IPv6 host in brackets ([::1]:8470)."""
    host, _, port = value.rpartition(":")
    host = host.removeprefix("[").removesuffix("]") if host.startswith("[") else host
    if not host or not port.isdigit():
        raise typer.BadParameter("expected HOST:PORT")
    return host, int(port)


@app.command()
def serve(
    ctx: typer.Context,
    address: Annotated[
        str | None, typer.Option("--address", help="Ray cluster to join (RAY_ADDRESS).")
    ] = None,
    sequential: Annotated[bool, typer.Option(help="Run stages in this process, no Ray.")] = False,
    http: Annotated[
        str | None,
        typer.Option(
            help=f"Serve the HTTP API, and the review pages under /ui, on HOST:PORT"
            f" (e.g. {_DEFAULT_HTTP})."
        ),
    ] = None,
    tokens: Annotated[
        Path | None,
        typer.Option(help="API tokens file (`name token` per line), readable by its owner only."),
    ] = None,
    allow_root: Annotated[
        list[Path] | None,
        typer.Option("--allow-root", help="A folder the API may register files from."),
    ] = None,
    upload_max_mb: Annotated[int, typer.Option(help="Largest upload the API takes.")] = 4096,
    watch: Annotated[
        list[Path] | None, typer.Option("--watch", help="A drop folder (repeatable).")
    ] = None,
    source: Annotated[
        list[str] | None,
        typer.Option(
            "--source",
            help="Source of the drop folder in the same position.",
            callback=checked_names,
        ),
    ] = None,
    priority: Annotated[
        list[int] | None,
        typer.Option("--priority", help="Priority of the drop folder in the same position."),
    ] = None,
    request: Annotated[
        list[str] | None,
        typer.Option(
            "--request",
            help="Request of the drop folder in the same position.",
            callback=checked_names,
        ),
    ] = None,
    settle_s: Annotated[
        float, typer.Option(help="Seconds a dropped file must stay unchanged before it is taken.")
    ] = 2.0,
    grace_s: Annotated[
        float, typer.Option(help="Seconds running jobs get to finish after SIGTERM.")
    ] = 30.0,
) -> None:
    """Process whatever arrives (HTTP API, drop folders, other intake) until SIGTERM."""
    from pipelines.api import ApiSettings, TokensFileError
    from pipelines.service import ComponentFailed, ServeOptions
    from pipelines.service import serve as run_service
    from pipelines.watch import DropFolder

    # The service's own lines (start, a summary a minute, stop) are its heartbeat in the log.
    logging.getLogger("pipelines.service").setLevel(logging.INFO)
    config = config_of(ctx)
    if address:
        config = config.with_overrides(ray_address=address)
    folders = watch or []
    names, priorities, requests = source or [], priority or [], request or []
    if len(names) != len(folders):
        console.print("give one --source for each --watch folder, in the same order")
        raise typer.Exit(2)
    for option, given in (("--priority", priorities), ("--request", requests)):
        if given and len(given) != len(folders):
            # Paired by position: one missing would silently shift the rest to other folders.
            console.print(f"give {option} for every --watch folder, in the same order, or none")
            raise typer.Exit(2)
    drops = [
        DropFolder(
            folder.resolve(),
            name,
            priorities[number] if number < len(priorities) else 0,
            requests[number] if number < len(requests) else None,
        )
        for number, (folder, name) in enumerate(zip(folders, names, strict=True))
    ]
    api = None
    if http is not None:
        if tokens is None:
            console.print("--http needs --tokens: every API request must carry a token")
            raise typer.Exit(2)
        api = ApiSettings(
            tokens, tuple(root.resolve() for root in allow_root or []), upload_max_mb << 20
        )
    options = ServeOptions(
        sequential=sequential,
        http=_host_port(http) if http else None,
        api=api,
        drops=drops,
        settle_s=settle_s,
        grace_s=grace_s,
    )
    try:
        summary = run_service(config, options, console)
    except whisper.ModelMissing as error:
        console.print(f"no speech model: {error}")
        raise typer.Exit(2) from None
    except TokensFileError as error:
        console.print(f"API tokens: {error}")
        raise typer.Exit(2) from None
    except ComponentFailed as error:
        console.print(f"stopped because a part of the service ended: {error}")
        raise typer.Exit(1) from None
    out.print(
        f"stopped: committed {summary.committed} outcomes ({summary.failed} failures);"
        f" {summary.handed_back} unfinished jobs handed back"
    )


@bench_app.command("serve")
def bench_serve(
    ctx: typer.Context,
    count: Annotated[int, typer.Option(help="Photos in the batch.")] = 500,
    runs: Annotated[int, typer.Option(help="Rounds; the median is reported.")] = 3,
    width: Annotated[int, typer.Option(help="Photo width in pixels.")] = 4000,
    height: Annotated[int, typer.Option(help="Photo height in pixels.")] = 3000,
    output: Annotated[Path, typer.Option(help="JSON results.")] = Path("bench-results/serve.json"),
) -> None:
    """A batch of photos through a warm `qarina serve` against the sequential runner, and
    registration to first stage result."""
    from pipelines.bench.serve import bench_serve as run_bench

    write_json(run_bench(config_of(ctx), output, count=count, runs=runs, size=(width, height)))
