"""The static report: the review pages written as files that open from disk with no server
and no network, for sharing a request's results.

Layout (every link relative, so the folder can be copied or zipped as it is):

    index.html                  the backlog
    items/page-N.html           the items list
    items/<sha256>.html         one page per item
    clusters/page-N.html        near-duplicate clusters
    pictures/<key>-blurred.jpg  what pages show first
    pictures/<key>-clear.jpg    fetched only when a reviewer selects the picture
    static/qarina.css, qarina.js, qarina.svg (the pages' icon)

No picture of an item withheld by a graphic review is written at all, nor, in a report of a
request or of named items, of a near copy from outside it (its row says where it came from).

A report lets evidence out of the store, so it is written into a hidden folder beside its
destination, every item it shows (`report` custody events, in one transaction) is recorded,
and only then does the folder take its name: a crash leaves a hidden partial folder or a
recorded report, never a usable report that custody does not know of.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from evidence.store import Store
from pipelines.config import QarinaConfig
from pipelines.review.pages import CLUSTERS_PER_PAGE, ITEMS_PER_PAGE, PageKind, ReviewPages
from pipelines.review.queries import Scope
from pipelines.review.thumbs import STATIC_DIR, PictureRef, picture_bytes, picture_pair

#: What `links.asset` may name: the files of static/ the pages load.
ASSETS = ("qarina.css", "qarina.js", "qarina.svg")


def picture_file(ref: PictureRef, clear: bool) -> str:
    return f"{ref.key}-{'clear' if clear else 'blurred'}.jpg"


class StaticLinks:
    """Relative links between the report's files. Pages live at two depths (the index at
    the top, the rest one folder down), so the site writer says where the page it renders
    next lives (`rendering_in`)."""

    def __init__(self) -> None:
        self._up = ""

    @contextmanager
    def rendering_in(self, folder: str | None) -> Iterator[None]:
        """Links made inside this block start from `folder` (None: the report's top)."""
        self._up = "" if folder is None else "../"
        try:
            yield
        finally:
            self._up = ""

    def page(
        self,
        kind: PageKind,
        *,
        sha256: str | None = None,
        page: int = 1,
        query: str | None = None,
    ) -> str:
        if kind == "backlog":
            return f"{self._up}index.html"
        if kind == "item" and sha256 is not None:
            return f"{self._up}items/{sha256}.html"
        if kind in ("items", "clusters"):
            return f"{self._up}{kind}/page-{page}.html"
        raise ValueError(f"a static report has no {kind} page")

    def picture(self, ref: PictureRef, clear: bool) -> str:
        return f"{self._up}pictures/{picture_file(ref, clear)}"

    def asset(self, name: str) -> str:
        if name not in ASSETS:
            raise ValueError(f"no static file {name}")
        return f"{self._up}static/{name}"


@dataclass(frozen=True)
class SiteSummary:
    pages: int
    pictures: int
    bytes: int
    seconds: float
    #: The items that have a page in the site: what the report lets out of the store.
    items: tuple[str, ...] = ()
    #: Items out of scope that its lists show as near copies (hash, sources, times).
    copies: tuple[str, ...] = ()


class NotEmpty(Exception):
    """The report's folder already holds files (or is a file): a report never mixes with
    what was there (an earlier report's pictures of items out of this one's scope)."""


def write_site(
    store: Store,
    config: QarinaConfig,
    out: Path,
    *,
    blur: bool,
    scope: Scope | None,
    actor: str | None = None,
    items_per_page: int = ITEMS_PER_PAGE,
    clusters_per_page: int = CLUSTERS_PER_PAGE,
) -> SiteSummary:
    """Write the report for `scope` (None: the whole store) into `out`, new or empty.

    With `actor`, each item the report shows records a `report` event by `actor` before the
    report takes its place at `out` (see the module docstring); without it (benchmarks,
    tests) nothing is recorded. Pictures are made on all cores as the item pages ask for
    them, each once however many pages show it (near duplicates show each other's).

    Raises:
        NotEmpty: `out` holds files already.
    """
    started = time.monotonic()
    out = Path(os.path.abspath(out))  # "." has no name to put a hidden folder beside
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise NotEmpty(str(out))
    out.parent.mkdir(parents=True, exist_ok=True)
    work = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:12]}"
    work.mkdir()
    links = StaticLinks()
    pages = ReviewPages(
        store,
        config,
        links,
        blur=blur,
        scope=scope,
        items_per_page=items_per_page,
        clusters_per_page=clusters_per_page,
    )
    try:
        summary = _write_pages(store, work, pages, links, blur)
        if actor is not None:
            _record(store, summary, actor, scope, blur)
        # Over an empty folder, as POSIX rename allows.
        work.rename(out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return dataclasses.replace(summary, seconds=time.monotonic() - started)


def _write_pages(
    store: Store, out: Path, pages: ReviewPages, links: StaticLinks, blur: bool
) -> SiteSummary:
    """Every page and picture of the report into the (new, empty) folder `out`."""
    for folder in ("items", "clusters", "pictures", "static"):
        (out / folder).mkdir()
    for name in ASSETS:
        shutil.copyfile(STATIC_DIR / name, out / "static" / name)
    written = 0

    def write(path: Path, html: str) -> None:
        nonlocal written
        path.write_text(html, encoding="utf-8")
        written += 1

    with links.rendering_in(None):
        write(out / "index.html", pages.backlog())
    with links.rendering_in("items"):
        for number in range(1, pages.page_count("items") + 1):
            write(out / "items" / f"page-{number}.html", pages.items(number))
    with links.rendering_in("clusters"):
        for number in range(1, pages.page_count("clusters") + 1):
            write(out / "clusters" / f"page-{number}.html", pages.clusters(number))
    queued: set[str] = set()
    with (
        ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool,
        links.rendering_in("items"),
    ):
        making = []
        shown: list[str] = []
        for sha256 in pages.item_shas():
            rendered = pages.item_with_pictures(sha256)
            if rendered is None:
                continue
            shown.append(sha256)
            html, refs = rendered
            write(out / "items" / f"{sha256}.html", html)
            for ref in refs:
                if ref.key not in queued:
                    queued.add(ref.key)
                    making.append(pool.submit(_write_picture, store, ref, out / "pictures", blur))
        for made in making:
            made.result()
    total = sum(path.stat().st_size for path in out.rglob("*") if path.is_file())
    return SiteSummary(written, len(queued), total, 0.0, tuple(shown), tuple(pages.listed_copies()))


def _record(
    store: Store, summary: SiteSummary, actor: str, scope: Scope | None, blur: bool
) -> None:
    """A `report` event on every item the report shows, in one transaction: its own items
    ("as": "in scope": pages, pictures, metadata, transcripts) and the near copies its lists
    name from outside its scope ("as": "corroborating copy": hash, kind, sources, times)."""
    common = {
        "scope": scope.label if scope else "the whole store",
        "items": len(summary.items),
        "copies": len(summary.copies),
        "pages": summary.pages,
        "pictures": summary.pictures,
        "blur": blur,
    }
    shown = [(sha, {**common, "as": "in scope"}) for sha in summary.items]
    shown += [(sha, {**common, "as": "corroborating copy"}) for sha in summary.copies]
    store.record_sharing("report", actor, shown)


def _write_picture(store: Store, ref: PictureRef, folder: Path, blur: bool) -> None:
    """Both versions with blurring on (the clear one waits for a click), the clear one only
    with it off (nothing would show the blurred one)."""
    if not blur:
        (folder / picture_file(ref, clear=True)).write_bytes(picture_bytes(store, ref, clear=True))
        return
    blurred, clear = picture_pair(store, ref)
    (folder / picture_file(ref, clear=False)).write_bytes(blurred)
    (folder / picture_file(ref, clear=True)).write_bytes(clear)
