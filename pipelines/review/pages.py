"""The review pages: one renderer for the static report (`qarina report`) and for the live
pages under `/ui` of the HTTP service. Only the links differ (`Links`): relative files on
disk, or URLs of the service.

The pages protect the people who read them. Every picture is a blurred greyscale thumbnail
made on the server; the clear version's URL waits in a data attribute and is fetched only
when the reviewer selects the picture (static/qarina.js swaps it in; nothing else on the
pages runs script). Where a reviewer labelled any copy in an item's near-duplicate cluster
`graphic`, no picture of it is offered at all: the page says who saw it and when, and links
to that item. Templates escape everything they are given (Jinja2 autoescape), since file
names, metadata and transcripts come from the evidence, and may come from an adversary.

Pages for a scope (a request's items) still list the near copies of those items that other
requests brought in, since repeat postings corroborate each other: by hash, kind, sources,
first sight and the link's distance and times, but never by a picture, which would let
another request's evidence out with this one's.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import jinja2

from evidence import custody, matches
from evidence.db import Database, utc_now
from evidence.reviews import (
    REVIEWED_KINDS,
    Review,
    cluster_members,
    cluster_reviews,
    cluster_reviews_many,
    unreviewed_count,
)
from evidence.store import Store
from pipelines.config import QarinaConfig
from pipelines.dedup import reports as dedup_reports
from pipelines.plan import Plan
from pipelines.review import queries
from pipelines.review.charts import hourly_chart
from pipelines.review.queries import STATES, Scope
from pipelines.review.thumbs import PictureRef
from pipelines.search import search_transcripts
from workers.keyframes import KeyframesStage

__all__ = ["CONTENT_SECURITY_POLICY", "Links", "PageKind", "PictureRef", "ReviewPages", "Scope"]

PageKind = Literal["backlog", "items", "clusters", "item", "search"]

TEMPLATES_DIR = Path(__file__).parent / "templates"

#: Rows a list page holds: a page of 10,000 items would take seconds to open and scroll.
ITEMS_PER_PAGE = 100
CLUSTERS_PER_PAGE = 50
SEARCH_PER_PAGE = 50
#: Near duplicates an item's page shows side by side, nearest first: a picture reposted 300
#: times would otherwise make a page of 600 pictures. The clusters page lists every copy.
NEAR_SHOWN = 50
#: How far back the backlog's throughput chart looks.
THROUGHPUT_DAYS = 7
#: Languages written right to left (Whisper's codes): their text is laid out that way.
RTL_LANGUAGES = frozenset({"ar", "fa", "he", "ps", "sd", "ug", "ur", "yi"})
#: What the pages may load and run: their own files only, no inline script or style, no
#: plugin, no <base> to redirect relative links, forms sent only to the site. Pages carry it
#: in a <meta> element, which Chromium enforces on a report opened from disk as well ('self'
#: matches the report's own files there); the service also sends it as a header, with
#: `frame-ancestors`, which a <meta> element cannot carry.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self'; style-src 'self'; script-src 'self';"
    " base-uri 'none'; form-action 'self'; object-src 'none'"
)


class Links(Protocol):
    """How pages link to each other, to pictures and to their script and style sheet:
    relative files in a static report, `/ui/...` in the live service."""

    def page(
        self,
        kind: PageKind,
        *,
        sha256: str | None = None,
        page: int = 1,
        query: str | None = None,
    ) -> str: ...

    def picture(self, ref: PictureRef, clear: bool) -> str: ...

    def asset(self, name: str) -> str:
        """The URL of a file of static/: "qarina.css", "qarina.js" or "qarina.svg" (the
        pages' icon, named so that browsers do not ask for /favicon.ico)."""
        ...


def clock(seconds: float | None) -> str:
    """A time in a recording as mm:ss.s (h:mm:ss.s past an hour)."""
    if seconds is None:
        return ""
    tenths = round(seconds * 10)
    minutes, tenth_seconds = divmod(tenths, 600)
    hours, minutes = divmod(minutes, 60)
    text = f"{minutes:02d}:{tenth_seconds // 10:02d}.{tenth_seconds % 10}"
    return f"{hours}:{text}" if hours else text


def _when(value: dt.datetime | str | None) -> str:
    if value is None:
        return ""
    moment = dt.datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _day(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d")


def _size(size_bytes: int) -> str:
    if size_bytes < 1024:
        return f"{size_bytes:,} bytes"
    amount = size_bytes / 1024
    for unit in ("KiB", "MiB"):
        if amount < 1024:
            return f"{amount:,.1f} {unit}"
        amount /= 1024
    return f"{amount:,.1f} GiB"


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=1, ensure_ascii=False, sort_keys=True, default=str)


def page_window(page: int, pages: int, around: int = 3) -> list[int | None]:
    """The page numbers a pager links: the first, the last, and those near `page`; None
    stands for the numbers left out between them."""
    shown = sorted({1, pages, *range(max(1, page - around), min(pages, page + around) + 1)})
    window: list[int | None] = []
    for previous, number in zip([0, *shown], shown, strict=False):
        if previous and number - previous > 1:
            window.append(None)
        window.append(number)
    return window


_ENVIRONMENT = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
    # Everything the pages show may come from the evidence: escape it all, always.
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_ENVIRONMENT.globals.update(
    page_window=page_window, content_security_policy=CONTENT_SECURITY_POLICY
)
_ENVIRONMENT.filters.update(
    clock=clock, when=_when, day=_day, size=_size, short=lambda sha: sha[:12], pretty=_pretty
)


@dataclass(frozen=True)
class Exposure:
    """What the reviews of an item's near-duplicate cluster let its page show.

    Each reviewed item's newest label is its current one (a later review corrects an
    earlier one); a picture is withheld when any copy's current label is graphic.
    """

    labels: list[Review]

    @classmethod
    def of(cls, reviews: Sequence[Review]) -> Exposure:
        """From a cluster's reviews, newest first (as `cluster_reviews` gives them)."""
        current: dict[str, Review] = {}
        for review in reviews:
            current.setdefault(review.sha256, review)
        return cls(list(current.values()))

    @property
    def graphic(self) -> Review | None:
        return next((review for review in self.labels if review.label == "graphic"), None)


def withholding_review(database: Database, sha256: str) -> Review | None:
    """The graphic label that withholds the item's pictures, if any copy in its cluster
    carries one: what a server of pictures checks before it answers a URL for one (the
    pages never name such a URL, but a URL can be typed or kept)."""
    return Exposure.of(cluster_reviews(database, sha256)).graphic


@dataclass(frozen=True)
class PictureView:
    """A picture on a page: the blurred thumbnail first (None with blurring off), the clear
    version on request."""

    ref: PictureRef
    caption: str
    blurred_url: str | None
    clear_url: str


@dataclass(frozen=True)
class Member:
    """An item as a list of duplicates shows it."""

    sha256: str
    url: str | None  # its page, when it is in scope
    kind: str | None
    sources: list[str]
    arrivals: int
    first_seen: dt.datetime | None


@dataclass(frozen=True)
class NearDuplicate:
    """One stored link from the item to another, with both pictures side by side: `mine` is
    the video's keyframe nearest the link's time (None for a photo, shown once above the
    list); `theirs` is None when withheld, or when the other item is out of scope."""

    other: Member
    kind: str
    algorithm: str
    distance: float
    time_s: float | None
    other_time_s: float | None
    offset_s: float | None
    speed: float | None
    mine: PictureView | None
    theirs: PictureView | None


@dataclass(frozen=True)
class Segment:
    start: float
    end: float
    text: str
    flags: list[str]


@dataclass(frozen=True)
class Transcript:
    status: str
    skip_reason: str | None
    language: str | None
    direction: str
    model: str | None
    segments: list[Segment] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)


