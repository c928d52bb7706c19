"""What every `qarina` command shares: the app, its consoles, JSON output, the run-time config.

Commands live in `pipelines/cli.py` and, by area, in the modules of this package; each
registers itself on `app`, and `pipelines/cli.py` imports them all.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler

from evidence.schema import name_refusal
from pipelines.config import QarinaConfig

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Qarina: media processing for an evidence repository.",
)
#: `qarina bench` alone measures every stage (its callback, in pipelines/cli.py); the older
#: single-stage benchmarks stay as its subcommands.
bench_app = typer.Typer(help="Benchmarks for sizing hardware.")
eval_app = typer.Typer(no_args_is_help=True, help="Accuracy evaluations on the shared corpus.")
app.add_typer(bench_app, name="bench")
app.add_typer(eval_app, name="eval")

console = Console(stderr=True)
#: Tables for people; piped output keeps them unwrapped instead of folding at 80 columns.
out = Console(width=None if sys.stdout.isatty() else 160)


def write_json(value: Any) -> None:
    """Machine-readable output bypasses rich, which may wrap long lines."""
    sys.stdout.write(json.dumps(value, ensure_ascii=False, indent=2) + "\n")


def config_of(ctx: typer.Context) -> QarinaConfig:
    config: QarinaConfig = ctx.obj
    return config


#: The speech language is part of the transcript key, so every command that names current
#: keys (status, show, search, reprocess) must see the one `run` uses: `qarina --language`
#: sets it for all of them, `qarina run --language` for a run.
LANGUAGE = typer.Option(
    "--language", help="Speech language (ISO code), or `auto` to detect it (QARINA_LANGUAGE)."
)


def with_language(config: QarinaConfig, language: str | None) -> QarinaConfig:
    return config.with_overrides(transcript_language=language) if language else config


def checked_name(value: str | None) -> str | None:
    """A name an operator types (source, request reference, reviewer), refused as the HTTP API
    refuses it (`pipelines/api/models.Label`, by the same rule from `evidence.schema`): empty,
    past NAME_MAX_CHARS characters, or holding a control character.

    PostgreSQL refuses an over-long name with a database error, and only at registration,
    after ingest has copied the files, while SQLite keeps it whole: checked here, both backends
    give one answer before anything is copied.
    """
    if value is None:
        return None
    if (refusal := name_refusal(value)) is not None:
        raise typer.BadParameter(refusal)
    return value


def checked_names(values: list[str] | None) -> list[str] | None:
    """`checked_name` for an option given once per drop folder."""
    for value in values or ():
        checked_name(value)
    return values


@app.callback()
def main(
    ctx: typer.Context,
    data: Annotated[Path | None, typer.Option("--data", help="Data folder (QARINA_DATA).")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log per item.")] = False,
    language: Annotated[str | None, LANGUAGE] = None,
) -> None:
    """Qarina: media processing for an evidence repository."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False)],
    )
    try:
        ctx.obj = with_language(QarinaConfig.from_env(data), language)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
