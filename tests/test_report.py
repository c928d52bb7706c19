"""The review pages and `qarina report`: a static site that opens from disk, protects its
reader (blurred server-made thumbnails, graphic pictures never offered again), and shows what
the store knows of each item."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import re
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from html import unescape
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter
from typer.testing import CliRunner

from evidence import custody, matches
from evidence.reviews import record_review
from evidence.store import Store
from pipelines.api.ui import LiveLinks
from pipelines.cli import app
from pipelines.config import QarinaConfig
from pipelines.ingest import ingest_paths
from pipelines.plan import Plan
from pipelines.review import pages as review_pages
from pipelines.review import queries
from pipelines.review.charts import hourly_chart
from pipelines.review.pages import (
    CONTENT_SECURITY_POLICY,
    PictureRef,
    ReviewPages,
    clock,
    page_window,
    withholding_review,
)
from pipelines.review.queries import items_scope
from pipelines.review.site import StaticLinks, write_site
from pipelines.review.thumbs import find_picture, picture_bytes
from pipelines.runner import run_plan
from pipelines.samples import audio, hostile, photos, videos
from pipelines.session import open_matcher
from tests.flows import DEFAULT_KEYS, ingest_and_run, sqlite_config_in
from workers.base import Kind, StageInput, StageOutput, StageSkipped
from workers.transcript import ModelRef, Segment, TranscriptResult, TranscriptStage

SPOKEN = "السلام عليكم"
INVENTED = "شكرا لكم على المشاهدة"
LATITUDE, LONGITUDE = 36.2021, 37.1343


class CannedTranscript(TranscriptStage):
    """The transcript stage under its real key, answering with a fixed Arabic transcript (one
    sound segment, one flagged as a known hallucination): what pages do with a transcript is
    tested here, not what Whisper hears in synthetic speech, and no model is loaded."""

    def setup(self, env: object = None) -> None:
        """Nothing to load."""

    def run_many(
        self, items: Sequence[tuple[StageInput, Path]]
    ) -> list[StageOutput[TranscriptResult] | Exception]:
        return [self._canned(item) for item, _ in items]

    def _canned(self, item: StageInput) -> StageOutput[TranscriptResult] | Exception:
        if item.kind is not Kind.AUDIO:
            return StageSkipped("no_audio")
        segments = [
            Segment(0.0, 1.2, SPOKEN, -0.3, 0.05, 1.1),
            Segment(61.25, 63.0, INVENTED, -1.4, 0.2, 1.3, ["known_hallucination"]),
        ]
        result = TranscriptResult(
            language="ar",
            language_probability=None,
            model=ModelRef("canned", "0" * 64),
            device="cpu",
            compute_type="int8",
            mode="sequential",
            duration_s=63.0,
            speech_s=2.9,
            segments=segments,
            text=SPOKEN,
            flagged_segments=1,
            flags=[],
        )
        return StageOutput(result)


@dataclass(frozen=True)
class Processed:
    """A processed store and the item of each file, by file name."""

    config: QarinaConfig
    store: Store
    items: dict[str, str]


def _process(config: QarinaConfig, folder: Path) -> Processed:
    """A photo with GPS and a smaller copy of it from another source, the photo's own bytes
    again from that source, a video with cuts and a still taken from it, a voice note, and
    a file that is not media; the first source's files arrive for request RFA-7."""
    first, second = folder / "ngo-a", folder / "ngo-b"
    first.mkdir()
    second.mkdir()
    photo = first / "street.jpg"
    photos.scene(7, (1024, 768)).save(
        photo, "JPEG", quality=90, exif=photos.exif_bytes(gps=(LATITUDE, LONGITUDE, 390.0))
    )
    with Image.open(photo) as image:
        image.resize((400, 300)).save(second / "street-small.jpg", quality=60)
    shutil.copyfile(photo, second / "street-again.jpg")
    videos.video_of_scenes(first / "scenes.mp4", list(range(50, 55)))
    photos.scene_jpeg(second / "still.jpg", seed=52)
    audio.speech(first / "note.opus", SPOKEN, voice_format="ogg-opus")
    hostile.html_page(first / "page.mp4")
    store = Store.open(config.db_url, config.blob_root)
    default = Plan.default(settings=config)
    transcript = CannedTranscript(default.stages[TranscriptStage.name].config)
    plan = Plan({**default.stages, TranscriptStage.name: transcript}, default.reads)
    ingest_paths(store, plan, config, [first], source="NGO-A", request_ref="RFA-7")
    ingest_paths(store, plan, config, [second], source="NGO-B")
    run_plan(store, plan, config)
    open_matcher(config, store, default).update("test")
    names = {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in [*first.iterdir(), *second.iterdir()]
    }
    return Processed(config, store, names)


