"""Intake: registering a path already on this host, and uploads streamed into the blob store."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from functools import partial
from typing import Annotated
from urllib.parse import unquote_to_bytes

import anyio
import anyio.from_thread
import anyio.to_thread
import fastapi
from fastapi import Header, HTTPException, Query
from pydantic import AwareDatetime
from starlette.requests import ClientDisconnect

from evidence.blobs import BlobIntegrityError, BlobTooLarge
from evidence.store import Acquisition
from pipelines.api.auth import Caller
from pipelines.api.context import Authenticated, Ctx, RequestContext
from pipelines.api.models import (
    ENCODED_HEADER,
    TEXT_QUERY,
    IngestSummaryOut,
    RegisterPath,
    UploadOut,
    problem,
    to_utc,
)
from pipelines.ingest import Intake, NotBelow, ingest_below

log = logging.getLogger(__name__)


#: Bytes handed from the event loop to the thread that stores an upload at once: one hop
#: between them per MiB rather than per network read (64 KiB or less).
_UPLOAD_BLOCK = 1 << 20
#: Uploads stream on threads of their own, so slow senders never hold every thread of the
#: pool that the other operations run on.
UPLOAD_THREADS = 64
#: The prefix of an upload's intake key, before the token's name and the client's key.
_INTAKE_PREFIX = "http:"
#: Put under `/v1`, behind a token, by `pipelines.api.app`.
router = fastapi.APIRouter()


@router.post(
    "/items/register",
    responses=problem(403, "Outside the allowed roots.") | problem(404, "No such path."),
)
def register_path(body: RegisterPath, context: Ctx, who: Authenticated) -> IngestSummaryOut:
    """Register a file, or every file under a folder, that is on this host already: each is
    copied into the store by content, and ends as an item or a refusal in custody.

    The path is come down to from its allowed root by descriptor: a symlink anywhere below
    the root (even one swapped in meanwhile) is refused with 403, never followed out."""
    root, below = context.inside_roots(body.path)
    try:
        summary = ingest_below(
            context.store,
            context.plan,
            context.config.with_overrides(operator=who.operator),
            root,
            below,
            body.source,
            body.priority,
            body.request,
        )
    except NotBelow:
        raise HTTPException(403, "outside the folders this service may register from") from None
    except (FileNotFoundError, NotADirectoryError):
        raise HTTPException(404, "no such file or folder") from None
    if summary.files:
        context.on_register()
    return IngestSummaryOut(**dataclasses.asdict(summary))


def _intake(context: RequestContext, who: Caller) -> Intake:
    """Storing, registering and refusing as every intake route does, as the caller."""
    return Intake(context.store, context.plan, context.config, who.actor("ingest"))


def _store_upload(
    context: RequestContext, blocks: Iterator[bytes], who: Caller, acquisition: Acquisition
) -> UploadOut:
    """On a thread of its own: stream into the blob store, then register the arrival. An
    upload refused leaves a custody record (of its path's hash, as every refusal)."""
    intake = _intake(context, who)
    refuse = partial(intake.refuse, acquisition.source, acquisition.original_path)
    try:
        blob = context.store.blobs.put_stream(blocks, context.settings.upload_max_bytes)
    except BlobTooLarge:
        refuse("too_large")
        raise context.too_large() from None
    except BlobIntegrityError:
        refuse("integrity_error")
        raise
    with context.turns:
        registered = intake.register(blob, acquisition)
    acquisition_id = registered.acquisition_id
    if acquisition_id is None:  # the intake key was registered before
        key = acquisition.intake_key
        first = None if key is None else context.store.intake_arrival(key)
        if first is None or first[0] != blob.sha256:
            refuse("idempotency_key_reused")
            raise HTTPException(409, "this Idempotency-Key was used for other bytes")
        acquisition_id = first[1]
    else:
        context.on_register()
    return UploadOut(
        sha256=blob.sha256,
        size_bytes=blob.size_bytes,
        new_item=registered.new_item,
        acquisition_id=acquisition_id,
        replayed=registered.acquisition_id is None,
    )


@router.post(
    "/items/upload",
    responses=problem(400, "The upload ended before its last byte.")
    | problem(409, "Idempotency-Key used before for other bytes.")
    | problem(413, "Larger than the service takes."),
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": "The file's bytes, as they are.",
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        }
    },
)
async def upload(
    http: fastapi.Request,
    context: Ctx,
    who: Authenticated,
    source: Annotated[
        str,
        Query(
            min_length=1,
            max_length=200,
            pattern=TEXT_QUERY,
            description="Who or what the material came from.",
        ),
    ],
    x_original_name: Annotated[
        str,
        Header(
            max_length=4096,
            pattern=ENCODED_HEADER,
            description="The file's name as percent-encoded bytes (RFC 3986).",
        ),
    ],
    priority: Annotated[int, Query(ge=-(2**31), le=2**31 - 1)] = 0,
    request: Annotated[
        str | None,
        Query(min_length=1, max_length=200, pattern=TEXT_QUERY, description="Request reference."),
    ] = None,
    x_original_path: Annotated[
        str | None,
        Header(
            max_length=4096,
            pattern=ENCODED_HEADER,
            description="Where the file was, as percent-encoded bytes (default: its name).",
        ),
    ] = None,
    mtime: Annotated[
        AwareDatetime | None,
        Query(description="The file's modification time, with its UTC offset."),
    ] = None,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=200,
            pattern=r"^[\x21-\x7e]+$",
            description="Makes a retried upload register once (per token).",
        ),
    ] = None,
) -> UploadOut:
    """Store the request body as an original and record its arrival.

    The body is hashed while it is written to the store, never held in memory, and refused
    with 413 as soon as it passes the size cap (nothing is kept)."""
    try:
        original_mtime = None if mtime is None else to_utc(mtime)
    except ValueError:
        raise HTTPException(422, "mtime outside the years a timestamp can hold") from None
    name = unquote_to_bytes(x_original_name)
    acquisition = Acquisition(
        source=source,
        original_name=name,
        original_path=unquote_to_bytes(x_original_path) if x_original_path else name,
        operator=who.operator,
        original_mtime=original_mtime,
        priority=priority,
        request_ref=request,
        intake_key=None
        if idempotency_key is None
        else f"{_INTAKE_PREFIX}{who.token_name}:{idempotency_key}",
    )
    declared = http.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > context.settings.upload_max_bytes:
        refuse = _intake(context, who).refuse
        await anyio.to_thread.run_sync(
            refuse, acquisition.source, acquisition.original_path, "too_large"
        )
        raise context.too_large()
    stream = http.stream()

    async def next_block() -> bytes:
        block = bytearray()
        while len(block) < _UPLOAD_BLOCK:
            chunk = await anext(stream, None)
            if chunk is None:
                break
            block += chunk
        return bytes(block)

    def blocks() -> Iterator[bytes]:
        while block := anyio.from_thread.run(next_block):
            yield block

    try:
        return await anyio.to_thread.run_sync(
            _store_upload, context, blocks(), who, acquisition, limiter=context.upload_threads
        )
    except ClientDisconnect:
        log.warning("an upload ended before its last byte: nothing stored")
        raise HTTPException(400, "the upload ended before its last byte") from None
