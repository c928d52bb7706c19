"""The review pages, live under `/ui` of the service: the renderer of `qarina report`
(`pipelines.review`) answering from the store as it is now, with search.

A browser cannot send the bearer token every other request carries, so a token opens a
session here instead: `/ui/login` takes it once, in a form, and sets a cookie holding a
random session id (HttpOnly, so no script reads it; SameSite=Strict, so no other site's page
makes the browser send it; Path=/ui, and the gate takes it nowhere else; Secure always:
Chromium and Firefox keep a Secure cookie from http://localhost and http://127.0.0.1, which
count as secure origins, so an SSH tunnel works, while a plain-HTTP request to the host's
name never carries it). The form only takes a token from a page of the service itself (the
browser's `Sec-Fetch-Site` and `Origin` say so), so a page elsewhere cannot sign a browser
in under its own token (a proxy in front must pass the `Host` the browser asked for, as
nginx's `proxy_set_header Host $host` does, and `X-Forwarded-Proto`). What the pages
show is graphic and confidential, so every answer under /ui also tells the browser to load
nothing from elsewhere, run no inline script, be framed by no one and send no referrer, and
to keep no copy of a page or a clear picture (`UiHeaders`). Nothing here logs a token, a
query or a name.
"""

from __future__ import annotations

import html
import ipaddress
import re
from dataclasses import dataclass
from typing import Annotated, Literal
from urllib.parse import parse_qs, urlencode, urlsplit

import fastapi
from fastapi import Depends, HTTPException, Query
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from evidence.store import Store
from pipelines.api.auth import ApiToken, BrowserSessions, token_owner
from pipelines.api.gate import SESSION_COOKIE, SIGN_IN_PATH, UI_PREFIX, under_ui
from pipelines.config import QarinaConfig
from pipelines.review.pages import (
    CONTENT_SECURITY_POLICY,
    PictureRef,
    ReviewPages,
    withholding_review,
)
from pipelines.review.thumbs import STATIC_DIR, find_picture, picture_bytes

