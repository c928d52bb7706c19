"""The API's request and response bodies, the patterns its query and header parameters
follow, and the problems an operation documents: what the OpenAPI says of each call."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from evidence.schema import NAME_MAX_CHARS, NAME_PATTERN
from workers.base import FailureReason

#: A name an operator types (source, request reference): one line, no control characters.
Label = Annotated[
    str,
    StringConstraints(min_length=1, max_length=NAME_MAX_CHARS, pattern=NAME_PATTERN),
]
#: Free text kept in custody (why a requeue, a pause).
Reason = Annotated[
    str,
    StringConstraints(min_length=1, max_length=1000, pattern=r"^[^\x00]+$"),
]
#: What the store's priority column holds (a 32-bit integer on PostgreSQL).
Priority = Annotated[int, Field(ge=-(2**31), le=2**31 - 1, description="Higher runs first.")]
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-fA-F]{64}$")]


def to_utc(value: dt.datetime) -> dt.datetime:
    try:
        return value.astimezone(dt.UTC)
    except OverflowError:
        raise ValueError("outside the years a timestamp can hold") from None


#: A moment with its UTC offset (a deadline means nothing without one), held as UTC.
Moment = Annotated[AwareDatetime, AfterValidator(to_utc)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RegisterPath(_Body):
    path: Annotated[
        str,
        StringConstraints(min_length=1, max_length=4096, pattern=r"^/[^\x00]*$"),
    ] = Field(description="Absolute path of a file or folder inside an allowed root.")
    source: Label = Field(description="Who or what the material came from.")
    priority: Priority = 0
    request: Label | None = Field(None, description="Request reference.")


class IngestSummaryOut(BaseModel):
    files: int
    new_items: int
    duplicates: int
    bytes: int
    refused: dict[str, int] = Field(description="Inputs refused (recorded in custody), by reason.")
    sha256s: list[str] = Field(description="The stored items, in walk order.")


class UploadOut(BaseModel):
    sha256: str
    size_bytes: int
    new_item: bool = Field(description="False when the same bytes were already stored.")
    acquisition_id: int
    replayed: bool = Field(
        description="True when the Idempotency-Key was registered before: nothing new recorded."
    )


class _Open(BaseModel):
    """Shapes the store gives: what is listed is documented; what a newer store adds is kept."""

    model_config = ConfigDict(extra="allow")


class AcquisitionOut(_Open):
    id: int
    source: str
    original_name: str = Field(description="Bytes that are not UTF-8 appear as \\xNN.")
    original_name_hex: str = Field(description="The name's raw bytes, hex.")
    original_path: str
    original_mtime: str | None
    operator: str
    acquired_at: str
    priority: int
    request_ref: str | None


class ArtifactOut(_Open):
    sha256: str
    stage: str
    role: str
    media_type: str
    size_bytes: int
    meta: dict[str, Any] | None


class ResultOut(_Open):
    stage: str
    stage_version: str
    config_hash: str
    status: str
    skip_reason: str | None
    data: dict[str, Any] | None
    data_sha256: str | None
    provenance: dict[str, Any] | None
    created_at: str
    artifacts: list[ArtifactOut]


class FailureOut(_Open):
    stage: str
    reason: str | None
    detail: str | None
    state: str
    attempts: int


class MatchOut(_Open):
    other: str
    kind: str
    algorithm: str
    distance: float
    time_s: float | None
    other_time_s: float | None
    details: dict[str, Any] | None


class ItemOut(_Open):
    """What `qarina show --json` gives, under the current plan's keys."""

    sha256: str
    kind: str | None
    size_bytes: int
    blob_path: str
    acquisitions: list[AcquisitionOut]
    results: dict[str, ResultOut] = Field(
        description="Per stage, its result under the current key."
    )
    superseded: list[ResultOut] = Field(description="Results under keys the plan no longer names.")
    failures: list[FailureOut]
    pending: list[str]
    artifacts: list[ArtifactOut]
    matches: list[MatchOut]


class PauseOut(BaseModel):
    paused: bool
    reason: str | None = None
    since: dt.datetime | None = None
    by: str | None = None


class RequestOut(BaseModel):
    ref: str
    priority: int
    deadline: dt.datetime | None
    created_at: dt.datetime
    created_by: str


class StatusOut(BaseModel):
    """What `qarina status --json` gives, with the pause switch and the request asked about."""

    items: int
    stages: dict[str, dict[str, int]] = Field(description="Jobs per stage and state.")
    open_jobs: int
    throughput_per_s: float | None
    eta_s: float | None
    window_s: int
    failures_by_reason: dict[str, int]
    stage_errors: dict[str, int]
    superseded_items: dict[str, int]
    other_key_jobs: dict[str, dict[str, int]]
    unreviewed_items: int = Field(
        description="Photos, videos and recordings with no review of their own nor of any"
        " copy in their near-duplicate cluster (`qarina review`)."
    )
    paused: PauseOut
    request: RequestOut | None = Field(None, description="The request of `?request=`.")
    progress: dict[str, Any] | None = Field(
        None,
        description="With `?request=`: its items and stages, the work ahead of it, its ETA"
        " and deadline verdict (`pipelines.backlog.BacklogProgress`).",
    )


class RequeueIn(_Body):
    note: Reason = Field(description="Why, kept in each job's custody.")
    stage: Label | None = Field(None, description="Only this stage.")
    request: Label | None = Field(None, description="Only items of this request.")
    failure_reason: FailureReason | None = Field(
        None, description="Only jobs that ended with this failure reason."
    )


class RequeueOut(BaseModel):
    requeued: int


class PauseIn(_Body):
    reason: Reason | None = None


class PauseChangeOut(PauseOut):
    changed: bool = Field(description="False when the switch was already in that position.")


class RequestIn(_Body):
    ref: Label
    priority: Priority | None = Field(None, description="Kept when not given (new: 0).")
    deadline: Moment | None = Field(
        None, description="With its UTC offset; kept when not given."
    )
    clear_deadline: bool = Field(False, description="Remove the request's deadline.")


class PriorityIn(_Body):
    ref: Label
    priority: Priority


class PriorityOut(BaseModel):
    ref: str
    priority: int
    queued_jobs_changed: int


class SearchHitOut(BaseModel):
    sha256: str
    start_s: float
    end_s: float
    text: str
    flags: list[str]


class ItemSummaryOut(_Open):
    sha256: str
    kind: str | None
    acquisitions: int
    sources: list[str]


class DistanceOut(_Open):
    a_sha256: str
    b_sha256: str
    pdq: int


class ClusterOut(_Open):
    members: list[ItemSummaryOut]
    sources: list[str]
    links: list[dict[str, Any]] = Field(description="The stored links between members.")
    distances: list[DistanceOut] = Field(description="PDQ distance of every pair of stills.")


class DupesOut(_Open):
    clusters: list[ClusterOut]
    exact: list[ItemSummaryOut] = Field(description="Items acquired more than once.")


def problem(status: int, description: str) -> dict[int | str, dict[str, Any]]:
    return {status: {"description": description}}


TEXT_QUERY = r"^[^\x00-\x1f\x7f]+$"
#: A header of visible ASCII: what percent-encoding gives.
ENCODED_HEADER = r"^[\x20-\x7e]*$"
