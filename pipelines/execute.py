"""Running one stage on leased jobs, identically inside a Ray actor or in the sequential runner.

A `StageHost` owns one stage instance (setup once), turns each job into a `StageInput`, runs
the stage in a scratch folder, stores the artifacts by content in the shared blob root, and
returns small outcomes: only hashes and JSON travel back to the driver, never media.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import platform
import socket
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from evidence.blobs import BlobStore
from evidence.records import ArtifactRecord, Failure, LeasedJob, Outcome, Success
from pipelines.plan import Plan
from workers.base import (
    ArtifactFile,
    FailureReason,
    Kind,
    Stage,
    StageEnvironment,
    StageError,
    StageInput,
    StageSkipped,
    result_to_json,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Task:
    """One leased job plus what the stage needs to read: a blob path and upstream results."""

    job: LeasedJob
    path: str
    upstream: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    artifacts: Mapping[str, str] = field(default_factory=dict)


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
            "config_hash": stage.config.config_hash(),
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
        return [self.run_one(task) for task in tasks]

    def run_one(self, task: Task) -> Outcome:
        job = task.job
        started = dt.datetime.now(dt.UTC)
        clock = time.perf_counter()
        kind = Kind(job.kind) if job.kind else Kind.OTHER
        artifacts = {sha256: Path(path) for sha256, path in task.artifacts.items()}
        item = StageInput(job.sha256, Path(task.path), kind, task.upstream, artifacts)
        with tempfile.TemporaryDirectory(prefix=f"qarina-{self.stage.name}-") as scratch:
            try:
                output = self.stage.run(item, Path(scratch))
                data = result_to_json(output.result)
                stored = [self._store_artifact(artifact) for artifact in output.artifacts]
            except StageSkipped as skip:
                return Success({}, self._provenance(started, clock), skip_reason=skip.reason)
            except StageError as error:
                log.info("item %s stage %s failed: %s", job.sha256[:16], job.stage, error.reason)
                return Failure(
                    error.reason.value,
                    error.detail,
                    error.reason.retryable,
                    self._provenance(started, clock),
                    item_kind=Kind.OTHER.value if self.stage.decides_kind else None,
                )
            except MemoryError:
                # The actor's own allocation failed; a retry may land on a less loaded node.
                log.warning("item %s stage %s ran out of memory", job.sha256[:16], job.stage)
                return Failure(
                    FailureReason.RESOURCE_LIMIT.value,
                    "stage ran out of memory",
                    True,
                    self._provenance(started, clock),
                )
            except Exception as error:
                log.exception("item %s stage %s crashed", job.sha256[:16], job.stage)
                return Failure(
                    FailureReason.TOOL_CRASH.value,
                    f"unexpected {type(error).__name__} in stage",
                    True,
                    self._provenance(started, clock),
                )
        item_kind = data.get("kind") if self.stage.decides_kind else None
        follow_ups = self.plan.follow_ups(job.stage, item_kind or job.kind)
        return Success(
            data,
            self._provenance(started, clock),
            artifacts=stored,
            item_kind=item_kind,
            follow_ups=follow_ups,
        )

    def _store_artifact(self, artifact: ArtifactFile) -> ArtifactRecord:
        blob = self.blobs.put(artifact.path)
        return ArtifactRecord(
            blob.sha256, artifact.role, artifact.media_type, blob.size_bytes, artifact.meta
        )

    def _provenance(self, started: dt.datetime, clock: float) -> dict[str, Any]:
        return {
            **self._static_provenance,
            "worker_pid": os.getpid(),
            "started_at": started.isoformat(),
            "finished_at": dt.datetime.now(dt.UTC).isoformat(),
            "duration_s": round(time.perf_counter() - clock, 6),
        }
