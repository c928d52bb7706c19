"""`qarina review`: a reviewer's decision about an item, which covers its near-duplicates.

Recorded as a custody event whose actor is the operator who ran the command
(`qarina-review@<operator>`), with the reviewer they name in its details; a later review of
the same picture adds a decision, never replaces one.
"""

from __future__ import annotations

from typing import Annotated

import typer

from evidence import reviews
from pipelines.commands.base import app, checked_name, config_of, console, out, write_json
from pipelines.session import open_store


@app.command()
def review(
    ctx: typer.Context,
    sha256: Annotated[str, typer.Argument(help="The item's SHA-256.")],
    label: Annotated[str, typer.Option("--label", help=" | ".join(reviews.LABELS))],
    note: Annotated[
        str | None, typer.Option("--note", help="Why, in the reviewer's words; kept in custody.")
    ] = None,
    reviewer: Annotated[
        str | None,
        typer.Option(
            "--reviewer",
            help="Who looked (default: the operator, QARINA_OPERATOR).",
            callback=checked_name,
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Record a reviewer's label for an item; it covers every item of its near-duplicate
    cluster, including copies linked later, so no one is shown the same picture again."""
    config = config_of(ctx)
    store = open_store(config)
    try:
        recorded = reviews.record_review(
            store.database,
            sha256.lower(),
            label,
            reviewer or config.operator,
            note,
            operator=config.operator,
        )
        covered = len(reviews.cluster_members(store.database, recorded.sha256))
    except ValueError as error:
        console.print(str(error), markup=False)
        raise typer.Exit(2) from None
    except reviews.UnknownItem:
        console.print(f"no item {sha256}")
        raise typer.Exit(1) from None
    finally:
        store.close()
    if as_json:
        write_json(
            {
                "sha256": recorded.sha256,
                "label": recorded.label,
                "reviewer": recorded.reviewer,
                "note": recorded.note,
                "at": recorded.at.isoformat(),
                "custody_seq": recorded.custody_seq,
                "cluster_items": covered,
            }
        )
        return
    others = covered - 1
    out.print(
        f"{recorded.sha256} reviewed as {recorded.label} by {recorded.reviewer}"
        f" (custody event {recorded.custody_seq}); the label covers {others} other"
        f" item{'' if others == 1 else 's'} of its near-duplicate cluster",
        markup=False,
    )