@pytest.fixture
def processed(config: QarinaConfig, tmp_path: Path) -> Iterator[Processed]:
    """A store of its own, on each backend, for a test that writes to it (reviews)."""
    made = _process(config, tmp_path)
    yield made
    made.store.close()


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[Processed]:
    """One SQLite store for the tests that only read."""
    folder = tmp_path_factory.mktemp("report")
    config = sqlite_config_in(folder / "data", models_dir)
    made = _process(config, folder)
    yield made
    made.store.close()


# --- reading pages back -------------------------------------------------------------------

#: Elements with no end tag.
_VOID = frozenset({"meta", "link", "img", "input", "br", "hr", "source", "wbr"})


class _Page(HTMLParser):
    """A page as the tests look at it: every URL it names, its pictures, the text inside
    elements by attribute, any script or style of its own, and whether its tags nest
    properly."""

    def __init__(self, path: Path, html: str | None = None) -> None:
        super().__init__()
        self.path = path
        self.urls: list[str] = []
        self.image_sources: list[str] = []
        self.clear_on_request: list[str] = []
        self.text_in: dict[str, str] = {}
        self.misnested: list[str] = []
        #: Script or style the page carries itself, which its policy (and the service's) must
        #: refuse: `<script>` bodies, `<style>` elements, `style=` and `on*=` attributes,
        #: `javascript:` URLs.
        self.inline_code: list[str] = []
        self._open: list[tuple[str, dict[str, str]]] = []
        self.feed(path.read_text(encoding="utf-8") if html is None else html)
        self.close()
        if self._open:
            self.misnested.append(f"left open: {[tag for tag, _ in self._open]}")

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = {name: value or "" for name, value in attrs}
        self.urls += [named[name] for name in ("src", "href", "action") if name in named]
        self.inline_code += [
            f"<{tag} {name}=...>"
            for name, value in named.items()
            if name == "style"
            or name.startswith("on")
            or re.sub(r"[\s\x00-\x1f]", "", value).lower().startswith("javascript:")
        ]
        if tag == "style":
            self.inline_code.append("<style>")
        if tag == "img":
            self.image_sources.append(named["src"])
        if "data-clear" in named:
            self.clear_on_request.append(named["data-clear"])
        if tag not in _VOID:
            self._open.append((tag, named))

    def handle_endtag(self, tag: str) -> None:
        if not self._open or self._open[-1][0] != tag:
            self.misnested.append(f"</{tag}> closes {self._open[-1:]}")
            return
        self._open.pop()

    def handle_data(self, data: str) -> None:
        if self._open and self._open[-1][0] == "script" and data.strip():
            self.inline_code.append(f"<script>{data.strip()[:40]}")
        for _, attrs in self._open:
            keys = [f"class={token}" for token in attrs.get("class", "").split()]
            if "lang" in attrs:
                keys.append(f"lang={attrs['lang']} dir={attrs.get('dir')}")
            for key in keys:
                self.text_in[key] = self.text_in.get(key, "") + data

    def local_files(self) -> list[Path]:
        """The files its relative links and pictures name (fragments and queries aside)."""
        return [
            (self.path.parent / url.split("#")[0]).resolve()
            for url in [*self.urls, *self.clear_on_request]
            if url.split("#")[0]
        ]


