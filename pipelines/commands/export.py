"""`qarina export` (a CASE/UCO bundle, or JSON lines) and `qarina verify-bundle`."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated

import typer

from pipelines.commands.base import app, config_of, console, out
from pipelines.plan import Plan
from pipelines.session import open_store


class ExportFormat(enum.StrEnum):
    case = "case"
    jsonl = "jsonl"


@app.command()
def export(
    ctx: typer.Context,
    shas: Annotated[
        list[str] | None, typer.Argument(help="The items' SHA-256 (jsonl: or --request, --all).")
    ] = None,
    export_format: Annotated[
        ExportFormat,
        typer.Option("--format", help="case: a CASE/UCO bundle folder; jsonl: a JSON-lines file."),
    ] = ExportFormat.case,
    out_path: Annotated[
        Path | None, typer.Option("--out", help="The new bundle folder or file to write.")
    ] = None,
    request: Annotated[
        str | None, typer.Option("--request", help="jsonl: every item of this request.")
    ] = None,
    every_item: Annotated[bool, typer.Option("--all", help="jsonl: every item.")] = False,
    media: Annotated[
        bool,
        typer.Option(
            "--media/--no-media", help="case: copy the originals and derived files (hashes stay)."
        ),
    ] = True,
    full_chain: Annotated[
        bool,
        typer.Option(
            "--full-chain",
            help="case: the whole custody chain from its first event, so the bundle proves it"
            " alone, instead of the items' events.",
        ),
    ] = False,
) -> None:
    """Export items for other tools: a CASE/UCO JSON-LD bundle a court can re-verify without
    Qarina, or one JSON line per item; each export is recorded in the items' custody."""
    from pipelines.export.bundle import ExportError, export_case_bundle
    from pipelines.export.jsonl import Selection, export_jsonl

    if out_path is None:
        console.print("--out names the bundle folder or file to write")
        raise typer.Exit(2)
    chosen = sum((bool(shas), request is not None, every_item))
    if export_format is ExportFormat.case and (not shas or chosen != 1):
        console.print("a CASE bundle is of items named by their SHA-256")
        raise typer.Exit(2)
    if chosen != 1:
        console.print("name the items by SHA-256, or give --request REF or --all (one of them)")
        raise typer.Exit(2)
    config = config_of(ctx)
    actor = f"qarina-export@{config.operator}"
    current = Plan.default(settings=config).current_keys()
    store = open_store(config)
    try:
        if export_format is ExportFormat.case:
            bundle = export_case_bundle(
                store, current, shas or [], out_path, actor, media=media, full_chain=full_chain
            )
        else:
            lines = export_jsonl(
                store, current, Selection(tuple(shas or ()), request), out_path, actor
            )
    except ExportError as error:
        console.print(str(error), markup=False)
        raise typer.Exit(1) from None
    finally:
        store.close()
    if export_format is ExportFormat.jsonl:
        out.print(
            f"{lines.items} items written to {lines.path} (SHA-256 {lines.file_sha256});"
            f" export recorded in custody, anchored to chain head event {lines.head_seq}",
            markup=False,
        )
        return
    out.print(
        f"bundle {bundle.path}: {bundle.items} items, {bundle.events} custody events,"
        f" {bundle.files} files; MANIFEST.sha256 has SHA-256 {bundle.manifest_sha256},"
        f" recorded in custody with chain head event {bundle.head_seq} ({bundle.head_hash})",
        markup=False,
    )
    out.print(
        f"send that SHA-256 apart from the bundle; the recipient checks it anywhere: cd"
        f" {bundle.path} && sha256sum -c MANIFEST.sha256 && python3 verify_bundle.py"
        f" --manifest-sha256 {bundle.manifest_sha256}",
        markup=False,
        soft_wrap=True,
    )


@app.command("verify-bundle")
def verify_bundle(
    ctx: typer.Context,
    bundle: Annotated[Path, typer.Argument(help="The bundle folder `qarina export` wrote.")],
    against_store: Annotated[
        bool,
        typer.Option(
            "--against-store",
            help="Also compare its custody with the store's chain, and find its export there.",
        ),
    ] = False,
    manifest_sha256: Annotated[
        str | None,
        typer.Option(
            "--manifest-sha256",
            metavar="HEX",
            help="The SHA-256 of MANIFEST.sha256 the sender gave apart from the bundle.",
        ),
    ] = None,
) -> None:
    """Re-check a bundle as its own verify_bundle.py does; exit 1 naming the first problem."""
    from pipelines.export.bundle import verify_against_store
    from pipelines.export.verify_bundle import BundleProblem, sha256_hex, verify

    if manifest_sha256 is not None:
        try:
            manifest_sha256 = sha256_hex(manifest_sha256)
        except ValueError as error:
            console.print(f"--manifest-sha256: {error}", markup=False)
            raise typer.Exit(2) from None

    def say(line: str) -> None:
        out.print(line, markup=False, soft_wrap=True)

    store = open_store(config_of(ctx)) if against_store else None
    try:
        copy = verify(bundle, say, manifest_sha256)
        if store is not None:
            for line in verify_against_store(store, bundle, copy):
                say(line)
    except BundleProblem as problem:
        say(f"FAILED: {problem}")
        raise typer.Exit(1) from None
    finally:
        if store is not None:
            store.close()
    say(f"bundle verified: {bundle}")
