"""`qarina bench report`: what the review report costs on a store, and how fast its pages open.

A report is shared as files, so its size and the time to write it matter to whoever sends it,
and each page must open quickly however large the store: lists are paginated, so the largest
page, not the whole site, is what a reviewer waits for. This writes the report of the
configured store (the whole store, or a request's items) several times into scratch folders
and measures:
- the site: seconds to write it (median), pages, pictures, bytes, the largest page;
- each page kind rendered alone once (backlog, first and last list pages), and a sample of item
  pages (median and slowest), in ms;
- the peer, in the same run: every in-scope item dumped as `qarina show --json` gives it, the
  plain form an analyst would read without the report; the ratio says what the pages and
  pictures add to that.
"""

from __future__ import annotations

import functools
import json
import statistics
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from evidence.store import Store
from pipelines.bench.report import finish, machine_info, median, scratch_folder
from pipelines.config import QarinaConfig
from pipelines.plan import Plan
from pipelines.review.pages import ReviewPages
from pipelines.review.queries import Scope, request_scope
from pipelines.review.site import StaticLinks, write_site
from pipelines.session import open_store

#: Item pages rendered alone, spread evenly over the scope.
_ITEM_SAMPLE = 25


def _ms(render: Callable[[], object]) -> float:
    started = time.perf_counter()
    render()
    return (time.perf_counter() - started) * 1000


def _render_times(pages: ReviewPages, links: StaticLinks) -> dict[str, Any]:
    shas = list(pages.item_shas())
    step = max(1, len(shas) // _ITEM_SAMPLE)
    sample = shas[::step][:_ITEM_SAMPLE]
    with links.rendering_in(None):
        backlog_ms = _ms(pages.backlog)
    with links.rendering_in("items"):
        last_items = pages.page_count("items")
        items_first_ms = _ms(lambda: pages.items(1))
        items_last_ms = _ms(lambda: pages.items(last_items))
        item_ms = [_ms(functools.partial(pages.item, sha)) for sha in sample]
    with links.rendering_in("clusters"):
        last_clusters = pages.page_count("clusters")
        clusters_first_ms = _ms(lambda: pages.clusters(1))
        clusters_last_ms = _ms(lambda: pages.clusters(last_clusters))
    return {
        "backlog_ms": round(backlog_ms, 1),
        "items_page_first_ms": round(items_first_ms, 1),
        "items_page_last_ms": round(items_last_ms, 1),
        "clusters_page_first_ms": round(clusters_first_ms, 1),
        "clusters_page_last_ms": round(clusters_last_ms, 1),
        "item_page_median_ms": round(statistics.median(item_ms), 1) if item_ms else None,
        "item_page_max_ms": round(max(item_ms), 1) if item_ms else None,
        "item_pages_timed": len(item_ms),
    }


def _site_figures(folder: Path) -> dict[str, Any]:
    pages = list(folder.rglob("*.html"))
    pictures = list((folder / "pictures").iterdir())
    largest = max(pages, key=lambda path: path.stat().st_size)
    return {
        "pages": len(pages),
        # Blurred and clear versions: two files a picture with blurring on.
        "picture_files": len(pictures),
        "bytes": sum(path.stat().st_size for path in folder.rglob("*") if path.is_file()),
        "html_bytes": sum(path.stat().st_size for path in pages),
        "picture_bytes": sum(path.stat().st_size for path in pictures),
        "largest_page_bytes": largest.stat().st_size,
        "largest_page": str(largest.relative_to(folder)),
    }


def _dump_json(store: Store, plan: Plan, shas: list[str], target: Path) -> Counter[str]:
    """The peer: every item as `qarina show --json` gives it; returns the items' kinds."""
    current = plan.current_keys()
    kinds: Counter[str] = Counter()
    with target.open("w", encoding="utf-8") as dump:
        for sha in shas:
            shown = store.show(sha, current) or {}
            kinds[shown.get("kind") or "unknown"] += 1
            dump.write(json.dumps(shown, ensure_ascii=False) + "\n")
    return kinds


def bench_review_report(
    config: QarinaConfig, output: Path, *, runs: int, request: str | None
) -> dict[str, Any]:
    store = open_store(config)
    try:
        scope: Scope | None = None if request is None else request_scope(store.database, request)
        links = StaticLinks()
        pages = ReviewPages(store, config, links, blur=True, scope=scope)
        shas = list(pages.item_shas())
        kinds: Counter[str] = Counter()
        site_s: list[float] = []
        peer_s: list[float] = []
        figures: dict[str, Any] = {}
        with scratch_folder(config) as scratch:
            for run in range(runs):
                folder = scratch / f"site-{run}"
                summary = write_site(store, config, folder, blur=True, scope=scope)
                site_s.append(summary.seconds)
                figures = _site_figures(folder)
                started = time.perf_counter()
                kinds = _dump_json(store, pages.plan, shas, scratch / f"show-{run}.jsonl")
                peer_s.append(time.perf_counter() - started)
            render = _render_times(pages, links)
    finally:
        store.close()
    site_median, peer_median = median(site_s), median(peer_s)
    result: dict[str, Any] = {
        "benchmark": "report",
        "machine": machine_info(config.data_dir),
        "store": {"items": len(shas), "by_kind": dict(kinds), "request": request},
        "runs": runs,
        "site": {
            "seconds_median": round(site_median, 2),
            "seconds_all": [round(value, 2) for value in site_s],
            "items_per_s": round(len(shas) / site_median, 1) if site_median else None,
            **figures,
        },
        "render": render,
        "peer": {
            "name": "show --json of every item",
            "seconds_median": round(peer_median, 2),
            "report_over_peer": round(site_median / peer_median, 2) if peer_median else None,
        },
    }
    headline = (
        f"report of {len(shas)} items: {site_median:.1f} s (median of {runs}),"
        f" {figures.get('pages')} pages, {figures.get('picture_files')} picture files,"
        f" {figures.get('bytes', 0) / 1e6:.1f} MB, largest page"
        f" {figures.get('largest_page_bytes', 0) / 1e3:.0f} kB; item page"
        f" {render['item_page_median_ms']} ms; show --json of every item {peer_median:.1f} s"
        f" ({result['peer']['report_over_peer']}x)"
    )
    return finish(result, output, headline)