def _pages(site: Path) -> dict[str, _Page]:
    return {str(path.relative_to(site)): _Page(path) for path in sorted(site.rglob("*.html"))}


def _edges(image: Image.Image) -> float:
    """How much fine detail a picture holds: the variance of its edge filter's response."""
    grey = np.asarray(image.convert("L").filter(ImageFilter.FIND_EDGES), dtype=float)
    return float(grey[2:-2, 2:-2].var())


# --- the static report ----------------------------------------------------------------------


def test_report_of_the_whole_store(processed: Processed, tmp_path: Path) -> None:
    site = tmp_path / "site"
    result = CliRunner(env={"QARINA_DB_URL": processed.config.db_url}).invoke(
        app, ["--data", str(processed.config.data_dir), "report", "--out", str(site)]
    )
    assert result.exit_code == 0, result.output
    items = processed.items
    item_count = len(set(items.values()))
    pages = _pages(site)
    expected = {"index.html", "items/page-1.html", "clusters/page-1.html"}
    expected |= {f"items/{sha}.html" for sha in items.values()}
    assert set(pages) == expected
    assert re.search(rf"wrote {len(expected)} pages and \d+ pictures \(.* MB\) in", result.stdout)
    for name, page in pages.items():
        assert not page.misnested, (name, page.misnested)
        assert not page.inline_code, (name, page.inline_code)
        # Nothing leaves the folder: every link is relative, every file it names is there.
        assert not [url for url in page.urls if re.match(r"[a-z]+:|//", url)], name
        missing = [path for path in page.local_files() if not path.is_file()]
        assert not missing, (name, missing)
        # Blurring is on: no picture is shown clearly before it is asked for.
        assert all(source.endswith("-blurred.jpg") for source in page.image_sources), name
        assert all(url.endswith("-clear.jpg") for url in page.clear_on_request), name
    for asset in ("qarina.css", "qarina.js"):
        text = (site / "static" / asset).read_text()
        assert not re.search(r"https?:|url\(|@import|@font-face", text), asset

    index = (site / "index.html").read_text()
    assert "<svg" in index and 'class="bar"' in index and "jobs ended per hour" in index
    assert "unsupported_type" in index  # the page that is not a video failed its probe
    assert f"{item_count} items" in index

    database = processed.store.database
    planned = frozenset(key for keys in DEFAULT_KEYS.values() for key in keys)
    assert queries.kinds_and_states(database, planned, None) == {
        ("audio", "processed"): 1, ("other", "failed"): 1, ("photo", "processed"): 3,
        ("video", "processed"): 1,
    }  # fmt: skip
    assert set(queries.kinds_and_states(database, frozenset(), None)) == {
        (kind, "superseded only") for kind in ("audio", "other", "photo", "video")
    }
    ended = sum(
        count
        for stage in processed.store.status().stages
        for state, count in stage.counts.items()
        if state in ("done", "failed", "dead")
    )
    hours = queries.finished_per_hour(database, None, dt.datetime.now(dt.UTC) - dt.timedelta(1))
    assert sum(hours.values()) == ended and all(hour.minute == 0 for hour in hours)

    note = pages[f"items/{items['note.opus']}.html"]
    assert SPOKEN in note.text_in["lang=ar dir=rtl"]
    assert INVENTED in note.text_in["class=doubtful"]
    assert "known_hallucination" in note.text_in["class=doubtful"]
    assert SPOKEN not in note.text_in["class=doubtful"]
    assert "01:01.2" in note.text_in["class=doubtful"]
    assert "01:03.0" in note.text_in["class=doubtful"]

    photo = pages[f"items/{items['street.jpg']}.html"]
    photo_text = (site / f"items/{items['street.jpg']}.html").read_text()
    assert "NGO-A" in photo_text and "NGO-B" in photo_text  # the same bytes from both
    assert "street-again.jpg" in photo_text and "photo-photo" in photo_text
    assert f"items/{items['street-small.jpg']}.html" in " ".join(photo.urls)
    assert str(LATITUDE) in photo_text
    video = (site / f"items/{items['scenes.mp4']}.html").read_text()
    assert "keyframe-photo" in video and "00:02.0" in video
    clusters = (site / "clusters/page-1.html").read_text()
    assert items["still.jpg"][:12] in clusters and items["street-small.jpg"][:12] in clusters

    # The pictures: blurred ones greyscale and without detail, clear ones downscaled and
    # stripped of the original's metadata.
    blurred = sorted((site / "pictures").glob("*-blurred.jpg"))
    assert len(blurred) == len(list((site / "pictures").glob("*-clear.jpg"))) >= 6
    for path in blurred:
        with (
            Image.open(path) as thumb,
            Image.open(str(path).replace("-blurred", "-clear")) as clear,
        ):
            assert thumb.mode == "L" and max(thumb.size) <= 160
            assert max(clear.size) <= 960 and not clear.getexif()
            same_size = clear.convert("L").resize(thumb.size, Image.Resampling.LANCZOS)
            assert _edges(thumb) * 20 < _edges(same_size), path.name
    with Image.open(site / "pictures" / f"{items['street.jpg']}-clear.jpg") as clear:
        assert clear.size == (960, 720)