def _direction(language: str | None) -> str:
    if language is None:
        return "auto"
    return "rtl" if language.split("-")[0] in RTL_LANGUAGES else "ltr"


def _transcript(result: dict[str, Any] | None) -> Transcript | None:
    if result is None:
        return None
    data = result["data"] if result["status"] == "ok" else {}
    language = data.get("language")
    return Transcript(
        status=result["status"],
        skip_reason=result["skip_reason"],
        language=language,
        direction=_direction(language),
        model=(data.get("model") or {}).get("name"),
        segments=[
            Segment(float(s["start"]), float(s["end"]), s["text"], list(s.get("flags") or []))
            for s in data.get("segments", [])
        ],
        flags=list(data.get("flags") or []),
    )


def _still(
    sha256: str, kind: str | None, at: float | None, frames: Sequence[queries.Frame]
) -> tuple[PictureRef, str] | None:
    """The picture that stands for an item at a time: a photo itself, or the video's
    keyframe nearest `at` (its first without a time); None for items with no picture."""
    if kind == "photo":
        return PictureRef(sha256, None), "photo"
    if not frames:
        return None
    frame = min(frames, key=lambda frame: abs(frame.t - (at or 0.0)))
    caption = f"keyframe at {clock(frame.t)}"
    if at is not None and abs(frame.t - at) >= 0.05:
        caption += f" (nearest to {clock(at)})"
    return PictureRef(sha256, frame.artifact_sha256), caption


