"""Results: an item, the status of the work, transcript search, and duplicates."""

from __future__ import annotations

import dataclasses
from typing import Annotated

import fastapi
from fastapi import HTTPException, Query

from evidence import controls, requests
from pipelines.api.context import Authenticated, Ctx
from pipelines.api.models import (
    TEXT_QUERY,
    DupesOut,
    ItemOut,
    PauseOut,
    RequestOut,
    SearchHitOut,
    Sha256,
    StatusOut,
    problem,
)
from pipelines.backlog import backlog_progress
from pipelines.dedup.reports import dupes_report
from pipelines.search import search_transcripts
from pipelines.session import open_matcher

#: Put under `/v1`, behind a token, by `pipelines.api.app`.
router = fastapi.APIRouter()


@router.get("/items/{sha256}", responses=problem(404, "No such item."))
def item(sha256: Sha256, context: Ctx) -> ItemOut:
    """Everything known about one item, as `qarina show --json` gives it."""
    record = context.store.show(sha256.lower(), context.current)
    if record is None:
        raise HTTPException(404, "no such item")
    return ItemOut.model_validate(record)


@router.get("/status", responses=problem(404, "No such request."))
def status(
    context: Ctx,
    request: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=200,
            pattern=TEXT_QUERY,
            description="Only the items of this request.",
        ),
    ] = None,
) -> StatusOut:
    """Jobs per stage and state under the current keys, throughput, ETA, failures, and the
    pause switch; with `request`, of that request's items, and the request itself."""
    store = context.store
    found = None
    if request is not None:
        found = requests.get(store.database, request)
        if found is None:
            raise HTTPException(404, "no such request")
    report = store.status(request, current=context.current)
    pause = controls.pause_state(store.database)
    return StatusOut(
        items=report.items,
        stages={stage.stage: stage.counts for stage in report.stages},
        open_jobs=report.open_jobs,
        throughput_per_s=report.throughput_per_s,
        eta_s=report.eta_s,
        window_s=report.window_s,
        failures_by_reason=report.failures_by_reason,
        stage_errors=report.stage_errors,
        superseded_items=report.superseded_items,
        other_key_jobs=report.other_key_jobs,
        unreviewed_items=report.unreviewed_items,
        paused=PauseOut(**dataclasses.asdict(pause)),
        request=None if found is None else RequestOut(**dataclasses.asdict(found)),
        progress=None
        if request is None
        else backlog_progress(store, context.plan, request).to_json(),
    )


@router.get("/search")
def search(
    context: Ctx,
    q: Annotated[
        str,
        Query(
            min_length=1,
            max_length=500,
            pattern=r"^[^\x00]+$",
            description="Words to find, with or without diacritics.",
        ),
    ],
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[SearchHitOut]:
    """Transcript segments that contain the words in order, with their times."""
    hits = search_transcripts(context.store, context.plan, q, limit)
    return [SearchHitOut(**hit) for hit in hits]


@router.get("/dupes")
def dupes(context: Ctx, who: Authenticated) -> DupesOut:
    """Near-duplicate clusters (members, sources, links, distances) and exact duplicates,
    after linking what was hashed since the last look."""
    open_matcher(context.config, context.store, context.plan).update(who.actor("match"))
    return DupesOut.model_validate(dupes_report(context.store, context.plan.keys("hashes")))