def _pictures(pages: ReviewPages, sha256: str) -> list[PictureRef]:
    """Every picture the item's page shows."""
    rendered = pages.item_with_pictures(sha256)
    assert rendered is not None
    return rendered[1]


def test_a_graphic_label_withholds_every_copys_pictures(
    processed: Processed, tmp_path: Path
) -> None:
    items = processed.items
    store, config = processed.store, processed.config
    pages = ReviewPages(store, config, LiveLinks(), live=True)
    assert len(_pictures(pages, items["street.jpg"])) == 2  # its own and its copy's
    record_review(store.database, items["scenes.mp4"], "reviewed", "mona", None)
    record_review(store.database, items["street-small.jpg"], "graphic", "yusuf", "bodies")

    # The original and its copy are one cluster: neither offers a picture any more.
    for name in ("street.jpg", "street-small.jpg"):
        html = pages.item(items[name])
        assert html is not None
        assert _pictures(pages, items[name]) == []
        assert "<img" not in html and "data-clear" not in html
        notice = re.search(
            r'Already reviewed as <strong>graphic</strong> in <a [^>]*href="([^"]+)"', html
        )
        assert notice and notice.group(1) == f"/ui/items/{items['street-small.jpg']}"
        assert "by yusuf on" in html
        withholding = withholding_review(store.database, items[name])
        assert withholding is not None and withholding.reviewer == "yusuf"
    # A label other than graphic is shown, and the pictures stay, blurred.
    video = pages.item(items["scenes.mp4"])
    assert video is not None and "reviewed: mona" in video and "Already reviewed" not in video
    assert len(_pictures(pages, items["scenes.mp4"])) == 5  # four keyframes and the still
    assert "reviewed: mona" in (pages.item(items["still.jpg"]) or "")
    listing = pages.items()
    assert listing.count("graphic: yusuf") == 2 and listing.count("reviewed: mona") == 2
    assert "graphic: yusuf" in pages.clusters()
    site = write_site(store, config, tmp_path / "site", blur=True, scope=None)
    written = {path.name[:64] for path in (tmp_path / "site" / "pictures").iterdir()}
    assert written == {items["scenes.mp4"], items["still.jpg"]} and site.pictures == 5
    # Labelled again, the newest label of an item is its current one.
    record_review(store.database, items["street-small.jpg"], "not-relevant", "yusuf", "a mural")
    assert len(_pictures(pages, items["street.jpg"])) == 2
    assert withholding_review(store.database, items["street.jpg"]) is None


