"""`qarina report`: the review pages as a static site, to share a request's results.

The site is written into a hidden folder beside `--out`, each item it shows records a
`report` event (one transaction), and only then is the folder renamed into place
(`pipelines.review.site.write_site`): a report on disk is always in custody."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from evidence import requests
from pipelines.commands.base import app, config_of, console, out
from pipelines.review.queries import Scope, UnknownItems, items_scope, request_scope
from pipelines.review.site import NotEmpty, write_site
from pipelines.session import open_store


@app.command()
def report(
    ctx: typer.Context,
    folder: Annotated[
        Path, typer.Option("--out", help="Folder to write the site into (new or empty).")
    ],
    request: Annotated[
        str | None, typer.Option("--request", help="Only the items that arrived for REF.")
    ] = None,
    items: Annotated[
        bool, typer.Option("--items", help="Only the items named by the SHA arguments.")
    ] = False,
    shas: Annotated[
        list[str] | None, typer.Argument(metavar="SHA", help="Items, with --items.")
    ] = None,
    no_blur: Annotated[
        bool,
        typer.Option(
            "--no-blur",
            help="Show pictures clearly instead of blurred until selected (QARINA_REVIEW_BLUR=0).",
        ),
    ] = False,
) -> None:
    """Write the review pages (backlog, items, clusters, a page per item) as files that open
    from disk with no server and no network; pictures blurred until a reviewer selects them."""
    config = config_of(ctx)
    if request is not None and items:
        console.print("name a request or items, not both")
        raise typer.Exit(2)
    if bool(shas) != items:
        console.print("--items needs at least one SHA, and SHAs need --items")
        raise typer.Exit(2)
    store = open_store(config)
    try:
        scope: Scope | None = None
        if request is not None:
            if requests.get(store.database, request) is None:
                console.print(f"no request {request} (`qarina request list` lists them)")
                raise typer.Exit(1)
            scope = request_scope(store.database, request)
        elif shas:
            scope = items_scope(store.database, shas)
        blur = config.review_blur and not no_blur
        # A report shares what the pages show (pictures, metadata, transcripts, a copy's
        # sources): each item it shows records who let it out, and in what scope.
        summary = write_site(
            store, config, folder, blur=blur, scope=scope, actor=f"qarina-report@{config.operator}"
        )
    except UnknownItems as error:
        console.print(f"no item {', '.join(error.missing)}")
        raise typer.Exit(1) from None
    except NotEmpty:
        console.print(f"{folder} is not empty: a report goes into a new or empty folder")
        raise typer.Exit(1) from None
    finally:
        store.close()
    out.print(
        f"wrote {summary.pages} pages and {summary.pictures} pictures"
        f" ({summary.bytes / 1e6:.1f} MB) in {summary.seconds:.1f} s to {folder}",
        markup=False,
    )
