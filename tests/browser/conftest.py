"""A real Chromium for the review pages: Debian's `chromium` driven through its own
`chromedriver` (both installed by the Makefile), by path, so Selenium Manager never runs and
nothing is downloaded. Without them the browser tests are skipped on a developer's machine
and fail in CI (CI=true), where they must run.

One processed store, one static report of it, one live service over it and one browser serve
the whole session; the browser signs in to the live pages once, through the sign-in form.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from evidence.store import Store
from pipelines.api.ui import LiveLinks
from pipelines.plan import Plan
from pipelines.review.site import StaticLinks, write_site
from pipelines.samples import audio, photos, videos
from pipelines.search import update_search_index
from pipelines.session import open_matcher
from tests.browser.browsing import ReviewSet, Site, save_full_page, visit
from tests.browser.serving import REVIEWER_TOKEN, serving, write_tokens
from tests.flows import ingest_and_run, sqlite_config_in

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


@pytest.fixture(scope="session")
def browser() -> Iterator[WebDriver]:
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    if missing:
        problem = f"no {' or '.join(missing)} (Debian's chromium and chromium-driver)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{problem}; the browser tests must run in CI")
        pytest.skip(problem)
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--window-size=1280,900",
        # Nothing of the browser's own reaches out either: no updates, sync or first run.
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        *(["--no-sandbox"] if os.geteuid() == 0 else []),  # the sandbox refuses root
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="session")
def review_set(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[ReviewSet]:
    """A colourful photo from a phone and its resized copy from a drive (a near-duplicate
    cluster of two sources), a video of three shots, and an Arabic voice note."""
    root = tmp_path_factory.mktemp("review")
    phone, drive = root / "phone", root / "drive"
    phone.mkdir()
    drive.mkdir()
    scene = photos.scene(11, (640, 480))
    scene.save(phone / "IMG_0001.jpg", quality=90)
    scene.resize((480, 360)).save(drive / "IMG-WA0001.jpg", quality=60)
    videos.video_with_cuts(
        phone / "VID_0001.mp4", shots=3, seconds_per_shot=1.0, size="160x120", audio=None
    )
    audio.speech(phone / "PTT-0001.opus", voice_format="whatsapp-opus")
    config = sqlite_config_in(root / "data", models_dir)
    store = Store.open(config.db_url, config.blob_root)
    try:
        photo, video, voice = _by_name(
            store, ingest_and_run(store, config, phone, source="phone"),
            "IMG_0001.jpg", "VID_0001.mp4", "PTT-0001.opus",
        )  # fmt: skip
        (near_copy,) = ingest_and_run(store, config, drive, source="drive")
        plan = Plan.default(settings=config)
        open_matcher(config, store, plan).update("qarina-match@tester")
        update_search_index(store, plan)
        report = root / "report"
        write_site(store, config, report, blur=True, scope=None)
        yield ReviewSet(config, store, photo, near_copy, video, voice, report)
    finally:
        store.close()


def _by_name(store: Store, shas: list[str], *names: str) -> list[str]:
    """The items' hashes in the order of their original names."""
    current = Plan.default().current_keys()
    named = {store.show(sha, current)["acquisitions"][0]["original_name"]: sha for sha in shas}
    return [named[name] for name in names]


@pytest.fixture(scope="session")
def live_base(review_set: ReviewSet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tokens = write_tokens(tmp_path_factory.mktemp("tokens") / "tokens")
    with serving(review_set.store, review_set.config, tokens) as base:
        yield base


@pytest.fixture(scope="session")
def signed_in(browser: WebDriver, live_base: str) -> str:
    """The browser signed in to the live pages as a reviewer does: a page asked for without
    a session leads to the form, and the form back to the page. The base URL."""
    wanted = f"{live_base}/ui/clusters"
    form = visit(browser, wanted)
    assert browser.current_url.startswith(f"{live_base}/ui/login?next="), browser.current_url
    save_full_page(browser, "live-sign-in")
    assert form.errors == []
    assert all(url.startswith(f"{live_base}/ui/") for url in form.requests), form.requests
    browser.find_element(By.NAME, "token").send_keys(REVIEWER_TOKEN)
    browser.find_element(By.CSS_SELECTOR, "form [type=submit]").click()
    WebDriverWait(browser, 10).until(lambda driver: driver.current_url == wanted)
    return live_base


@pytest.fixture(scope="session")
def report_site(review_set: ReviewSet) -> Site:
    return Site("report", review_set.report.as_uri(), StaticLinks(), review_set)


@pytest.fixture(scope="session")
def live_site(signed_in: str, review_set: ReviewSet) -> Site:
    return Site("live", signed_in, LiveLinks(), review_set)
