"""The review pages under /ui of the service, over plain HTTP: the sign-in that stands in for
a bearer token, the cookie that opens the pages and nothing else, the headers every answer
carries, and what the picture and static routes refuse. (What the pages look like and do in
a browser: tests/browser.)"""

from __future__ import annotations

import http.client
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlencode

import pytest

from evidence import reviews
from evidence.store import Store
from pipelines.api.auth import BrowserSessions
from pipelines.api.gate import JSON_BODY_MAX_BYTES, SESSION_COOKIE
from pipelines.api.ui import SECURITY_HEADERS
from pipelines.samples import photos
from tests.browser.serving import REVIEWER_TOKEN, serving, write_tokens
from tests.flows import ingest_and_run, sqlite_config_in

_FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@dataclass(frozen=True)
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes


@dataclass(frozen=True)
class Service:
    port: int
    photo: str
    #: A photo a reviewer labelled graphic: its pictures are withheld.
    withheld: str

    def call(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.request(method, path, body, headers or {})
            response = connection.getresponse()
            return Answer(response.status, response.headers, response.read())
        finally:
            connection.close()

    def sign_in(self, token: str = REVIEWER_TOKEN, wanted: str | None = None) -> Answer:
        fields = {"token": token} | ({} if wanted is None else {"next": wanted})
        return self.call("POST", "/ui/login", urlencode(fields).encode(), _FORM)

    def session(self) -> dict[str, str]:
        """The headers of a signed-in browser's requests."""
        cookie = self.sign_in().headers["set-cookie"].split(";")[0]
        return {"Cookie": cookie}


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[Service]:
    root = tmp_path_factory.mktemp("ui")
    media = root / "media"
    media.mkdir()
    photos.scene_jpeg(media / "IMG_0001.jpg", seed=5)
    photos.scene_jpeg(media / "IMG_0002.jpg", seed=6)
    config = sqlite_config_in(root / "data", models_dir)
    store = Store.open(config.db_url, config.blob_root)
    try:
        photo, withheld = ingest_and_run(store, config, media)
        reviews.record_review(store.database, withheld, "graphic", "carol", None)
        with serving(store, config, write_tokens(root / "tokens")) as base:
            yield Service(int(base.rsplit(":", 1)[1]), photo, withheld)
    finally:
        store.close()


def _pages(service: Service) -> list[str]:
    picture = f"/ui/pictures/{service.photo}"
    return [
        "/ui/", "/ui/items", "/ui/items?page=1", "/ui/clusters", f"/ui/items/{service.photo}",
        "/ui/search?q=%D8%B3%D9%84%D8%A7%D9%85", f"{picture}/blurred.jpg", f"{picture}/clear.jpg",
    ]  # fmt: skip


def test_without_a_session_every_page_leads_to_the_sign_in_form(service: Service) -> None:
    for path in _pages(service):
        for headers in (
            {},
            {"Cookie": f"{SESSION_COOKIE}=not-a-session"},
            {"Cookie": f"{SESSION_COOKIE}="},
            {"Authorization": f"Bearer {REVIEWER_TOKEN[:-1]}0"},
        ):
            answer = service.call("GET", path, headers=headers)
            assert answer.status == 303, (path, headers)
            assert answer.headers["location"] == f"/ui/login?next={quote(path, safe='')}"
    # Two session cookies: which to believe? Neither, even when one of them is good.
    good = service.session()["Cookie"]
    both = {"Cookie": f"{good}; {SESSION_COOKIE}=another"}
    assert service.call("GET", "/ui/", headers=both).status == 303
    # Without a page to go back to.
    answer = service.call("POST", "/ui/logout")
    assert (answer.status, answer.headers["location"]) == (303, "/ui/login")
    assert service.call("GET", "/ui").headers["location"] == "/ui/login?next=%2Fui"
    # The form, and the pages' own script and style, are open to all.
    form = service.call("GET", "/ui/login")
    assert form.status == 200
    assert b'name="token"' in form.body
    assert service.call("GET", "/ui/static/qarina.css").status == 200


def test_a_known_token_opens_a_session_in_a_strict_http_only_cookie_for_ui(
    service: Service,
) -> None:
    refused = service.sign_in(REVIEWER_TOKEN[:-1] + "0")
    assert refused.status == 401
    assert "set-cookie" not in refused.headers
    assert b"not known" in refused.body
    assert service.sign_in("").status == 401
    answer = service.sign_in(wanted="/ui/items?page=1")
    assert (answer.status, answer.headers["location"]) == (303, "/ui/items?page=1")
    cookie = [part.strip() for part in answer.headers["set-cookie"].split(";")]
    name, _, value = cookie[0].partition("=")
    assert name == SESSION_COOKIE
    assert len(value) >= 43  # 32 random bytes, base64url
    # Secure even over plain HTTP here: browsers keep it from 127.0.0.1 and localhost.
    assert sorted(cookie[1:]) == [
        "HttpOnly", "Max-Age=43200", "Path=/ui", "SameSite=strict", "Secure",
    ]  # fmt: skip
    # The form sends a browser back into the pages only.
    for elsewhere in ("https://example.org/", "//example.org/ui/", "/v1/status", "/ui/login"):
        assert service.sign_in(wanted=elsewhere).headers["location"] == "/ui/", elsewhere


def test_a_session_opens_the_pages_and_never_the_api(service: Service) -> None:
    session = service.session()
    for path in _pages(service):
        assert service.call("GET", path, headers=session).status == 200, path
    for path in ("/v1/status", f"/v1/items/{service.photo}", "/openapi.json"):
        answer = service.call("GET", path, headers=session)
        assert (answer.status, answer.headers["www-authenticate"]) == (401, "Bearer"), path
    answer = service.call(
        "POST", "/v1/pause", b"{}", session | {"Content-Type": "application/json"}
    )
    assert answer.status == 401
    # A script with the token itself needs no session.
    bearer = {"Authorization": f"Bearer {REVIEWER_TOKEN}"}
    assert service.call("GET", "/ui/items", headers=bearer).status == 200
    # The pages are no operation of the API.
    spec = service.call("GET", "/openapi.json", headers=bearer)
    assert b'"/ui' not in spec.body


def test_every_answer_under_ui_forbids_elsewhere_and_pages_are_not_kept(
    service: Service,
) -> None:
    session = service.session()
    picture = f"/ui/pictures/{service.photo}"
    expected_cache = {
        ("/ui/", True): "no-store",
        (f"/ui/items/{service.photo}", True): "no-store",
        (f"{picture}/clear.jpg", True): "no-store",
        (f"{picture}/blurred.jpg", True): "private, max-age=3600",
        ("/ui/static/qarina.js", False): "no-cache",
        ("/ui/login", False): "no-store",
        ("/ui/items", False): "no-store",  # the redirect to the form
        (f"/ui/items/{'0' * 64}", True): "no-store",  # 404
    }
    for (path, signed_in), cache in expected_cache.items():
        answer = service.call("GET", path, headers=session if signed_in else None)
        for name, value in SECURITY_HEADERS.items():
            assert answer.headers[name] == value, (path, name)
        assert answer.headers["cache-control"] == cache, path
    # Outside /ui the API answers as before.
    assert "content-security-policy" not in service.call("GET", "/v1/status").headers


def test_pictures_static_files_and_pages_refuse_what_they_do_not_hold(service: Service) -> None:
    session = service.session()
    blurred = service.call("GET", f"/ui/pictures/{service.photo}/blurred.jpg", headers=session)
    assert (blurred.status, blurred.headers["content-type"]) == (200, "image/jpeg")
    assert blurred.body.startswith(b"\xff\xd8")
    for path in (
        f"/ui/pictures/{'0' * 64}/clear.jpg",
        "/ui/pictures/not-a-key/blurred.jpg",
        f"/ui/pictures/{service.photo}/original.jpg",
        f"/ui/items/{'0' * 64}",
        "/ui/items?page=9999",
        "/ui/static/..%2F..%2Fapi%2Fui.py",
        "/ui/static/%2E%2E",
        "/ui/static/nothing.js",
        "/ui/nothing",
    ):
        assert service.call("GET", path, headers=session).status == 404, path
    # Unsigned, a name the static folder does not hold is not found, and a path below it
    # leads to the sign-in form like any other page.
    assert service.call("GET", "/ui/static/nothing.js").status == 404
    assert service.call("GET", "/ui/static/..%2F..%2Fapi%2Fui.py").status == 303
    for path in (
        "/ui/items/ABC",
        "/ui/items?page=0",
        f"/ui/search?q={'x' * 501}",
        "/ui/search?q=x&page=101",
    ):
        assert service.call("GET", path, headers=session).status == 422, path


def test_a_picture_reviewed_as_graphic_is_never_served_again(service: Service) -> None:
    """The page names no picture of it, and its URLs, typed or kept, are refused."""
    session = service.session()
    page = service.call("GET", f"/ui/items/{service.withheld}", headers=session)
    assert page.status == 200
    assert b"Already reviewed as <strong>graphic</strong>" in page.body
    assert b"carol" in page.body
    assert b"/ui/pictures/" not in page.body
    for version in ("blurred", "clear"):
        path = f"/ui/pictures/{service.withheld}/{version}.jpg"
        assert service.call("GET", path, headers=session).status == 403, path
    shown = service.call("GET", f"/ui/items/{service.photo}", headers=session)
    assert f"/ui/pictures/{service.photo}/blurred.jpg".encode() in shown.body
    # Live pages offer a way to sign out (a POST, as the route wants).
    assert b'action="/ui/logout" method="post"' in shown.body


def test_signing_out_ends_the_session_on_both_sides(service: Service) -> None:
    session = service.session()
    assert service.call("GET", "/ui/", headers=session).status == 200
    answer = service.call("POST", "/ui/logout", headers=session)
    assert (answer.status, answer.headers["location"]) == (303, "/ui/login")
    cleared = answer.headers["set-cookie"]
    assert cleared.startswith(f'{SESSION_COOKIE}=""') or f"{SESSION_COOKIE}=;" in cleared
    assert "Max-Age=0" in cleared
    assert "Path=/ui" in cleared
    # The old cookie, replayed, opens nothing.
    assert service.call("GET", "/ui/", headers=session).status == 303
    # Sign-out is a POST: no link or picture can sign a reviewer out.
    assert service.call("GET", "/ui/logout", headers=service.session()).status == 405


def test_the_sign_in_form_body_is_bounded_by_the_gate(service: Service) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", service.port, timeout=30)
    try:
        connection.putrequest("POST", "/ui/login")
        connection.putheader("Content-Type", _FORM["Content-Type"])
        connection.putheader("Content-Length", str(JSON_BODY_MAX_BYTES + 1))
        connection.endheaders()
        assert connection.getresponse().status == 413
    finally:
        connection.close()


def test_nothing_logged_names_a_token_or_a_query(
    service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    service.sign_in()
    service.sign_in("wrong-token-" + "9" * 40)
    session = service.session()
    service.call("GET", "/ui/search?q=secret-words", headers=session)
    service.call("GET", "/ui/login?next=%2Fui%2Fsearch%3Fq%3Dsecret-words")
    for secret in (REVIEWER_TOKEN, "wrong-token", "secret-words", session["Cookie"][20:]):
        assert secret not in caplog.text


def test_sessions_expire_and_the_oldest_go_first_past_the_cap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1000.0]
    sessions = BrowserSessions(lifetime_s=60, clock=lambda: now[0])
    first = sessions.open("reviewer")
    assert sessions.owner(first) == "reviewer"
    assert sessions.owner(first + "x") is None
    now[0] += 59
    second = sessions.open("other")
    assert first != second
    now[0] += 1
    assert sessions.owner(first) is None
    assert sessions.owner(second) == "other"
    sessions.close(second)
    assert sessions.owner(second) is None
    monkeypatch.setattr("pipelines.api.auth.SESSIONS_MAX", 3)
    opened = [sessions.open(f"r{number}") for number in range(4)]
    assert [sessions.owner(session) for session in opened] == [None, "r1", "r2", "r3"]


def test_the_form_signs_in_only_from_a_page_of_this_service(service: Service) -> None:
    """A page elsewhere cannot post the form to sign a reviewer's browser in under another
    token: what the browser says of where the form came from must name this service."""
    own = f"http://127.0.0.1:{service.port}"
    body = urlencode({"token": REVIEWER_TOKEN}).encode()
    for sent in (
        {"Origin": "http://attacker.example"},
        {"Origin": f"http://127.0.0.1:{service.port + 1}"},
        {"Origin": "null"},  # a sandboxed page, or one that sends no referrer
        {"Origin": "null", "Sec-Fetch-Site": "cross-site"},
        {"Origin": own, "Sec-Fetch-Site": "same-site"},
        {"Sec-Fetch-Site": "cross-site"},
    ):
        answer = service.call("POST", "/ui/login", body, _FORM | sent)
        assert answer.status == 403, sent
        assert "set-cookie" not in answer.headers
    for sent in (
        # What Chromium sends from the form, whose page asks for no referrer.
        {"Origin": "null", "Sec-Fetch-Site": "same-origin"},
        {"Origin": own, "Sec-Fetch-Site": "same-origin"},
        {"Origin": own},
    ):
        answer = service.call("POST", "/ui/login", body, _FORM | sent)
        assert answer.status == 303 and "set-cookie" in answer.headers, sent


@pytest.mark.parametrize(
    ("headers", "warned"),
    [
        ({}, False),  # 127.0.0.1, the test's own address
        ({"Host": "localhost:8470"}, False),
        ({"Host": "[::1]:8470"}, False),
        ({"Host": "qarina.example"}, True),
        ({"Host": "192.0.2.7:8470"}, True),
        # A TLS proxy on this host says the browser's scheme, which uvicorn trusts from it.
        ({"Host": "qarina.example", "X-Forwarded-Proto": "https"}, False),
    ],
)
def test_the_form_warns_where_a_browser_would_drop_the_secure_cookie(
    service: Service, headers: dict[str, str], warned: bool
) -> None:
    form = service.call("GET", "/ui/login", headers=headers)
    assert form.status == 200
    assert (b"This address is plain HTTP" in form.body) is warned