def _pages(count: int, per_page: int) -> int:
    return max(1, math.ceil(count / per_page))


@dataclass(frozen=True)
class ClusterReading:
    """The near-duplicate clusters with a member in scope, largest first, read from the links
    up to id `up_to`, and where each member's cluster stands in that order."""

    up_to: int
    groups: list[list[str]]
    position: dict[str, int]

    @classmethod
    def read(cls, database: Database, scope: Scope | None) -> ClusterReading:
        # Read the newest id first: links added meanwhile make the next reading newer still.
        up_to = queries.newest_link_id(database)
        groups = [
            group
            for group in dedup_reports.clusters(matches.all_links(database))
            if scope is None or any(sha in scope.shas for sha in group)
        ]
        position = {sha: number for number, group in enumerate(groups) for sha in group}
        return cls(up_to, groups, position)


class ReviewPages:
    """Renders each page as HTML text for the items in `scope` (None: the whole store).

    `live` adds the transcript search box (the service answers it; a static report cannot).
    A static report is one moment's snapshot, so its pages share one reading of the
    clusters. Live pages share one too, kept while no link is added (links are never changed
    or removed): reading them all is a scan of the whole `matches` table, which the backlog
    and clusters pages would otherwise repeat on every click, on the service's threads.
    """

    def __init__(
        self,
        store: Store,
        config: QarinaConfig,
        links: Links,
        *,
        blur: bool = True,
        scope: Scope | None = None,
        live: bool = False,
        items_per_page: int = ITEMS_PER_PAGE,
        clusters_per_page: int = CLUSTERS_PER_PAGE,
    ) -> None:
        self.store, self.config, self.links = store, config, links
        self.blur, self.scope, self.live = blur, scope, live
        self.items_per_page, self.clusters_per_page = items_per_page, clusters_per_page
        self.plan = Plan.default(settings=config)
        self.current = self.plan.current_keys()
        self.planned = frozenset(key for keys in self.current.values() for key in keys)
        self.keyframes_keys = self.plan.keys(KeyframesStage.name)
        self._clusters_reading: ClusterReading | None = None
        # One reading at a time: requests that arrive during a scan wait for its result.
        self._clusters_lock = threading.Lock()

    @property
    def database(self) -> Database:
        return self.store.database

    # --- what pages share -------------------------------------------------------------------

    def in_scope(self, sha256: str) -> bool:
        return self.scope is None or sha256 in self.scope.shas

    def _clusters(self) -> ClusterReading:
        """The clusters with a member in scope: the static report's one reading, or the live
        pages' latest, read again only once a link was added since."""
        with self._clusters_lock:
            reading = self._clusters_reading
            if reading is None or (
                self.live and queries.newest_link_id(self.database) != reading.up_to
            ):
                reading = ClusterReading.read(self.database, self.scope)
                self._clusters_reading = reading
            return reading

    def item_url(self, sha256: str) -> str | None:
        """The item's page, when this set of pages has one."""
        return self.links.page("item", sha256=sha256) if self.in_scope(sha256) else None

    def _render(self, template: str, title: str, **context: Any) -> str:
        return _ENVIRONMENT.get_template(template).render(
            links=self.links,
            title=title,
            blur=self.blur,
            live=self.live,
            scope_label=self.scope.label if self.scope else "the whole store",
            generated_at=utc_now(),
            item_url=self.item_url,
            query=context.pop("query", None),
            **context,
        )

    def _picture(self, ref: PictureRef, caption: str) -> PictureView:
        return PictureView(
            ref,
            caption,
            self.links.picture(ref, clear=False) if self.blur else None,
            self.links.picture(ref, clear=True),
        )

    def _members(self, shas: Sequence[str]) -> dict[str, Member]:
        if not shas:
            return {}
        summaries = matches.summaries(self.database, shas)
        seen = queries.first_seen(self.database, shas)
        found = {}
        for sha in shas:
            summary = summaries.get(sha)
            found[sha] = Member(
                sha,
                self.item_url(sha),
                summary.kind if summary else None,
                summary.sources if summary else [],
                summary.acquisitions if summary else 0,
                seen.get(sha),
            )
        return found

    # --- backlog ----------------------------------------------------------------------------

    def _unreviewed(self) -> int:
        if self.scope is None or self.scope.request_ref is not None:
            return unreviewed_count(self.database, self.scope.request_ref if self.scope else None)
        shas = sorted(self.scope.shas)
        kinds = matches.summaries(self.database, shas)
        reviews = cluster_reviews_many(self.database, shas)
        return sum(
            1
            for sha in shas
            if sha in kinds and kinds[sha].kind in REVIEWED_KINDS and not reviews[sha]
        )

    def backlog(self) -> str:
        """The index: items by kind and state, failures by reason, jobs ended per hour."""
        counts = queries.kinds_and_states(self.database, self.planned, self.scope)
        states = [
            state
            for state in STATES
            if state in STATES[:3] or any(seen == state for _, seen in counts)
        ]
        kinds = sorted({kind for kind, _ in counts})
        total = sum(counts.values())
        now = utc_now()
        since = now - dt.timedelta(days=THROUGHPUT_DAYS)
        chart = hourly_chart(
            queries.finished_per_hour(self.database, self.scope, since), now, THROUGHPUT_DAYS
        )
        return self._render(
            "backlog.html",
            "Backlog",
            states=states,
            rows=[(kind, [counts.get((kind, state), 0) for state in states]) for kind in kinds],
            totals=[sum(counts.get((kind, state), 0) for kind in kinds) for state in states],
            total=total,
            failures=queries.failures(self.database, self.planned, self.scope),
            chart=chart,
            days=THROUGHPUT_DAYS,
            unreviewed=self._unreviewed(),
            # Every item in scope has one (kind, state): no second count of the items.
            item_pages=_pages(total, self.items_per_page),
            cluster_count=len(self._clusters().groups),
        )

    # --- lists ------------------------------------------------------------------------------

    def page_count(self, kind: Literal["items", "clusters"]) -> int:
        if kind == "items":
            return _pages(queries.count_items(self.database, self.scope), self.items_per_page)
        return _pages(len(self._clusters().groups), self.clusters_per_page)

    def items(self, page: int = 1) -> str:
        """One page of the items in scope, in the order they were first seen."""
        offset = (page - 1) * self.items_per_page
        rows = queries.item_rows(
            self.database, self.planned, self.scope, offset, self.items_per_page
        )
        total = queries.count_items(self.database, self.scope)
        shas = [row.sha256 for row in rows]
        summaries = matches.summaries(self.database, shas)
        reviews = cluster_reviews_many(self.database, shas)
        return self._render(
            "items.html",
            f"Items, page {page}",
            rows=[
                (row, summaries.get(row.sha256), Exposure.of(reviews[row.sha256])) for row in rows
            ],
            page=page,
            pages=_pages(total, self.items_per_page),
            total=total,
            first_number=offset + 1,
        )

    def clusters(self, page: int = 1) -> str:
        """One page of near-duplicate clusters: every copy with its sources and when it was
        first seen, earliest first, since repeat postings corroborate each other."""
        every = self._clusters().groups
        start = (page - 1) * self.clusters_per_page
        chunk = every[start : start + self.clusters_per_page]
        members = self._members([sha for group in chunk for sha in group])
        reviews = cluster_reviews_many(self.database, [group[0] for group in chunk])
        far_past = dt.datetime.min.replace(tzinfo=dt.UTC)
        rows = [
            (
                start + number + 1,
                sorted(
                    (members[sha] for sha in group),
                    key=lambda member: (member.first_seen or far_past, member.sha256),
                ),
                Exposure.of(reviews[group[0]]),
            )
            for number, group in enumerate(chunk)
        ]
        return self._render(
            "clusters.html",
            f"Clusters, page {page}",
            rows=rows,
            page=page,
            pages=_pages(len(every), self.clusters_per_page),
            total=len(every),
        )

    def cluster_url(self, sha256: str) -> str | None:
        """The item's cluster where the clusters pages list it (None when it has none)."""
        number = self._clusters().position.get(sha256)
        if number is None:
            return None
        page = self.links.page("clusters", page=number // self.clusters_per_page + 1)
        return f"{page}#cluster-{number + 1}"

    def _cluster_size(self, sha256: str) -> int:
        """Items in the item's cluster, itself included: from the report's one reading of the
        clusters, or live by a walk from the item (a link added since the live reading would
        otherwise cost a scan of every link for one item's page)."""
        if self.live:
            return len(cluster_members(self.database, sha256))
        reading = self._clusters()
        number = reading.position.get(sha256)
        return 1 if number is None else len(reading.groups[number])

    def listed_copies(self) -> list[str]:
        """The items out of scope that the pages list as near copies of items in scope (by
        hash, sources and times, never by a picture); none for the whole store."""
        if self.scope is None:
            return []
        return sorted(
            {sha for group in self._clusters().groups for sha in group if not self.in_scope(sha)}
        )

    # --- one item ---------------------------------------------------------------------------

    def item(self, sha256: str) -> str | None:
        """The item's page; None when the store has no such item or it is out of scope."""
        rendered = self.item_with_pictures(sha256)
        return None if rendered is None else rendered[0]

    def item_with_pictures(self, sha256: str) -> tuple[str, list[PictureRef]] | None:
        """The item's page and the pictures it shows, from one reading of the store."""
        if not self.in_scope(sha256):
            return None
        shown = self.store.show(sha256, self.current)
        if shown is None:
            return None
        exposure = Exposure.of(cluster_reviews(self.database, sha256))
        links = shown["matches"]  # nearest first
        nearest = links[:NEAR_SHOWN]
        others = list(dict.fromkeys(link["other"] for link in nearest))
        members = self._members(others)
        frames = queries.keyframes(self.database, self.keyframes_keys, [sha256, *others])
        withheld = exposure.graphic is not None

        def still(sha: str, kind: str | None, at: float | None) -> PictureView | None:
            # No picture of a withheld cluster, nor of an item this set of pages leaves out.
            if withheld or not self.in_scope(sha):
                return None
            found = _still(sha, kind, at, frames.get(sha, []))
            return None if found is None else self._picture(*found)

        photo = shown["kind"] == "photo"
        sheet = []
        if not withheld and photo:
            sheet = [self._picture(PictureRef(sha256, None), "photo")]
        elif not withheld:
            sheet = [
                self._picture(PictureRef(sha256, frame.artifact_sha256), clock(frame.t))
                for frame in frames.get(sha256, [])
            ]
        near = [
            NearDuplicate(
                other=members[link["other"]],
                kind=link["kind"],
                algorithm=link["algorithm"],
                distance=link["distance"],
                time_s=link["time_s"],
                other_time_s=link["other_time_s"],
                offset_s=link["details"].get("offset_s"),
                speed=link["details"].get("speed"),
                # A photo is the same picture for every link: the list shows it once.
                mine=None if photo else still(sha256, shown["kind"], link["time_s"]),
                theirs=still(link["other"], members[link["other"]].kind, link["other_time_s"]),
            )
            for link in nearest
        ]
        # Copies linked through other copies count too: the clusters page lists them all.
        more = self._cluster_size(sha256) - 1 - len(others) if links else 0
        views = [*sheet, *(view for pair in near for view in (pair.mine, pair.theirs) if view)]
        with self.database.reader.connect() as connection:
            trail = custody.item_trail(connection, sha256)
        metadata = shown["results"].get("metadata")
        html = self._render(
            "item.html",
            f"Item {sha256[:12]}",
            item=shown,
            first_seen=queries.first_seen(self.database, [sha256]).get(sha256),
            sources=sorted({arrival["source"] for arrival in shown["acquisitions"]}),
            exposure=exposure,
            sheet=sheet,
            near=near,
            links_count=len(links),
            this_photo=sheet[0] if photo and sheet and near else None,
            more_copies=max(0, more),
            cluster_url=self.cluster_url(sha256) if more > 0 else None,
            probe=shown["results"].get("probe"),
            metadata=metadata["data"] if metadata and metadata["status"] == "ok" else None,
            transcript=_transcript(shown["results"].get("transcript")),
            trail=trail,
        )
        return html, list({view.ref.key: view.ref for view in views}.values())

    # --- search -----------------------------------------------------------------------------

    def search(self, query: str, page: int = 1) -> str:
        """Transcript segments holding the query's words, in scope, a page at a time."""
        wanted = page * SEARCH_PER_PAGE + 1
        # The language transcripts are made in, unless each one's is detected.
        chosen = self.config.transcript_language
        language = None if chosen == "auto" else chosen
        hits = (
            [
                hit
                for hit in search_transcripts(self.store, self.plan, query, limit=wanted)
                if self.in_scope(hit["sha256"])
            ]
            if query.strip()
            else []
        )
        start = (page - 1) * SEARCH_PER_PAGE
        return self._render(
            "search.html",
            f"Search: {query}" if query.strip() else "Search",
            query=query,
            hits=hits[start : start + SEARCH_PER_PAGE],
            page=page,
            more=len(hits) > start + SEARCH_PER_PAGE,
            language=language,
            direction=_direction(language),
        )

    # --- for the static site ----------------------------------------------------------------

    def item_shas(self) -> list[str]:
        """Every item in scope, in the order the items list shows them."""
        return queries.item_shas(self.database, self.scope)