def test_scopes_and_refusals(shared: Processed, tmp_path: Path) -> None:
    items = shared.items
    runner = CliRunner()
    base = ["--data", str(shared.config.data_dir), "report"]

    def report(folder: Path, *args: str, code: int = 0) -> str:
        result = runner.invoke(app, [*base, "--out", str(folder), *args])
        assert result.exit_code == code, result.output
        return result.output

    by_request = tmp_path / "rfa"
    report(by_request, "--request", "RFA-7")
    own = {items[name] for name in ("street.jpg", "scenes.mp4", "note.opus", "page.mp4")}
    copies = {items["street-small.jpg"], items["still.jpg"]}  # from NGO-B, for no request
    assert {path.stem for path in (by_request / "items").glob("[0-9a-f]*.html")} == own
    # A copy from outside the request stays visible as corroboration (hash, sources, first
    # sight, the link's distance), without a page, and without a picture written or named.
    clusters = _pages(by_request)["clusters/page-1.html"]
    text = (by_request / "clusters/page-1.html").read_text()
    assert items["street-small.jpg"][:12] in text and "NGO-B" in text
    assert not [url for url in clusters.urls if items["street-small.jpg"] in url]
    assert {path.name[:64] for path in (by_request / "pictures").iterdir()} == {
        items["street.jpg"],
        items["scenes.mp4"],
    }
    for sha in (items["street.jpg"], items["scenes.mp4"]):
        page = _pages(by_request)[f"items/{sha}.html"]
        named = [*page.urls, *page.clear_on_request]
        assert not [url for url in named if any(copy in url for copy in copies)], sha
        page_text = (by_request / f"items/{sha}.html").read_text()
        assert "not in this report: no picture" in page_text and "NGO-B" in page_text
    # No hidden partial folder is left beside the report.
    assert sorted(path.name for path in tmp_path.iterdir()) == ["rfa"]

    named = tmp_path / "named"
    report(named, "--no-blur", "--items", items["street.jpg"], items["note.opus"])
    pages = _pages(named)
    assert set(pages) == {
        "index.html", "items/page-1.html", "clusters/page-1.html",
        f"items/{items['street.jpg']}.html", f"items/{items['note.opus']}.html",
    }  # fmt: skip
    assert "2 named items" in (named / "index.html").read_text()
    # Each item the reports showed records it, as one of theirs or as a copy of one: the
    # request's report named two copies, the named items' one (a photo, a voice note) one.
    with shared.store.database.reader.connect() as connection:
        reported = {
            sha: [event.details["as"] for event in custody.item_trail(connection, sha)
                  if event.action == "report"]
            for sha in set(items.values())
        }  # fmt: skip
    expected: dict[str, list[str]] = {sha: [] for sha in set(items.values())}
    for sha in own:
        expected[sha].append("in scope")
    for sha in copies:
        expected[sha].append("corroborating copy")
    for sha in (items["street.jpg"], items["note.opus"]):
        expected[sha].append("in scope")
    expected[items["street-small.jpg"]].append("corroborating copy")
    assert reported == expected
    with shared.store.database.reader.connect() as connection:
        last, copy = (
            [event for event in custody.item_trail(connection, sha) if event.action == "report"]
            for sha in (items["note.opus"], items["still.jpg"])
        )
    assert last[-1].actor.startswith("qarina-report@")
    assert last[-1].details["blur"] is False
    assert (last[-1].details["items"], last[-1].details["copies"]) == (2, 1)
    assert copy[-1].details["scope"] == "request RFA-7"
    assert (copy[-1].details["items"], copy[-1].details["copies"]) == (4, 2)
    photo = pages[f"items/{items['street.jpg']}.html"]
    assert photo.image_sources and not photo.clear_on_request
    assert all(source.endswith("-clear.jpg") for source in photo.image_sources)
    assert not list((named / "pictures").glob("*-blurred.jpg"))

    assert "not empty" in report(named, code=1)
    assert "no item" in report(tmp_path / "x", "--items", "0" * 64, code=1)
    assert "no request" in report(tmp_path / "y", "--request", "RFA-0", code=1)
    report(tmp_path / "z", "--items", code=2)
    report(tmp_path / "z", "--request", "RFA-7", "--items", items["street.jpg"], code=2)


