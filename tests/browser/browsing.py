"""What the browser tests share besides their fixtures: the pages of a site by kind, a visit
that records what the browser asked for and complained about, and full-page screenshots for
a person to look at, written to `test-screenshots/` at the repository root
(QARINA_SCREENSHOTS names another folder)."""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from PIL import Image
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from evidence.store import Store
from pipelines.config import QarinaConfig
from pipelines.review.pages import Links
from pipelines.samples.audio import GREETING

REPO = Path(__file__).resolve().parents[2]
PageKind = Literal["backlog", "items", "clusters", "photo", "video", "voice", "search"]
#: Longer pages are cut here: a screenshot is for a person to look at, not an archive.
_SHOT_MAX_HEIGHT = 8000


@dataclass(frozen=True)
class ReviewSet:
    """A processed store of one of each kind of page's subject, and its static report."""

    config: QarinaConfig
    store: Store
    photo: str
    near_copy: str
    video: str
    voice: str
    report: Path


@dataclass(frozen=True)
class Site:
    """The pages as one way of using the renderer shows them: the static report from disk,
    or the live service."""

    name: Literal["report", "live"]
    #: What every link is relative to: the report's folder, or the service's base URL.
    base: str
    links: Links
    review_set: ReviewSet

    def url(self, kind: PageKind) -> str:
        shown = self.review_set
        items = {"photo": shown.photo, "video": shown.video, "voice": shown.voice}
        if kind in items:
            link = self.links.page("item", sha256=items[kind])
        elif kind == "search":
            link = self.links.page("search", query=GREETING.split()[0])
        else:
            link = self.links.page(kind)
        return f"{self.base}/{link.removeprefix('/')}"

    def inside(self, url: str) -> bool:
        """A request the page may make: to the site itself, or of data it carries."""
        return url.startswith((f"{self.base}/", "data:"))


@dataclass(frozen=True)
class Visit:
    """What the browser did while a page loaded."""

    #: Every URL the page asked for, itself included, in order.
    requests: list[str]
    #: The console's SEVERE entries: script errors, refused or failed loads, CSP violations.
    errors: list[str]


def drain(driver: WebDriver) -> None:
    """Forget what the browser logged so far."""
    driver.get_log("browser")
    driver.get_log("performance")


def requested(driver: WebDriver) -> list[str]:
    """The URLs requested since the performance log was last read (Chrome DevTools'
    `Network.requestWillBeSent`, which names every request the page's renderer makes)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def visit(driver: WebDriver, url: str) -> Visit:
    drain(driver)
    driver.get(url)
    WebDriverWait(driver, 10).until(
        lambda page: page.execute_script("return document.readyState") == "complete"
    )
    errors = [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    return Visit(requested(driver), errors)


def screenshots_dir() -> Path:
    folder = Path(os.environ.get("QARINA_SCREENSHOTS") or REPO / "test-screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def save_full_page(driver: WebDriver, name: str) -> Path:
    """The whole page as it lays out, not the window's share of it (DevTools' capture beyond
    the viewport, which Selenium's own screenshot of Chrome does not offer)."""
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    clip = {
        "x": 0,
        "y": 0,
        "width": size["width"],
        "height": min(size["height"], _SHOT_MAX_HEIGHT),
        "scale": 1,
    }
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
    )
    path = screenshots_dir() / f"{name}.png"
    path.write_bytes(base64.b64decode(shot["data"]))
    with Image.open(path) as written:
        written.verify()
    return path
