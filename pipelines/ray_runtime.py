"""The thin Ray shell around stages: one actor pool per stage, sized by what the stage asks for.

Ray only executes. The store decides what to run, and an actor that dies loses nothing: its
batch comes back as retryable failures and the job table retries them a bounded number of
times. Actors read originals from the shared blob root by path and return small outcomes, so
media never travels through Ray's object store.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, OutOfMemoryError, RayError

from evidence.records import CountsAgainst, Failure, Outcome, Unstarted
from pipelines.config import QarinaConfig
from pipelines.execute import StageHost, Task
from pipelines.plan import Plan
from workers.base import FailureReason, Resources, Stage, StageEnvironment

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

    def __init__(
        self, stage: Stage[Any, Any], blob_root: str, plan: Plan, env: StageEnvironment
    ) -> None:
        node = ray.get_runtime_context().get_node_id()
        self._host = StageHost(stage, Path(blob_root), plan, node, env)

    def run_batch(self, tasks: list[Task]) -> list[Outcome]:
        return self._host.run_batch(tasks)

    def ready(self) -> None:
        """Answers once the actor is placed and set up: the executor's sign that Ray found
        it a node."""


#: A pool idle this long may give its actors to a busier stage that cannot grow otherwise.
_IDLE_RETIRE_S = 2.0
#: A pool grows when its actors spent at least this share of the recent window in stage code:
#: a cheap stage (the probe takes ~1 ms a photo) keeps one actor, since each extra actor costs
#: about a second of CPU to start and only helps a stage that keeps its actors busy.
_GROW_UTILISATION = 0.75
_WINDOW_S = (1.0, 5.0)  # shortest window that may justify growth, longest kept
#: An actor not ready after this long is taken to wait for a node with room. Its stage may
#: fit the cluster's CPUs in sum, yet no single node (2 CPUs for transcripts, when idle pools
#: hold 1.75 spread over two 2-CPU nodes): idle pools then give their actors back for it.
#: Setting up a stage (a model, exiftool) takes a few seconds too, and a needless retirement
#: costs only a restart later.
_PLACEMENT_WAIT_S = 5.0


@dataclass
class _Pool:
    stage: Stage[Any, Any]
    resources: Resources  # what each actor asks of this cluster
    max_size: int
    actors: list[Any] = field(default_factory=list)
    in_flight: dict[Any, int] = field(default_factory=dict)  # actor -> batches on it
    #: Every actor's `ready` call, answered or not: whether it was placed, and whether a lost
    #: actor was ever up.
    ready_calls: dict[Any, Any] = field(default_factory=dict)
    #: Actors not yet seen ready: actor -> created at.
    starting: dict[Any, float] = field(default_factory=dict)
    idle_since: float = field(default_factory=time.monotonic)
    window_start: float = field(default_factory=time.monotonic)
    work_s: float = 0.0  # stage run time reported by outcomes since window_start

    @property
    def busy(self) -> int:
        return sum(self.in_flight.values())

    def record_work(self, outcomes: list[Outcome]) -> None:
        now = time.monotonic()
        if now - self.window_start > _WINDOW_S[1]:
            self.window_start, self.work_s = now, 0.0
        self.work_s += sum(
            float(outcome.provenance.get("duration_s", 0.0))
            for outcome in outcomes
            if not isinstance(outcome, Unstarted)
        )

    def waits_for_a_node(self) -> bool:
        """Whether an actor of this pool has waited too long to be placed."""
        if not self.starting:
            return False
        references = {self.ready_calls[actor]: actor for actor in self.starting}
        ready, _ = ray.wait(list(references), num_returns=len(references), timeout=0)
        for reference in ready:
            del self.starting[references[reference]]
        now = time.monotonic()
        return any(now - created >= _PLACEMENT_WAIT_S for created in self.starting.values())

    def forget(self, actor: Any) -> None:
        self.actors.remove(actor)
        del self.in_flight[actor]
        self.starting.pop(actor, None)
        del self.ready_calls[actor]

    def wants_more(self) -> bool:
        """Busy enough over the recent window that another actor would share real work."""
        elapsed = time.monotonic() - self.window_start
        if elapsed < _WINDOW_S[0]:
            return False
        return self.work_s / elapsed >= _GROW_UTILISATION * len(self.actors)


class RayExecutor:
    """Feeds batches to per-stage actor pools and hands finished batches back to the driver.

    Pools grow with demand: a pool whose actors are kept busy gets another while the cluster's
    CPUs (counted by what each actor asks for) allow, up to one actor per CPU; when a busy pool
    cannot grow, pools idle for a while give their actors back. So the probe pool takes the
    cores while items arrive and metadata takes them once the probes are done, without a fixed
    split.
    """

    def __init__(self, plan: Plan, config: QarinaConfig) -> None:
        self._plan = plan
        self._config = config
        resources = ray.cluster_resources()  # type: ignore[no-untyped-call]
        self._total_cpus = float(resources.get("CPU", 1.0))
        gpus = float(resources.get("GPU", 0.0))
        # An actor must fit on one node: a stage asking for more CPUs than the largest node
        # has would wait for a placement that never comes.
        alive = [node for node in ray.nodes() if node["Alive"]]  # type: ignore[no-untyped-call]
        largest_node = max(
            (float(node["Resources"].get("CPU", 0.0)) for node in alive), default=self._total_cpus
        )
        self._pools = {}
        for name, stage in plan.stages.items():
            asks = stage.resources.on_cluster(resources)
            if asks.num_cpus > largest_node > 0:
                asks = dataclasses.replace(asks, num_cpus=largest_node)
            self._pools[name] = _Pool(stage, asks, self._max_size(asks, self._total_cpus, gpus))
        self._pending: dict[Any, tuple[str, Any, list[Task]]] = {}
        #: Batches that were running when their actor was lost, not yet taken by `collect`.
        self._running_when_lost: set[Any] = set()

    @staticmethod
    def _max_size(asks: Resources, total_cpus: float, total_gpus: float) -> int:
        """One actor per CPU at most (more would only time-slice the same cores), and no more
        GPU actors than the GPUs hold."""
        fitting = math.floor(total_cpus / max(asks.num_cpus, 1e-3))
        if asks.num_gpus:
            fitting = min(fitting, math.floor(total_gpus / asks.num_gpus))
        return max(1, min(fitting, math.ceil(total_cpus)))

    def _cpus_in_use(self) -> float:
        pools = self._pools.values()
        return sum(len(pool.actors) * pool.resources.num_cpus for pool in pools)

    def _can_grow(self, pool: _Pool) -> bool:
        if not pool.actors:
            return True  # every stage with work gets one actor, whatever the budget says
        fits = self._cpus_in_use() + pool.resources.num_cpus <= self._total_cpus + 1e-9
        return len(pool.actors) < pool.max_size and fits and pool.wants_more()

    def _new_actor(self, pool: _Pool) -> Any:
        resources = pool.resources
        actor_class = ray.remote(StageActor).options(
            num_cpus=resources.num_cpus,
            num_gpus=resources.num_gpus,
            memory=resources.memory_mb * _MIB,
            # A token share of the node group's resource: it steers, it does not ration.
            resources={resources.prefers: 0.001} if resources.prefers else None,
            max_restarts=0,
            max_concurrency=1,
        )
        actor: Any = actor_class.remote(
            pool.stage, str(self._config.blob_root), self._plan, self._config.stage_environment()
        )
        pool.actors.append(actor)
        pool.in_flight[actor] = 0
        pool.ready_calls[actor] = actor.ready.remote()
        pool.starting[actor] = time.monotonic()
        return actor

    def _make_room(self, wanting: _Pool) -> None:
        """Give a saturated pool the CPUs of actors idle in other pools.

        Retiring only on demand avoids churn: starting an actor costs about a second of CPU.
        """
        now = time.monotonic()
        for pool in self._pools.values():
            if pool is wanting or pool.busy or now - pool.idle_since < _IDLE_RETIRE_S:
                continue
            _retire(pool)

    def free_slots(self, stage: str) -> int:
        pool = self._pools[stage]
        saturated = pool.busy >= len(pool.actors)
        below_max = len(pool.actors) < pool.max_size
        if saturated and below_max and pool.wants_more() and not self._can_grow(pool):
            self._make_room(pool)
        elif pool.busy and (
            self._cpus_in_use() > self._total_cpus + 1e-9 or pool.waits_for_a_node()
        ):
            # Every stage with work got an actor whatever the budget said, and CPUs in sum
            # are not a node with room: an actor may wait for CPUs that idle pools hold, and
            # without this it would wait forever.
            self._make_room(pool)
        actors = len(pool.actors) + (1 if self._can_grow(pool) else 0)
        return actors * self._config.batches_per_actor - pool.busy

    def submit(self, stage: str, tasks: list[Task]) -> None:
        pool = self._pools[stage]
        idle = [actor for actor in pool.actors if pool.in_flight[actor] == 0]
        if idle:
            actor = idle[0]
        elif self._can_grow(pool):
            actor = self._new_actor(pool)
        else:
            actor = min(pool.actors, key=lambda candidate: pool.in_flight[candidate])
        pool.in_flight[actor] += 1
        pool.idle_since = time.monotonic()
        reference = actor.run_batch.remote(tasks)
        self._pending[reference] = (stage, actor, tasks)

    def collect(self, timeout_s: float) -> list[tuple[list[Task], list[Outcome]]]:
        if not self._pending:
            return []
        ready, _ = ray.wait(list(self._pending), num_returns=1, timeout=timeout_s)
        if not ready:
            return []
        more, _ = ray.wait(list(self._pending), num_returns=len(self._pending), timeout=0)
        ended = {*ready, *more}
        finished = []
        # In the order submitted (`_pending` keeps it): an actor's batch that ended well is
        # taken before a later one lost with the actor, so it is not taken for the one running.
        for reference in [reference for reference in self._pending if reference in ended]:
            stage, actor, tasks = self._pending[reference]
            pool = self._pools[stage]
            if actor in pool.in_flight:
                pool.in_flight[actor] -= 1
            outcomes = self._outcomes(reference, pool, actor, tasks)
            del self._pending[reference]
            pool.record_work(outcomes)
            finished.append((tasks, outcomes))
        return finished

    def _oldest_on(self, actor: Any) -> Any:
        """The earliest submitted batch still pending on `actor`: the one it runs once it is
        up, as an actor of one thread runs one caller's calls in the order they were made."""
        return next(
            reference for reference, (_, holder, _) in self._pending.items() if holder is actor
        )

    def _outcomes(
        self, reference: Any, pool: _Pool, actor: Any, tasks: list[Task]
    ) -> list[Outcome]:
        try:
            outcomes: list[Outcome] = ray.get(reference)
            self._running_when_lost.discard(reference)  # its answer came after all
            return outcomes
        except (RayError, GetTimeoutError) as error:
            # The actor (or its node) died mid-batch: drop it; a fresh one replaces it on demand.
            # Its jobs come back as retryable failures, so the job table's bounded attempts,
            # not Ray's retries (unbounded for out-of-memory kills), decide what happens next.
            if actor in pool.in_flight:  # the first of its batches taken since it was lost
                log.warning("stage %s actor lost: %s", pool.stage.name, type(error).__name__)
                # The node may be gone with it: size pools by what is left.
                self._total_cpus = float(ray.cluster_resources().get("CPU", self._total_cpus))  # type: ignore[no-untyped-call]
                # Of its batches only the oldest can have been running, and only if the actor
                # was up (it answered `ready`): the others, whichever fails first, never began.
                if _answered(pool.ready_calls[actor]):
                    self._running_when_lost.add(self._oldest_on(actor))
                pool.forget(actor)
                ray.kill(actor, no_restart=True)
            if reference not in self._running_when_lost:
                detail = f"worker lost before the batch began: {type(error).__name__}"
                return [Unstarted(detail) for _ in tasks]
            self._running_when_lost.discard(reference)
            # Which job of a batch was running, or to blame, is unknown: a loss counts only
            # against a job that ran alone, as each job of a lost batch runs next
            # (`runner._batches`); a memory kill against its attempts, any other loss against
            # its worker losses, a budget of its own, since kills from outside and lost nodes
            # end up there too. A job that takes its worker down every time still ends.
            alone = len(tasks) == 1
            if isinstance(error, OutOfMemoryError) or "OutOfMemory" in str(error):
                reason = FailureReason.RESOURCE_LIMIT
                counts_against: CountsAgainst = "attempts" if alone else "nothing"
            else:
                reason = FailureReason.TOOL_CRASH
                counts_against = "worker_losses" if alone else "nothing"
            detail = f"worker lost: {type(error).__name__}"
            return [
                Failure(reason.value, detail, True, counts_against=counts_against) for _ in tasks
            ]

    def close(self) -> None:
        for pool in self._pools.values():
            _retire(pool)


def _answered(reference: Any) -> bool:
    """Whether a call has returned without error (one a lost actor never answered raises)."""
    try:
        ray.get(reference, timeout=0)
    except (RayError, GetTimeoutError):
        return False
    return True


def _retire(pool: _Pool) -> None:
    """Kill every actor of the pool; the next batch of its stage starts a fresh one."""
    for actor in pool.actors:
        ray.kill(actor, no_restart=True)
    pool.actors.clear()
    pool.in_flight.clear()
    pool.starting.clear()
    pool.ready_calls.clear()