#: Every answer under /ui: the pages' own files and nothing else (no inline script or style,
#: no CDN, no plugin, no <base>, forms sent only here, no framing by another site), no
#: sniffing a type the answer does not declare, and no referrer naming an item to wherever a
#: reviewer goes next.
SECURITY_HEADERS = {
    "content-security-policy": f"{CONTENT_SECURITY_POLICY}; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}
#: A blurred thumbnail may be kept by the browser for a while; the pages' script and style
#: are asked again each time (a 304 while unchanged); pages and clear pictures may not be
#: kept at all (no-store, the default under /ui).
_KEPT = "private, max-age=3600"
_REVALIDATED = "no-cache"
#: The longest search text taken: a sentence of a transcript, with room to spare.
QUERY_MAX_CHARS = 500
#: The deepest page of search results: each page looks up every hit before it, and no one
#: reads 5,000 hits a page at a time (a narrower query finds them sooner).
SEARCH_PAGES_MAX = 100
_NEXT = re.compile(rf"{UI_PREFIX}/[\x21-\x7e]*")
_SHA256 = r"^[0-9a-f]{64}$"

router = fastapi.APIRouter(prefix=UI_PREFIX, include_in_schema=False)


class LiveLinks:
    """The renderer's links as the service answers them (`pipelines.review.pages.Links`)."""

    def page(
        self,
        kind: Literal["backlog", "items", "clusters", "item", "search"],
        *,
        sha256: str | None = None,
        page: int = 1,
        query: str | None = None,
    ) -> str:
        if kind == "backlog":
            return f"{UI_PREFIX}/"
        if kind == "item":
            return f"{UI_PREFIX}/items/{sha256}"
        params: dict[str, str | int] = {"q": query or ""} if kind == "search" else {}
        if page != 1:
            params["page"] = page
        return f"{UI_PREFIX}/{kind}" + (f"?{urlencode(params)}" if params else "")

    def picture(self, ref: PictureRef, clear: bool) -> str:
        return f"{UI_PREFIX}/pictures/{ref.key}/{'clear' if clear else 'blurred'}.jpg"

    def asset(self, name: str) -> str:
        return f"{UI_PREFIX}/static/{name}"


@dataclass(frozen=True)
class UiContext:
    """What the pages work with, made once by `create_app`."""

    store: Store
    pages: ReviewPages
    tokens: tuple[ApiToken, ...]
    sessions: BrowserSessions
    #: The names of the files in the renderer's static folder: the only ones served.
    static: frozenset[str]

    @classmethod
    def create(
        cls,
        store: Store,
        config: QarinaConfig,
        tokens: tuple[ApiToken, ...],
        sessions: BrowserSessions,
    ) -> UiContext:
        pages = ReviewPages(store, config, LiveLinks(), blur=config.review_blur, live=True)
        static = frozenset(path.name for path in STATIC_DIR.iterdir() if path.is_file())
        return cls(store, pages, tokens, sessions, static)


class UiHeaders:
    """Puts `SECURITY_HEADERS` on every answer under /ui (the gate's redirects to the sign-in
    form included), and `Cache-Control: no-store` on those that do not say otherwise."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not under_ui(scope["path"]):
            await self.app(scope, receive, send)
            return

        async def guarded(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers[name] = value
                if "cache-control" not in headers:
                    headers["cache-control"] = "no-store"
            await send(message)

        await self.app(scope, receive, guarded)


def _ui(http: fastapi.Request) -> UiContext:
    context: UiContext = http.app.state.ui
    return context


Ui = Annotated[UiContext, Depends(_ui)]
PageNumber = Annotated[int, Query(ge=1, le=1_000_000)]


def _html(page: str | None) -> HTMLResponse:
    if page is None:
        raise HTTPException(404, "no such item")
    return HTMLResponse(page)


def _listing(ui: UiContext, kind: Literal["items", "clusters"], page: int) -> HTMLResponse:
    """One page of a list; past the last one, 404 (the first always answers, empty or not)."""
    if page > 1 and page > ui.pages.page_count(kind):
        raise HTTPException(404, "no such page")
    return _html(ui.pages.items(page) if kind == "items" else ui.pages.clusters(page))


# The pages read the store: plain `def`, so FastAPI runs them in its worker threads, off the
# event loop, as it runs the API's operations.


@router.get("/")
def backlog(ui: Ui) -> HTMLResponse:
    return _html(ui.pages.backlog())


@router.get("/items")
def items(ui: Ui, page: PageNumber = 1) -> HTMLResponse:
    return _listing(ui, "items", page)


@router.get("/clusters")
def clusters(ui: Ui, page: PageNumber = 1) -> HTMLResponse:
    return _listing(ui, "clusters", page)


@router.get("/items/{sha256}")
def item(ui: Ui, sha256: Annotated[str, fastapi.Path(pattern=_SHA256)]) -> HTMLResponse:
    return _html(ui.pages.item(sha256))


@router.get("/search")
def search(
    ui: Ui,
    q: Annotated[str, Query(max_length=QUERY_MAX_CHARS)] = "",
    page: Annotated[int, Query(ge=1, le=SEARCH_PAGES_MAX)] = 1,
) -> HTMLResponse:
    return _html(ui.pages.search(q, page))


def _picture(ui: UiContext, key: str, clear: bool) -> Response:
    ref = find_picture(ui.store, key)
    if ref is None:
        raise HTTPException(404, "no such picture")
    # The pages never name a withheld picture, but its URL can be typed or kept from before
    # the label: a picture of a cluster reviewed as graphic is not served again.
    if withholding_review(ui.store.database, ref.item_sha256) is not None:
        raise HTTPException(403, "withheld: reviewed as graphic")
    headers = {} if clear else {"cache-control": _KEPT}
    return Response(picture_bytes(ui.store, ref, clear), media_type="image/jpeg", headers=headers)


@router.get("/pictures/{key}/blurred.jpg")
def blurred_picture(ui: Ui, key: str) -> Response:
    return _picture(ui, key, clear=False)


@router.get("/pictures/{key}/clear.jpg")
def clear_picture(ui: Ui, key: str) -> Response:
    return _picture(ui, key, clear=True)


@router.get("/static/{name}")
def static(ui: Ui, name: str) -> FileResponse:
    """A file of the renderer's static folder, by its name alone: no path reaches elsewhere."""
    if name not in ui.static:
        raise HTTPException(404, "no such file")
    return FileResponse(STATIC_DIR / name, headers={"cache-control": _REVALIDATED})


# --- signing in --------------------------------------------------------------------------


#: The pages' style sheet and icon, which the sign-in form shares where the renderer has them.
_SIGN_IN_ASSETS = {
    "qarina.css": '<link rel="stylesheet" href="{}">',
    "qarina.svg": '<link rel="icon" href="{}" type="image/svg+xml">',
}


def _after_sign_in(wanted: str | None) -> str:
    """Where the form sends a browser once signed in: the page it asked for when that is a
    page of /ui, else the backlog (never elsewhere: a link to the form cannot send a reviewer
    to another site)."""
    if wanted and _NEXT.fullmatch(wanted) and not wanted.startswith(SIGN_IN_PATH):
        return wanted
    return f"{UI_PREFIX}/"


def _sign_in_page(
    ui: UiContext, http: fastapi.Request, wanted: str | None, refused: bool = False
) -> HTMLResponse:
    links = LiveLinks()
    head = "".join(
        template.format(links.asset(name))
        for name, template in _SIGN_IN_ASSETS.items()
        if name in ui.static
    )
    message = '<p class="refused" role="alert">That token is not known.</p>' if refused else ""
    if not _keeps_secure_cookies(http):
        message += (
            '<p class="refused" role="alert">This address is plain HTTP: a browser keeps the'
            " sign-in only over HTTPS, or at localhost or 127.0.0.1 (an SSH tunnel).</p>"
        )
    after = html.escape(_after_sign_in(wanted))
    hours = ui.sessions.lifetime_s / 3600
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Qarina: sign in</title>
<meta name="viewport" content="width=device-width, initial-scale=1">{head}</head>
<body><main class="sign-in"><h1>Qarina review pages</h1>{message}
<form method="post" action="{SIGN_IN_PATH}">
<label for="token">API token</label>
<input id="token" name="token" type="password" autocomplete="current-password" required autofocus>
<input type="hidden" name="next" value="{after}">
<button type="submit">Sign in</button>
</form>
<p>A token of the service's tokens file opens these pages in this browser for {hours:g} hours,
or until you sign out.</p></main></body></html>
"""
    return HTMLResponse(page, 401 if refused else 200)


def _keeps_secure_cookies(http: fastapi.Request) -> bool:
    """Whether the browser keeps the `Secure` session cookie at the address it asked for:
    HTTPS (a proxy in front says so in `X-Forwarded-Proto`, which uvicorn trusts from the
    loopback address), or a loopback host name, which browsers count as secure."""
    host = http.url.hostname or ""
    if http.url.scheme == "https" or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _from_this_service(http: fastapi.Request) -> bool:
    """A form sent from a page of this service, as far as the browser says where it was sent
    from: `Sec-Fetch-Site`, when sent (current browsers), must be same-origin, and `Origin`,
    when sent, must name the host the form went to (`Host`). Every answer here asks for no
    referrer, which makes a browser send `Origin: null` from the service's own form too, so
    null passes only with same-origin beside it. A request with neither header (a script,
    an old browser) forges nothing: its sender holds the token."""
    site = http.headers.get("sec-fetch-site")
    origin = http.headers.get("origin")
    if site is not None and site != "same-origin":
        return False
    if origin is None:
        return True
    if origin == "null":
        return site == "same-origin"
    host = http.headers.get("host", "")
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and bool(host) and parts.netloc.lower() == host.lower()


@router.get("/login")
def sign_in_form(
    http: fastapi.Request,
    ui: Ui,
    wanted: Annotated[str | None, Query(alias="next", max_length=2048)] = None,
) -> HTMLResponse:
    return _sign_in_page(ui, http, wanted)


@router.post("/login")
async def sign_in(http: fastapi.Request, ui: Ui) -> Response:
    """The form's token, checked as the gate checks a bearer token (in constant time); a
    known one opens a session. The body is the gate's to bound, like any other.

    Refused (403) from a page elsewhere: with no form token to check, a page on another site
    could otherwise sign a reviewer's browser in under the other site's own token, and show
    them pages while they believe they are in their own session.
    """
    if not _from_this_service(http):
        raise HTTPException(403, "sign in from this service's own form")
    fields = parse_qs((await http.body()).decode("latin-1"))
    token = fields.get("token", [""])[0]
    wanted = fields.get("next", [""])[0]
    owner = token_owner(token.encode(), ui.tokens) if token else None
    if owner is None:
        return _sign_in_page(ui, http, wanted, refused=True)
    response = RedirectResponse(_after_sign_in(wanted), 303)
    response.set_cookie(
        SESSION_COOKIE,
        ui.sessions.open(owner),
        max_age=int(ui.sessions.lifetime_s),
        path=UI_PREFIX,
        secure=True,
        httponly=True,
        samesite="strict",
    )
    return response


@router.post("/logout")
def sign_out(http: fastapi.Request, ui: Ui) -> RedirectResponse:
    """Ends the session here and in the browser. A POST, so no link or picture on any page
    can sign a reviewer out."""
    session_id = http.cookies.get(SESSION_COOKIE)
    if session_id:
        ui.sessions.close(session_id)
    response = RedirectResponse(SIGN_IN_PATH, 303)
    response.delete_cookie(
        SESSION_COOKIE,
        path=UI_PREFIX,
        secure=True,
        httponly=True,
        samesite="strict",
    )
    return response