def test_a_report_takes_its_place_only_once_recorded(
    shared: Processed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Written beside its folder, hidden, and renamed into place after its custody events:
    interrupted while recording, it leaves nothing behind, and nothing recorded."""

    def interrupted(connection: object, entries: object) -> None:
        raise KeyboardInterrupt

    out = tmp_path / "reports" / "rfa"
    with monkeypatch.context() as patched:
        patched.setattr(custody, "append", interrupted)
        with pytest.raises(KeyboardInterrupt):
            write_site(shared.store, shared.config, out, blur=True, scope=None, actor="x@test")
    assert list((tmp_path / "reports").iterdir()) == []
    with shared.store.database.reader.connect() as connection:
        assert not [event for event in custody.events(connection) if event.actor == "x@test"]
    # An empty folder made beforehand is taken over.
    out.mkdir()
    summary = write_site(shared.store, shared.config, out, blur=True, scope=None)
    assert (out / "index.html").is_file() and summary.copies == ()
    assert sorted(path.name for path in (tmp_path / "reports").iterdir()) == ["rfa"]


def test_an_item_page_shows_its_nearest_copies_once_each_and_counts_the_rest(
    tmp_path: Path, models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Five unrelated photos linked by hand: a to b (distance 9) and c (4), c to d; e alone
    until linked to d. The matcher is not run, so these are the only links."""
    media = tmp_path / "media"
    media.mkdir()
    for number in range(5):
        photos.scene_jpeg(media / f"{number}.jpg", seed=30 + number)
    a, b, c, d, e = (
        hashlib.sha256((media / f"{number}.jpg").read_bytes()).hexdigest() for number in range(5)
    )
    config = sqlite_config_in(tmp_path / "data", models_dir)
    store = Store.open(config.db_url, config.blob_root)

    def link(mine: str, other: str, distance: float) -> None:
        made = matches.link_between(mine, other, "photo-photo", "pdq", distance, (None, None), {})
        matches.record(store.database, [made], "qarina-match@test")

    try:
        ingest_and_run(store, config, media)
        for pair in ((a, b, 9.0), (a, c, 4.0), (c, d, 6.0)):
            link(*pair)
        readings: list[int] = []
        all_links = matches.all_links
        monkeypatch.setattr(
            matches, "all_links", lambda database: readings.append(1) or all_links(database)
        )
        monkeypatch.setattr(review_pages, "NEAR_SHOWN", 2)
        live = ReviewPages(store, config, LiveLinks(), live=True)
        html = live.item(a)
        assert html is not None
        # The two nearest copies, nearest first; a's own picture once for them all (and once
        # in its contact sheet above); d, linked through c, counted with a way to it.
        assert html.index(f'href="/ui/items/{c}"') < html.index(f'href="/ui/items/{b}"')
        assert html.count(f'src="/ui/pictures/{a}/blurred.jpg"') == 2
        assert html.count(f'src="/ui/pictures/{c}/blurred.jpg"') == 1
        assert "Near duplicates (2 links)" in html and "nearest are shown" not in html
        assert re.search(r'1 more copy in this cluster: <a href="/ui/clusters#cluster-1">', html)
        images = re.findall(r"<img [^>]*>", html)
        assert images and all('loading="lazy"' in image for image in images)
        monkeypatch.setattr(review_pages, "NEAR_SHOWN", 1)
        html = live.item(a)
        assert html is not None
        assert f'href="/ui/items/{c}"' in html and f'href="/ui/items/{b}"' not in html
        assert "The 1 nearest are shown" in html and "2 more copies in this cluster" in html
        assert len(readings) == 1  # both pages found the cluster in one reading
        # A static report counts from its one reading of the clusters.
        static_links = StaticLinks()
        report = ReviewPages(store, config, static_links)
        with static_links.rendering_in("items"):
            html = report.item(a)
        assert html is not None
        assert '2 more copies in this cluster: <a href="../clusters/page-1.html#cluster-1">' in html
        assert 'id="cluster-1"' in report.clusters(1)

        # Live, the clusters are read again once a link was added, not before.
        readings.clear()
        assert "1 cluster " in live.clusters(1) and live.page_count("clusters") == 1
        live.backlog()
        assert readings == []
        link(d, e, 7.0)
        assert e[:12] in live.clusters(1) and e[:12] in live.clusters(1)
        assert "Near-duplicate clusters</a> (1)" in live.backlog()
        assert len(readings) == 1
    finally:
        store.close()


def test_a_transcript_without_a_language_says_so(
    shared: Processed, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, note = shared.store, shared.items["note.opus"]
    show = store.show

    def without_language(sha256: str, current: object) -> dict[str, object] | None:
        shown = show(sha256, current)  # type: ignore[arg-type]
        assert shown is not None
        shown["results"]["transcript"]["data"]["language"] = None
        return shown

    monkeypatch.setattr(store, "show", without_language)
    html = ReviewPages(store, shared.config, LiveLinks(), live=True).item(note)
    assert html is not None
    assert "Language not detected" in html and 'lang="None"' not in html
    assert f'dir="auto">{SPOKEN}' in html


def test_no_page_carries_script_or_style_of_its_own(shared: Processed) -> None:
    """The pages' policy (and the service's header) refuses inline script and style: a page
    that relied on any would break under it, so none may hold any. Live pages here; the
    static report's pages in test_report_of_the_whole_store."""
    pages = ReviewPages(shared.store, shared.config, LiveLinks(), live=True)
    rendered = {
        "backlog": pages.backlog(),
        "items": pages.items(),
        "clusters": pages.clusters(),
        "search": pages.search(SPOKEN),
        **{name: pages.item(sha) or "" for name, sha in shared.items.items()},
    }
    for name, html in rendered.items():
        page = _Page(Path(name), html)
        assert not page.inline_code and not page.misnested, (name, page.inline_code)
        policy = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]+)"', html)
        assert policy and unescape(policy.group(1)) == CONTENT_SECURITY_POLICY, name
    # What the check refuses.
    caught = _Page(
        Path("bad"),
        '<p style="color: red" onclick="go()">x</p><a href=" JavaScript:go()">y</a>'
        "<script>go()</script><style>p {}</style>",
    )
    assert len(caught.inline_code) == 5, caught.inline_code


