"""The thin Ray shell around stages: one actor pool per stage, sized by what the stage asks for.

Ray only executes. The store decides what to run, and an actor that dies loses nothing: its
batch comes back as retryable failures and the job table retries them a bounded number of
times. Actors read originals from the shared blob root by path and return small outcomes, so
media never travels through Ray's object store.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayError

from evidence.jobs import Failure, Outcome
from pipelines.config import QarinaConfig
from pipelines.execute import StageHost, Task
from pipelines.plan import Plan
from workers.base import FailureReason, Stage

log = logging.getLogger(__name__)

_MIB = 1024 * 1024


def start_ray(address: str | None, num_cpus: int | None = None) -> None:
    """Join `address`, or start a private local instance.

    `address="local"` is explicit on purpose: a bare `ray.init()` may join whatever cluster
    Ray's temp folder last recorded, even a dead or foreign one.
    """
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True)
        return
    ray.init(
        address="local",
        num_cpus=num_cpus or os.cpu_count() or 1,
        include_dashboard=False,
        logging_level=logging.WARNING,
        # Results are small JSON; the object store only needs room for them.
        object_store_memory=256 * _MIB,
    )


class StageActor:
    """A Ray actor hosting one stage; heavy setup (exiftool, models) runs once in __init__."""

    def __init__(self, stage: Stage[Any, Any], blob_root: str, plan: Plan) -> None:
        node = ray.get_runtime_context().get_node_id()
        self._host = StageHost(stage, Path(blob_root), plan, node)

    def run_batch(self, tasks: list[Task]) -> list[Outcome]:
        return self._host.run_batch(tasks)


@dataclass
class _Pool:
    stage: Stage[Any, Any]
    size: int
    actors: list[Any]
    in_flight: dict[Any, int]  # actor -> batches running or waiting on it


class RayExecutor:
    """Feeds batches to per-stage actor pools and hands finished batches back to the driver."""

    def __init__(self, plan: Plan, config: QarinaConfig) -> None:
        self._plan = plan
        self._config = config
        total_cpus = float(ray.cluster_resources().get("CPU", 1.0))  # type: ignore[no-untyped-call]
        self._pools = {
            name: _Pool(stage, self._pool_size(stage, total_cpus, len(plan.stages)), [], {})
            for name, stage in plan.stages.items()
        }
        self._pending: dict[Any, tuple[str, Any, list[Task]]] = {}

    @staticmethod
    def _pool_size(stage: Stage[Any, Any], total_cpus: float, stages: int) -> int:
        """Share the cluster's CPUs evenly between the stage pools, in units of the stage's ask."""
        share = total_cpus / stages
        return max(1, math.floor(share / stage.resources.num_cpus))

    def _new_actor(self, pool: _Pool) -> Any:
        resources = pool.stage.resources
        actor_class = ray.remote(StageActor).options(
            num_cpus=resources.num_cpus,
            num_gpus=resources.num_gpus,
            memory=resources.memory_mb * _MIB,
            max_restarts=0,
            max_concurrency=1,
        )
        actor = actor_class.remote(pool.stage, str(self._config.blob_root), self._plan)
        pool.actors.append(actor)
        pool.in_flight[actor] = 0
        return actor

    def free_slots(self, stage: str) -> int:
        pool = self._pools[stage]
        capacity = pool.size * self._config.batches_per_actor
        return capacity - sum(pool.in_flight.values())

    def submit(self, stage: str, tasks: list[Task]) -> None:
        pool = self._pools[stage]
        if len(pool.actors) < pool.size:
            self._new_actor(pool)
        actor = min(pool.actors, key=lambda candidate: pool.in_flight[candidate])
        pool.in_flight[actor] += 1
        reference = actor.run_batch.remote(tasks)
        self._pending[reference] = (stage, actor, tasks)

    def collect(self, timeout_s: float) -> list[tuple[list[Task], list[Outcome]]]:
        if not self._pending:
            return []
        ready, _ = ray.wait(list(self._pending), num_returns=1, timeout=timeout_s)
        if ready:
            more, _ = ray.wait(list(self._pending), num_returns=len(self._pending), timeout=0)
            ready = list(dict.fromkeys([*ready, *more]))
        finished = []
        for reference in ready:
            stage, actor, tasks = self._pending.pop(reference)
            pool = self._pools[stage]
            if actor in pool.in_flight:
                pool.in_flight[actor] -= 1
            finished.append((tasks, self._outcomes(reference, pool, actor, tasks)))
        return finished

    def _outcomes(
        self, reference: Any, pool: _Pool, actor: Any, tasks: list[Task]
    ) -> list[Outcome]:
        try:
            outcomes: list[Outcome] = ray.get(reference)
            return outcomes
        except (RayError, GetTimeoutError) as error:
            # The actor (or its node) died mid-batch: drop it; a fresh one replaces it on demand.
            log.warning("stage %s actor lost: %s", pool.stage.name, type(error).__name__)
            if actor in pool.in_flight:
                pool.actors.remove(actor)
                del pool.in_flight[actor]
                ray.kill(actor, no_restart=True)
            return [
                Failure(
                    FailureReason.TOOL_CRASH.value, f"worker lost: {type(error).__name__}", True
                )
                for _ in tasks
            ]

    def pool_sizes(self) -> dict[str, int]:
        """Actors per stage pool, for the run summary."""
        return {name: pool.size for name, pool in self._pools.items()}

    def close(self) -> None:
        for pool in self._pools.values():
            for actor in pool.actors:
                ray.kill(actor, no_restart=True)
            pool.actors.clear()
            pool.in_flight.clear()
