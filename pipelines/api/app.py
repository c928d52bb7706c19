"""The application: the operations of `intake`, `results` and `operations` under `/v1` and the
review pages under `/ui`, every request behind the gate (a token or, for the pages, a browser
session; a bounded body), with errors answered without a file name reaching the log."""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import anyio
import fastapi
from fastapi import Depends
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from evidence.store import Store
from pipelines.api import intake, operations, results, ui
from pipelines.api.auth import BrowserSessions, Caller, load_tokens
from pipelines.api.context import ApiSettings, RequestContext, caller
from pipelines.api.gate import JSON_BODY_MAX_BYTES, Gate
from pipelines.api.intake import UPLOAD_THREADS
from pipelines.api.models import problem
from pipelines.config import QarinaConfig
from pipelines.plan import Plan

log = logging.getLogger(__name__)


class _QuietErrors:
    """Answers an unexpected exception with a bare 500 and logs its type alone.

    Left to the server, the traceback would be logged with the exception's message, and an
    OSError's message names its path: file names never go to a log.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as error:
            log.error("%s %s failed: %s", scope["method"], scope["path"], type(error).__name__)
            if not started:
                await JSONResponse({"detail": "internal error"}, 500)(scope, receive, send)


class _AsciiJSON(JSONResponse):
    """JSON with everything outside ASCII escaped: a 422 echoes the input it refused, which
    may hold a lone surrogate that UTF-8 cannot encode (and the answer would be a 500)."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False).encode("ascii")


async def _invalid(_http: fastapi.Request, error: Exception) -> Response:
    """FastAPI's answer to invalid input, rendered by `_AsciiJSON`."""
    assert isinstance(error, RequestValidationError)
    return _AsciiJSON({"detail": jsonable_encoder(error.errors())}, 422)


#: Every operation needs a token; the OpenAPI says so on each (`caller` declares the bearer
#: scheme), and that the gate refuses a body past its cap.
router = fastapi.APIRouter(
    prefix="/v1",
    dependencies=[Depends(caller)],
    responses=problem(401, "No known token.")
    | problem(413, f"Body larger than {JSON_BODY_MAX_BYTES} bytes."),
)
router.include_router(intake.router)
router.include_router(results.router)
router.include_router(operations.router)


def _gated_caller(http: fastapi.Request) -> Caller:
    """Stands in for `context.caller`: the gate compared the token before routing and left
    its owner in the request's state, so the token is not compared again. The operations and
    the OpenAPI still name `caller`, whose bearer dependency declares the security scheme."""
    who: Caller = http.state.caller
    return who


def create_app(
    store: Store,
    config: QarinaConfig,
    settings: ApiSettings,
    on_register: Callable[[], None],
) -> fastapi.FastAPI:
    """The API over `store`; `on_register` is called after each registration (the service
    wakes its driver with it).

    Raises:
        TokensFileError: the tokens file is unsafe or unusable.
    """
    plan = Plan.default(settings=config)
    tokens = load_tokens(settings.tokens_file)
    sessions = BrowserSessions()
    app = fastapi.FastAPI(
        title="Qarina",
        summary="Media processing for an evidence repository: intake, results, operations.",
        version="1",
        # The interactive pages load scripts from a CDN: an offline service serves the
        # OpenAPI document alone.
        docs_url=None,
        redoc_url=None,
    )
    app.state.qarina = RequestContext(
        store=store,
        config=config,
        settings=settings,
        tokens=tokens,
        roots=tuple(Path(os.path.realpath(root)) for root in settings.allowed_roots),
        plan=plan,
        current=plan.current_keys(),
        on_register=on_register,
        upload_threads=anyio.CapacityLimiter(UPLOAD_THREADS),
        turns=threading.Lock() if store.database.is_sqlite else nullcontext(),
    )
    app.state.ui = ui.UiContext.create(store, config, tokens, sessions)
    app.include_router(router)
    app.include_router(ui.router)
    app.dependency_overrides[caller] = _gated_caller
    app.add_exception_handler(RequestValidationError, _invalid)
    # The last added runs first: errors are kept quiet around the pages' headers, which are
    # put on the gate's answers too, and the gate runs before routing.
    app.add_middleware(
        Gate,
        tokens=tokens,
        sessions=sessions,
        body_max_bytes=JSON_BODY_MAX_BYTES,
        unbounded=[app.url_path_for("upload")],
    )
    app.add_middleware(ui.UiHeaders)
    app.add_middleware(_QuietErrors)
    return app
