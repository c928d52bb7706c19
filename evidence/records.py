"""The records that travel between the driver and the workers: job keys, leases, outcomes.

Plain frozen dataclasses with no database import, so a Ray actor that only runs a stage does
not pay for loading SQLAlchemy and Alembic (about a second of CPU per actor on this machine).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True, order=True)
class ResultKey:
    """What made a result: the stage, its code version, and the hash of its options together
    with the keys of the results it read. With the item's SHA-256 it is the idempotency key
    of a job and of its result, so two configurations of a stage never share a result, and a
    stage fed by a newer upstream result never passes off the older one's output as its own.
    """

    stage: str
    stage_version: str
    config_hash: str

    def as_json(self) -> dict[str, str]:
        return {
            "stage": self.stage,
            "stage_version": self.stage_version,
            "config_hash": self.config_hash,
        }


#: Per stage, the keys the current plan names (one per kind of item where the stage reads
#: different upstream results for different kinds): what readers call "current". Results
#: under other keys are superseded; they stay, and are shown apart.
CurrentKeys = Mapping[str, frozenset[ResultKey]]


@dataclass(frozen=True)
class JobSpec:
    """Which stage should run on an item, under which key (version, options and the keys of
    what it reads), once which results exist."""

    stage: str
    stage_version: str
    config_hash: str
    #: Results (by key) that must exist before this job may be queued, and that it reads.
    requires: tuple[ResultKey, ...] = ()

    @property
    def key(self) -> ResultKey:
        return ResultKey(self.stage, self.stage_version, self.config_hash)


#: What a failure counts against (`Failure.counts_against`).
CountsAgainst = Literal["attempts", "worker_losses", "nothing"]


@dataclass(frozen=True)
class LeasedJob:
    id: int
    token: int
    sha256: str
    stage: str
    stage_version: str
    config_hash: str
    kind: str | None
    priority: int
    attempts: int
    max_attempts: int
    worker_losses: int = 0
    #: The reason the previous attempt failed, None on a first attempt (or after a lease that
    #: expired without an outcome): the driver runs a job that timed out in a batch of its own.
    last_error: str | None = None

    @property
    def key(self) -> ResultKey:
        return ResultKey(self.stage, self.stage_version, self.config_hash)


@dataclass(frozen=True)
class ArtifactRecord:
    sha256: str
    role: str
    media_type: str
    size_bytes: int
    meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MemberRecord:
    """A file found inside an archive item, already stored by content."""

    sha256: str
    size_bytes: int
    #: The path inside the archive, raw bytes as the archive holds it.
    inner_path: bytes


@dataclass(frozen=True)
class Success:
    """A stage finished: with data, or with a recorded skip reason."""

    data: Mapping[str, Any]
    provenance: Mapping[str, Any]
    artifacts: Sequence[ArtifactRecord] = ()
    skip_reason: str | None = None
    #: Set by the probe stage: the item's kind as decided from its bytes.
    item_kind: str | None = None
    follow_ups: Sequence[JobSpec] = ()
    #: Files found inside an archive, registered as items with the result, and the jobs
    #: each new item starts with.
    members: Sequence[MemberRecord] = ()
    member_jobs: Sequence[JobSpec] = ()


@dataclass(frozen=True)
class Failure:
    reason: str
    detail: str
    retryable: bool
    provenance: Mapping[str, Any] = field(default_factory=dict)
    #: Set by the probe stage when it could not decide a media kind.
    item_kind: str | None = None
    #: What the failure counts against: the job's `attempts`; its `worker_losses` (its worker
    #: died while it ran alone: the job, or a kill from outside, may have been the cause); or
    #: `nothing` (its worker died while it ran batched with others, any of whom may have
    #: been the cause; its next attempt runs alone).
    counts_against: CountsAgainst = "attempts"


@dataclass(frozen=True)
class Unstarted:
    """A batch that never began: its worker died while the batch waited behind another.

    Nothing happened to its items, so its jobs go back to the queue as they were, with no
    attempt or worker loss counted and their last error kept (a job that was to run alone
    still does). Counted as a loss, every job queued on a killed worker would pay for one
    kill: on a cluster losing a worker every 30 s, jobs that never ran went dead.
    """

    detail: str


Outcome = Success | Failure | Unstarted
