"""What every operation works with: the settings the service gives, the context `create_app`
makes once, and the dependencies that hand an operation its context and its caller."""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import anyio
import fastapi
from fastapi import Depends, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from evidence.records import CurrentKeys
from evidence.store import Store
from pipelines.api.auth import ApiToken, Caller, token_owner
from pipelines.config import QarinaConfig
from pipelines.plan import Plan


@dataclass(frozen=True)
class ApiSettings:
    """What `qarina serve --http` is told besides the address."""

    tokens_file: Path
    #: Folders whose contents may be registered by path; none: registration by path is off.
    allowed_roots: tuple[Path, ...]
    upload_max_bytes: int


@dataclass(frozen=True)
class RequestContext:
    """What every operation of one app works with, made once by `create_app`."""

    store: Store
    config: QarinaConfig
    settings: ApiSettings
    tokens: tuple[ApiToken, ...]
    #: The allowed roots with their symlinks resolved, as paths are compared with them.
    roots: tuple[Path, ...]
    plan: Plan
    current: CurrentKeys
    on_register: Callable[[], None]
    upload_threads: anyio.CapacityLimiter
    #: Uploads register one at a time on SQLite, which takes one writer at a time anyway:
    #: its busy handler sleeps and polls, so waiting writers overtake each other. With 50
    #: clients uploading at once the slowest 1% waited 2.3 s (the slowest 4.7 s) without
    #: this lock and about 1 s (1.5 s) behind it, at the same throughput (`qarina bench
    #: api`, 2 cores). PostgreSQL takes many writers.
    turns: AbstractContextManager[Any]

    def inside_roots(self, raw: str) -> tuple[Path, tuple[bytes, ...]]:
        """The allowed root (resolved) that `raw` names a path in, and the names below it,
        as raw bytes (403 when no root holds it).

        Only the spelling is compared (the root as given or as resolved, then names): the way
        down from the root is walked by descriptor (`pipelines.ingest.ingest_below`), which
        refuses any link on it. Resolving links here instead would check a path that a
        folder swapped for a link afterwards sends elsewhere.
        """
        try:
            path = Path(raw)
            for given, root in zip(self.settings.allowed_roots, self.roots, strict=True):
                for spelled in (root, Path(os.path.abspath(given))):
                    if path.is_relative_to(spelled):
                        below = path.relative_to(spelled).parts
                        return root, tuple(os.fsencode(name) for name in below)
        except ValueError:
            raise HTTPException(422, "not a usable path") from None
        raise HTTPException(403, "outside the folders this service may register from")

    def too_large(self) -> HTTPException:
        return HTTPException(
            413, f"larger than this service takes ({self.settings.upload_max_bytes} bytes)"
        )


def _context(http: fastapi.Request) -> RequestContext:
    context: RequestContext = http.app.state.qarina
    return context


_BEARER = HTTPBearer(
    auto_error=False, description="A token of the tokens file `qarina serve --tokens` reads."
)


def caller(
    context: Annotated[RequestContext, Depends(_context)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)],
) -> Caller:
    """The owner of the presented token; 401 without a known one."""
    owner = None
    if credentials is not None:
        owner = token_owner(credentials.credentials.encode("latin-1"), context.tokens)
    if owner is None:
        raise HTTPException(401, "a known bearer token is required", {"WWW-Authenticate": "Bearer"})
    return Caller(owner)


Ctx = Annotated[RequestContext, Depends(_context)]
Authenticated = Annotated[Caller, Depends(caller)]
