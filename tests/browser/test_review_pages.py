"""The review pages in a real Chromium, as the static report (from disk) and live under /ui of
the service: each kind of page loads with no console error (the pages' Content-Security-Policy,
in a <meta> element that Chromium enforces on the report's file:// pages too, reports inline
script or style as one) and asks for nothing outside the site, holds no audio or video element
(nothing can play by itself), Arabic reads right to left with its letters joined, and a
picture is blurred and grey until a reviewer clicks it, its clear version not even fetched
before."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from PIL import Image
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from pipelines.api.gate import SESSION_COOKIE
from pipelines.samples.audio import GREETING
from tests.browser.browsing import (
    PageKind,
    Site,
    requested,
    save_full_page,
    screenshots_dir,
    visit,
)

#: The static report is a snapshot: search needs the service.
_REPORT_KINDS: tuple[PageKind, ...] = ("backlog", "items", "clusters", "photo", "video", "voice")
_LIVE_KINDS: tuple[PageKind, ...] = (*_REPORT_KINDS, "search")
_ARABIC = re.compile("[\u0600-\u06ff]")
#: How many pictures a page of each kind shows at least: the photo, the video's three shots.
_PICTURES = {"photo": 1, "video": 3}

#: The pages have no player: a recording is read as its transcript, nothing plays by itself.
_MEDIA_ELEMENTS = "return document.querySelectorAll('audio, video, source, track').length"
_INLINE_STYLE_APPLIES = """
const probe = document.createElement('p');
probe.setAttribute('style', 'color: rgb(1, 2, 3)');
document.body.append(probe);
const applied = getComputedStyle(probe).color === 'rgb(1, 2, 3)';
probe.remove();
return applied;
"""


def _site(request: pytest.FixtureRequest, name: str) -> Site:
    site: Site = request.getfixturevalue(f"{name}_site")
    return site


@pytest.mark.parametrize(
    ("site_name", "kind"),
    [("report", kind) for kind in _REPORT_KINDS] + [("live", kind) for kind in _LIVE_KINDS],
)
def test_every_page_kind_loads_cleanly_and_stays_inside_the_site(
    request: pytest.FixtureRequest, browser: WebDriver, site_name: str, kind: PageKind
) -> None:
    site = _site(request, site_name)
    page = visit(browser, site.url(kind))
    save_full_page(browser, f"{site.name}-{kind}")
    assert page.errors == []
    assert page.requests, "the browser log recorded no request at all"
    assert [url for url in page.requests if not site.inside(url)] == []
    assert browser.execute_script(_MEDIA_ELEMENTS) == 0
    # The policy holds on every page, from disk too: a style attribute is refused.
    assert browser.execute_script(_INLINE_STYLE_APPLIES) is False
    shown = [
        image for image in browser.find_elements(By.TAG_NAME, "img") if _loaded(browser, image)
    ]
    assert len(shown) >= _PICTURES.get(kind, 0)
    if kind == "search":
        voice_page = site.url("voice")
        links = [a.get_attribute("href") for a in browser.find_elements(By.TAG_NAME, "a")]
        assert voice_page in links


@pytest.mark.parametrize("site_name", ["report", "live"])
def test_arabic_is_right_to_left_with_its_letters_joined(
    request: pytest.FixtureRequest, browser: WebDriver, site_name: str
) -> None:
    site = _site(request, site_name)
    visit(browser, site.url("voice"))
    arabic = [
        element
        for element in browser.find_elements(By.CSS_SELECTOR, '[lang="ar"]')
        if _ARABIC.search(element.text)
    ]
    assert arabic, "no element with lang=ar holds Arabic text"
    assert GREETING.split()[0] in " ".join(element.text for element in arabic)
    for element in arabic:
        direction = browser.execute_script(
            "return getComputedStyle(arguments[0]).direction", element
        )
        assert direction == "rtl"
    # Shaped: joined, a word's letters take their connected forms and its width changes from
    # that of the same letters kept apart (by zero-width non-joiners). A font without Arabic
    # draws boxes of one width either way.
    joined, apart = browser.execute_script(
        """
        const context = document.createElement('canvas').getContext('2d');
        context.font = getComputedStyle(arguments[0]).font || '16px sans-serif';
        const word = arguments[1];
        return [context.measureText(word).width,
                context.measureText([...word].join('\\u200c')).width];
        """,
        arabic[0],
        GREETING.split()[0],
    )
    assert abs(joined - apart) > 1, (joined, apart)


@pytest.mark.parametrize("site_name", ["report", "live"])
def test_a_picture_is_blurred_and_grey_until_clicked_and_its_clear_version_fetched_only_then(
    request: pytest.FixtureRequest, browser: WebDriver, site_name: str
) -> None:
    site = _site(request, site_name)
    page = visit(browser, site.url("photo"))
    picture = browser.find_element(By.CSS_SELECTOR, "button.reveal img")
    assert _loaded(browser, picture)
    blurred_src = _source(browser, picture)
    before = picture.screenshot_as_png
    browser.execute_script("arguments[0].scrollIntoView()", picture)
    picture.click()
    WebDriverWait(browser, 10).until(
        lambda driver: _source(driver, picture) != blurred_src and _loaded(driver, picture)
    )
    clear_src = _source(browser, picture)
    after = picture.screenshot_as_png
    for name, png in (("before-click", before), ("after-click", after)):
        (screenshots_dir() / f"{site.name}-picture-{name}.png").write_bytes(png)
    assert clear_src not in page.requests
    assert clear_src in requested(browser)
    colour_before, edges_before = _pixel_stats(before)
    colour_after, edges_after = _pixel_stats(after)
    # Grey before: every pixel's channels within JPEG's rounding of each other; the scene's
    # colours after.
    assert colour_before < 1.5 < 8 < colour_after, (colour_before, colour_after)
    # Smooth before: the blur leaves no sharp edge of the scene's shapes.
    assert edges_after > 4 * edges_before, (edges_before, edges_after)


def test_the_session_cookie_is_for_the_pages_alone_and_out_of_scripts_reach(
    browser: WebDriver, signed_in: str
) -> None:
    visit(browser, f"{signed_in}/ui/")
    (cookie,) = [cookie for cookie in browser.get_cookies() if cookie["name"] == SESSION_COOKIE]
    assert (cookie["path"], cookie["httpOnly"], cookie["sameSite"]) == ("/ui", True, "Strict")
    # Secure, and still kept over plain HTTP to 127.0.0.1, which browsers count as secure.
    assert cookie["secure"] is True
    assert browser.execute_script("return document.cookie") == ""
    # The API answers the signed-in browser as it answers anyone without a token.
    browser.get(f"{signed_in}/v1/status")
    assert "a known bearer token is required" in browser.find_element(By.TAG_NAME, "body").text


def _loaded(driver: WebDriver, image: WebElement) -> bool:
    return bool(
        driver.execute_script(
            "return arguments[0].complete && arguments[0].naturalWidth > 0", image
        )
    )


def _source(driver: WebDriver, image: WebElement) -> str:
    """The URL the image shows, resolved as the browser requested it."""
    return str(driver.execute_script("return arguments[0].currentSrc", image))


def _pixel_stats(png: bytes) -> tuple[float, float]:
    """Colour (mean distance of a pixel's channels from their mean: 0 for grey) and edges
    (the 99th percentile of the brightness's Laplacian: the sharpest 1% of the picture's
    edges and texture, which a blur flattens)."""
    with Image.open(io.BytesIO(png)) as image:
        rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    colour = float(np.abs(rgb - rgb.mean(axis=2, keepdims=True)).mean())
    grey = rgb.mean(axis=2)
    laplacian = (
        4 * grey[1:-1, 1:-1] - grey[:-2, 1:-1] - grey[2:, 1:-1] - grey[1:-1, :-2] - grey[1:-1, 2:]
    )
    return colour, float(np.percentile(np.abs(laplacian), 99))