def test_lists_are_paginated(shared: Processed, tmp_path: Path) -> None:
    site = tmp_path / "site"
    summary = write_site(
        shared.store, shared.config, site, blur=True, scope=None, items_per_page=2,
        clusters_per_page=1,
    )  # fmt: skip
    items = sorted(set(shared.items.values()))
    listed = [
        sorted((site / "items" / f"page-{number}.html").read_text().count(sha) > 0 for sha in items)
        for number in (1, 2, 3)
    ]
    assert [row.count(True) for row in listed] == [2, 2, 2]
    assert not (site / "items" / "page-4.html").exists()
    assert (site / "clusters" / "page-2.html").is_file()
    assert not (site / "clusters" / "page-3.html").exists()
    middle = _Page(site / "items" / "page-2.html")
    assert {"page-1.html", "page-3.html"} <= {Path(url).name for url in middle.urls}
    assert summary.pages == 1 + 3 + 2 + len(items)
    pages = ReviewPages(shared.store, shared.config, StaticLinks(), items_per_page=2)
    assert pages.page_count("items") == 3
    every = "".join(pages.items(number) for number in range(1, 4))
    assert all(every.count(f"{sha}.html") == 1 for sha in items)
    assert page_window(1, 1) == [1]
    assert page_window(10, 40) == [1, None, 7, 8, 9, 10, 11, 12, 13, None, 40]


