"""The gate every request passes before it is routed: a known bearer token, then a bounded body.

A token checked by a FastAPI dependency is checked too late: FastAPI reads and parses an
operation's JSON body before it solves the dependencies, so without a token a malformed body
got 422 rather than 401, and any process on the host could make the service hold as much JSON
as it cared to send. `/openapi.json` is no operation, and no dependency guarded it. The gate
answers before the application routes the request or reads a byte of its body, for every
path alike.

A browser cannot send a bearer token, so the review pages under `/ui` also take the session
cookie a token opens at `/ui/login` (`pipelines.api.ui`), and that cookie opens nothing else:
a request another site makes a reviewer's browser send to `/v1` carries no token and is
refused as before, whatever cookie comes with it. Under `/ui` the gate sends a browser
without a session to the sign-in form instead of answering 401.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from urllib.parse import quote

from starlette.responses import JSONResponse, RedirectResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocketClose

from pipelines.api.auth import ApiToken, BrowserSessions, Caller, token_owner

#: The largest body of any operation but the upload. The largest valid one, a registration
#: (a path of 4096 characters, at most 12 bytes each as JSON escapes, and two labels of 200),
#: is under 64 KiB: 1 MiB leaves any spacing a client adds room, and bounds what one request
#: can make the service hold and parse.
JSON_BODY_MAX_BYTES = 1 << 20


def _unauthorized() -> JSONResponse:
    """The 401 the `caller` dependency gave before the gate, word for word."""
    return JSONResponse(
        {"detail": "a known bearer token is required"}, 401, {"WWW-Authenticate": "Bearer"}
    )


def _presented_token(scope: Scope) -> bytes | None:
    """The token of the request's one `Authorization: Bearer` header (the scheme in any case,
    as RFC 9110 has it); None without one, or with more than one (which to believe?)."""
    values = [value for name, value in scope["headers"] if name == b"authorization"]
    if len(values) != 1:
        return None
    scheme, _, token = values[0].partition(b" ")
    token = token.strip(b" \t")
    return token if scheme.lower() == b"bearer" and token else None


#: Where the review pages live: the one place a browser session's cookie is taken.
UI_PREFIX = "/ui"
#: The cookie `/ui/login` sets.
SESSION_COOKIE = "qarina_session"
SIGN_IN_PATH = f"{UI_PREFIX}/login"
#: What a browser reaches under /ui before it signs in: the sign-in form, and the pages' own
#: script and style sheet (one name each, nothing below).
_OPEN_UI_PATHS = re.compile(rf"{SIGN_IN_PATH}|{UI_PREFIX}/static/[^/]+")


def under_ui(path: str) -> bool:
    return path == UI_PREFIX or path.startswith(f"{UI_PREFIX}/")


def _session_id(scope: Scope) -> str | None:
    """The value of the request's one session cookie; None without one, or with more than
    one (which to believe?)."""
    values = []
    for name, header in scope["headers"]:
        if name == b"cookie":
            for pair in header.split(b";"):
                key, _, value = pair.strip().partition(b"=")
                if key == SESSION_COOKIE.encode():
                    values.append(value.decode("latin-1"))
    return values[0] if len(values) == 1 and values[0] else None


def _to_sign_in(scope: Scope) -> RedirectResponse:
    """303 to the sign-in form, which sends the browser back to the page it asked for by GET."""
    target = SIGN_IN_PATH
    if scope["method"] == "GET":
        query = scope["query_string"].decode("latin-1")
        wanted = scope["path"] + (f"?{query}" if query else "")
        target += f"?next={quote(wanted, safe='')}"
    return RedirectResponse(target, 303)


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit():
            return int(value)
    return None


class Gate:
    """Refuses, before routing, a request without a known token (401 with `WWW-Authenticate:
    Bearer`) and a body larger than `body_max_bytes` (413: at once when its length says so,
    else as soon as the bytes pass the cap, never holding more); it leaves the caller in the
    request's state (`request.state.caller`), so the token is compared once.

    Under /ui a session of `sessions` stands for a token, and a request with neither is sent
    to the sign-in form (303), which it may reach, like the pages' static files, unsigned.

    The `unbounded` paths get their body as it comes: the upload streams to the blob store
    under a cap of its own, far above what any JSON needs.
    """

    def __init__(
        self,
        app: ASGIApp,
        tokens: Sequence[ApiToken],
        sessions: BrowserSessions,
        body_max_bytes: int,
        unbounded: Collection[str],
    ) -> None:
        self.app = app
        self.tokens = tokens
        self.sessions = sessions
        self.body_max_bytes = body_max_bytes
        self.unbounded = frozenset(unbounded)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":
            # No operation is a WebSocket: nothing but HTTP reaches the application.
            await WebSocketClose(1008)(scope, receive, send)
            return
        path = scope["path"]
        owner = self._owner(scope, under_ui(path))
        if owner is not None:
            scope.setdefault("state", {})["caller"] = Caller(owner)
        elif not under_ui(path):
            await _unauthorized()(scope, receive, send)
            return
        elif not _OPEN_UI_PATHS.fullmatch(path):
            await _to_sign_in(scope)(scope, receive, send)
            return
        if scope["path"] in self.unbounded:
            await self.app(scope, receive, send)
            return
        declared = _declared_length(scope)
        if declared is not None and declared > self.body_max_bytes:
            await self._too_large()(scope, receive, send)
            return
        await self._bounded(scope, receive, send)

    def _owner(self, scope: Scope, ui: bool) -> str | None:
        """The name of the presented token, or under /ui of the presented session's."""
        token = _presented_token(scope)
        owner = None if token is None else token_owner(token, self.tokens)
        if owner is None and ui:
            session_id = _session_id(scope)
            owner = None if session_id is None else self.sessions.owner(session_id)
        return owner

    def _too_large(self) -> JSONResponse:
        return JSONResponse(
            {"detail": f"body larger than this service takes ({self.body_max_bytes} bytes)"}, 413
        )

    async def _bounded(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The application with its body counted as it arrives: past the cap, the gate sends
        the 413 itself and tells the application the client left, so that whatever the
        application makes of a body cut short (FastAPI: a 400) is answered to no one."""
        received = 0
        started = False
        cut = False  # past the cap: the application reads no more of the body
        answered = False  # and the gate sent the 413

        async def counted() -> Message:
            nonlocal received, cut, answered
            if cut:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.body_max_bytes:
                    cut = True
                    if not started:
                        await self._too_large()(scope, receive, send)
                        answered = True
                    return {"type": "http.disconnect"}
            return message

        async def tracked(message: Message) -> None:
            nonlocal started
            if answered:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, counted, tracked)
