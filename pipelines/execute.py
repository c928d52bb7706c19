"""Running one stage on leased jobs, identically inside a Ray actor or in the sequential runner.

A `StageHost` owns one stage instance (setup once), turns each job into a `StageInput`, runs
the stage in a scratch folder, stores the artifacts by content in the shared blob root, and
returns small outcomes: only hashes and JSON travel back to the driver, never media.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import logging
import os
import platform
import socket
import sysconfig
import tempfile
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path
from types import CodeType
from typing import Any

from evidence.blobs import BlobStore
from evidence.records import (
    ArtifactRecord,
    Failure,
    LeasedJob,
    MemberRecord,
    Outcome,
    Success,
)
from pipelines.plan import Plan
from workers.base import (
    ArtifactFile,
    FailureReason,
    Kind,
    MemberFile,
    Stage,
    StageEnvironment,
    StageError,
    StageInput,
    StageOutput,
    StageSkipped,
    result_to_json,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Task:
    """One leased job plus what the stage needs to read: a blob path and upstream results.

    `reads` names, per upstream stage, the key and data hash of the result read: the new
    result's provenance carries it, so it says which upstream result it was made from.
    """

    job: LeasedJob
    path: str
    upstream: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    artifacts: Mapping[str, str] = field(default_factory=dict)
    reads: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    depth: int = 0


def classify(error: Exception, job: LeasedJob) -> tuple[FailureReason, str, bool]:
    """The failure class of an exception a stage raised: reason, detail, retryable."""
    if isinstance(error, StageError):
        log.info("item %s stage %s failed: %s", job.sha256[:16], job.stage, error.reason)
        return error.reason, error.detail, error.retryable
    if isinstance(error, MemoryError):
        # The actor's own allocation failed; a retry may land on a less loaded node.
        log.warning("item %s stage %s ran out of memory", job.sha256[:16], job.stage)
        return FailureReason.RESOURCE_LIMIT, "stage ran out of memory", True
    if isinstance(error, OSError):
        # Reading the shared root or writing scratch failed: the disk or the mount, not the
        # item, so a later attempt (maybe on another node) may pass.
        log.warning("item %s stage %s: I/O error %s", job.sha256[:16], job.stage, error.errno)
        return FailureReason.STORE_ERROR, f"I/O error {error.errno} ({type(error).__name__})", True
    # Our own code failed: the same code on the same bytes fails again, so the job ends at
    # once, named by a fingerprint that groups one bug's failures.
    bug = bug_report(error)
    log.error("item %s stage %s: %s", job.sha256[:16], job.stage, bug)
    return FailureReason.STAGE_ERROR, bug, False


def bug_report(error: BaseException) -> str:
    """An exception as a stage_error detail: its type, where our code raised it, and a
    fingerprint of the traceback that is the same for every item the same bug hits.

    Only code locations enter it (module, function, line), never the message: a message
    may quote a file name, a tag value or a transcript.
    """
    frames = [
        (str(frame.f_globals.get("__name__", "?")), frame.f_code, line)
        for frame, line in traceback.walk_tb(error.__traceback__)
    ]
    fingerprint = hashlib.sha256(
        "\n".join(
            [type(error).__qualname__, *(f"{m}:{code.co_name}:{line}" for m, code, line in frames)]
        ).encode()
    ).hexdigest()[:16]
    ours = [f"{module}:{code.co_name}" for module, code, _ in frames if _is_ours(module, code)]
    where = ours[-1] if ours else "a library"
    return f"{type(error).__name__} in {where} (fingerprint {fingerprint})"


#: Where the standard library and installed packages live: their frames are not our code,
#: unless they are our own packages installed there.
_LIBRARY_ROOTS = tuple(
    sorted({sysconfig.get_paths()[name] for name in ("stdlib", "platstdlib", "purelib", "platlib")})
)
_OUR_PACKAGES = frozenset({"workers", "models", "evidence", "pipelines"})


def _is_ours(module: str, code: CodeType) -> bool:
    if module.partition(".")[0] in _OUR_PACKAGES:
        return True
    return not code.co_filename.startswith(_LIBRARY_ROOTS)


def _qarina_version() -> str:
    try:
        return importlib_metadata.version("qarina")
    except importlib_metadata.PackageNotFoundError:
        return "source"


class StageHost:
    """A stage made ready to run jobs: heavy setup happens once, here, per worker."""

    def __init__(
        self,
        stage: Stage[Any, Any],
        blob_root: Path,
        plan: Plan,
        node: str,
        env: StageEnvironment,
    ) -> None:
        self.stage = stage
        self.blobs = BlobStore(blob_root)
        self.plan = plan
        self.node = node
        self.stage.setup(env)
        self._static_provenance = {
            "stage": stage.name,
            "stage_version": stage.version,
            # The key's config hash also covers what the stage read; this is its options' alone.
            "options_hash": stage.config.config_hash(),
            "params": dataclasses.asdict(stage.config),
            "tools": stage.tool_versions(),
            "qarina": _qarina_version(),
            "python": platform.python_version(),
            "host": socket.gethostname(),
            "node": node,
        }

    def close(self) -> None:
        self.stage.teardown()

    def run_batch(self, tasks: Sequence[Task]) -> list[Outcome]:
        if self.stage.shares_work and len(tasks) > 1:
            return self._run_shared(tasks)
        return [self.run_one(task) for task in tasks]

    def run_one(self, task: Task) -> Outcome:
        started = dt.datetime.now(dt.UTC)
        clock = time.perf_counter()
        inconsistent = self._inconsistency(task)
        if inconsistent is not None:
            return self._inconsistent(task, inconsistent, started, clock)
        with tempfile.TemporaryDirectory(prefix=f"qarina-{self.stage.name}-") as scratch:
            try:
                output: StageOutput[Any] | Exception = self.stage.run(
                    self._input(task), Path(scratch)
                )
            except Exception as error:  # every exception becomes a classified outcome
                output = error
            return self._outcome(task, output, self._provenance(started, clock, task))

    def _run_shared(self, tasks: Sequence[Task]) -> list[Outcome]:
        """A batch run at once by a stage whose items share work: the batch's time is shared
        out evenly, and each item's provenance says how many shared it and for how long."""
        started = dt.datetime.now(dt.UTC)
        clock = time.perf_counter()
        outcomes: dict[int, Outcome] = {}
        runnable = []
        for index, task in enumerate(tasks):
            inconsistent = self._inconsistency(task)
            if inconsistent is None:
                runnable.append(index)
            else:
                outcomes[index] = self._inconsistent(task, inconsistent, started, clock)
        with contextlib.ExitStack() as scratches:
            folders = [
                Path(scratches.enter_context(
                    tempfile.TemporaryDirectory(prefix=f"qarina-{self.stage.name}-")
                ))
                for _ in runnable
            ]  # fmt: skip
            pairs = zip(runnable, folders, strict=True)
            outputs = self.stage.run_many(
                [(self._input(tasks[index]), folder) for index, folder in pairs]
            )
            elapsed = time.perf_counter() - clock
            for index, output in zip(runnable, outputs, strict=True):
                provenance = {
                    **self._provenance(started, clock, tasks[index]),
                    "duration_s": round(elapsed / len(runnable), 6),
                    "shared_batch": {"items": len(runnable), "duration_s": round(elapsed, 6)},
                }
                outcomes[index] = self._outcome(tasks[index], output, provenance)
        return [outcomes[index] for index in range(len(tasks))]

    def _input(self, task: Task) -> StageInput:
        job = task.job
        return StageInput(
            job.sha256,
            Path(task.path),
            Kind(job.kind) if job.kind else Kind.OTHER,
            task.upstream,
            {sha256: Path(path) for sha256, path in task.artifacts.items()},
            depth=task.depth,
        )

    def _inconsistent(
        self, task: Task, why: str, started: dt.datetime, clock: float
    ) -> Failure:
        return Failure(
            FailureReason.INTEGRITY_ERROR.value,
            why,
            False,
            self._provenance(started, clock, task),
        )

    def _outcome(
        self, task: Task, output: StageOutput[Any] | Exception, provenance: dict[str, Any]
    ) -> Outcome:
        """One item's outcome from what the stage gave back for it, its derived files and
        members stored (while its scratch folder still exists)."""
        job = task.job
        try:
            if isinstance(output, Exception):
                raise output
            data = result_to_json(output.result)
            stored = [self._store_artifact(artifact) for artifact in output.artifacts]
            members = [self._store_member(member) for member in output.members]
        except StageSkipped as skip:
            return Success({}, provenance, skip_reason=skip.reason)
        except Exception as error:  # every exception becomes a classified failure
            reason, detail, retryable = classify(error, job)
            # An item whose kind cannot be decided is `other` (a later success says more).
            return Failure(
                reason.value,
                detail,
                retryable,
                provenance,
                item_kind=Kind.OTHER.value if self.stage.decides_kind else None,
            )
        item_kind = data.get("kind") if self.stage.decides_kind else None
        follow_ups = self.plan.follow_ups(job.stage, item_kind or job.kind)
        return Success(
            data,
            provenance,
            artifacts=stored,
            item_kind=item_kind,
            follow_ups=follow_ups,
            members=members,
            member_jobs=self.plan.initial_jobs() if members else (),
        )

    def _inconsistency(self, task: Task) -> str | None:
        """Why the job cannot run as planned, if it cannot: it was queued under the key the
        plan gives its item's kind, once its upstream results existed, so a mismatch means
        the item changed under it (its kind was decided again) or a result went missing."""
        planned = self.plan.spec_for(task.job)
        if planned.key != task.job.key:
            return "the job's key is not the one the plan gives its item's kind"
        missing = sorted(key.stage for key in planned.requires if key.stage not in task.reads)
        if missing:
            return f"upstream result of {', '.join(missing)} at the planned key is not stored"
        return None

    def _store_member(self, member: MemberFile) -> MemberRecord:
        blob = self.blobs.put(member.path)
        return MemberRecord(blob.sha256, blob.size_bytes, member.inner_path)

    def _store_artifact(self, artifact: ArtifactFile) -> ArtifactRecord:
        blob = self.blobs.put(artifact.path)
        return ArtifactRecord(
            blob.sha256, artifact.role, artifact.media_type, blob.size_bytes, artifact.meta
        )

    def _provenance(self, started: dt.datetime, clock: float, task: Task) -> dict[str, Any]:
        return {
            **self._static_provenance,
            "config_hash": task.job.config_hash,
            "reads": dict(task.reads),
            "worker_pid": os.getpid(),
            "started_at": started.isoformat(),
            "finished_at": dt.datetime.now(dt.UTC).isoformat(),
            "duration_s": round(time.perf_counter() - clock, 6),
        }