def test_live_pages_search_transcripts(shared: Processed) -> None:
    items = shared.items
    pages = ReviewPages(shared.store, shared.config, LiveLinks(), live=True)
    found = pages.search("السلام")
    assert f'href="/ui/items/{items["note.opus"]}"' in found and SPOKEN in found
    assert 'role="search"' in found and 'name="q"' in found
    assert "No segment" in pages.search("كلمة غير موجودة")
    assert pages.item("0" * 64) is None
    scoped = ReviewPages(
        shared.store, shared.config, LiveLinks(), scope=items_scope(shared.store.database,
        [items["street.jpg"]])
    )  # fmt: skip
    assert scoped.item(items["note.opus"]) is None
    assert 'role="search"' not in scoped.backlog()


def test_pictures_are_found_by_key_only_in_the_store(shared: Processed) -> None:
    store, items = shared.store, shared.items
    photo = PictureRef(items["street.jpg"], None)
    assert find_picture(store, photo.key) == photo
    frames = [ref for ref in _pictures(ReviewPages(store, shared.config, StaticLinks()),
        items["scenes.mp4"]) if ref.item_sha256 == items["scenes.mp4"]]  # fmt: skip
    assert frames and find_picture(store, frames[0].key) == frames[0]
    assert find_picture(store, items["note.opus"]) is None  # not a picture
    assert find_picture(store, f"{items['street.jpg']}-{frames[0].artifact_sha256}") is None
    assert find_picture(store, "../" + photo.key) is None
    assert find_picture(store, photo.key.upper()) is None
    with Image.open(io.BytesIO(picture_bytes(store, photo, clear=False))) as blurred:
        assert blurred.mode == "L" and max(blurred.size) == 160


@pytest.mark.parametrize("damage", ["missing", "not a picture"])
def test_a_picture_that_does_not_decode_is_a_placeholder(
    shared: Processed, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    sha = "f" * 64 if damage == "missing" else shared.items["page.mp4"]
    made = picture_bytes(shared.store, PictureRef(sha, None), clear=True)
    with Image.open(io.BytesIO(made)) as placeholder:
        assert placeholder.format == "JPEG" and placeholder.mode == "L"
    assert "not shown" in caplog.text and sha in caplog.text


def test_times_read_as_a_clock() -> None:
    assert [clock(t) for t in (0, 2.04, 61.25, 599.96, 3725.5)] == [
        "00:00.0", "00:02.0", "01:01.2", "10:00.0", "1:02:05.5",
    ]  # fmt: skip


def test_the_chart_spans_a_day_at_least_and_labels_its_axes() -> None:
    now = dt.datetime(2026, 12, 6, 13, 40, tzinfo=dt.UTC)
    hour = dt.datetime(2026, 12, 6, 11, tzinfo=dt.UTC)
    chart = hourly_chart({hour: 7, hour - dt.timedelta(days=9): 50}, now, days=7)
    assert len(chart.bars) == 24 and [bar.count for bar in chart.bars if bar.count] == [7]
    assert [tick.label for tick in chart.y_ticks] == ["0", "5", "10"]
    assert 1 < len(chart.x_ticks) <= 8 and chart.x_ticks[0].label.startswith("12-0")
    assert "7 jobs ended" in chart.summary
    week = hourly_chart({now - dt.timedelta(days=6): 1}, now, days=7)
    assert len(week.bars) > 24 and len(week.x_ticks) <= 8


@pytest.mark.parametrize(
    ("setting", "blur"), [(None, True), ("1", True), ("0", False), ("False", False)]
)
def test_blurring_is_on_unless_turned_off(
    setting: str | None, blur: bool, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    if setting is None:
        monkeypatch.delenv("QARINA_REVIEW_BLUR", raising=False)
    else:
        monkeypatch.setenv("QARINA_REVIEW_BLUR", setting)
    assert QarinaConfig.from_env(tmp_path).review_blur is blur
