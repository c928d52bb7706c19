"""The operators' switches (requeue, pause, resume, requests and their priority): each a
custody event naming the token."""

from __future__ import annotations

import dataclasses

import fastapi
from fastapi import HTTPException

from evidence import controls, requests
from evidence.requeue import requeue_failed
from pipelines.api.auth import Caller
from pipelines.api.context import Authenticated, Ctx, RequestContext
from pipelines.api.models import (
    PauseChangeOut,
    PauseIn,
    PriorityIn,
    PriorityOut,
    RequestIn,
    RequestOut,
    RequeueIn,
    RequeueOut,
    problem,
)

#: Put under `/v1`, behind a token, by `pipelines.api.app`.
router = fastapi.APIRouter()


@router.post("/requeue", responses=problem(404, "No such stage or request."))
def requeue(body: RequeueIn, context: Ctx, who: Authenticated) -> RequeueOut:
    """Queue failed and dead jobs again (of one stage, of one request's items) with their
    attempts reset; each one a custody event with the reason."""
    current = context.current
    keys = {key for stage_keys in current.values() for key in stage_keys}
    if body.stage is not None:
        if body.stage not in current:
            raise HTTPException(404, "no such stage")
        keys = set(current[body.stage])
    if body.request is not None and requests.get(context.store.database, body.request) is None:
        raise HTTPException(404, "no such request")
    count = requeue_failed(
        context.store.database,
        keys,
        who.actor("requeue"),
        body.note,
        stage=body.stage,
        request_ref=body.request,
        failure_reason=body.failure_reason.value if body.failure_reason else None,
    )
    if count:
        context.on_register()
    return RequeueOut(requeued=count)


def _switch(
    context: RequestContext, paused: bool, body: PauseIn | None, who: Caller
) -> PauseChangeOut:
    database = context.store.database
    tool = "pause" if paused else "resume"
    reason = None if body is None else body.reason
    changed = controls.set_paused(database, paused, who.actor(tool), reason)
    if not paused:
        context.on_register()  # a waiting driver leases at once
    state = controls.pause_state(database)
    return PauseChangeOut(**dataclasses.asdict(state), changed=changed)


@router.post("/pause")
def pause(context: Ctx, who: Authenticated, body: PauseIn | None = None) -> PauseChangeOut:
    """Stop new leases on every driver (running jobs finish)."""
    return _switch(context, True, body, who)


@router.post("/resume")
def resume(context: Ctx, who: Authenticated, body: PauseIn | None = None) -> PauseChangeOut:
    """Lease again."""
    return _switch(context, False, body, who)


@router.post("/requests")
def create_request(body: RequestIn, context: Ctx, who: Authenticated) -> RequestOut:
    """Create a request for assistance, or change one (what is not given is kept); its
    items' queued jobs take its priority at once."""
    made = requests.create(
        context.store.database,
        body.ref,
        who.actor("request"),
        priority=body.priority,
        deadline=body.deadline,
        clear_deadline=body.clear_deadline,
    )
    return RequestOut(**dataclasses.asdict(made))


@router.post("/requests/priority", responses=problem(404, "No such request."))
def request_priority(body: PriorityIn, context: Ctx, who: Authenticated) -> PriorityOut:
    """Re-prioritise a request and its items' queued jobs."""
    try:
        changed = requests.set_priority(
            context.store.database, body.ref, body.priority, who.actor("request")
        )
    except requests.UnknownRequest:
        raise HTTPException(404, "no such request") from None
    return PriorityOut(ref=body.ref, priority=body.priority, queued_jobs_changed=changed)
