"""A stage that always runs out of memory, and the driver that runs it on a real local Ray.

Run as a script, in a process whose environment sets `RAY_memory_usage_threshold` just above
the machine's current use, so Ray's memory monitor kills the hog's worker long before the
kernel would have to. The class is pickled by value: Ray's workers need not import `tests`.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
from ray import cloudpickle

from workers.base import JsonRecord, Kind, Resources, Stage, StageConfig, StageInput, StageOutput

_CHUNK = 64 * 1024 * 1024
#: Never more than this, whatever happens: a hog that is not stopped must not stop the machine.
_CEILING = 6 * 1024**3


@dataclass(frozen=True)
class HogConfig(StageConfig):
    pass


@dataclass(frozen=True)
class HogResult(JsonRecord):
    allocated_bytes: int


class MemoryHogStage(Stage[HogConfig, HogResult]):
    """Touches memory in 64 MiB steps until something stops it."""

    name = "hog"
    version = "1"
    kinds = frozenset({Kind.PHOTO})
    requires = ("probe",)
    resources: ClassVar[Resources] = Resources(num_cpus=1.0, memory_mb=256)

    def run(self, item: StageInput, workdir: Path) -> StageOutput[HogResult]:
        del item, workdir
        held = []
        while len(held) * _CHUNK < _CEILING:
            held.append(np.ones(_CHUNK, dtype=np.uint8))
            time.sleep(0.02)
        return StageOutput(HogResult(len(held) * _CHUNK))


def main(data: str, photo: str) -> None:
    """Ingest one photo into a SQLite store under `data` and run probe + hog on local Ray."""
    from pipelines.config import QarinaConfig
    from pipelines.ingest import ingest_paths
    from pipelines.plan import Plan
    from pipelines.ray_runtime import RayExecutor, start_ray
    from pipelines.runner import run_queue
    from pipelines.session import open_store
    from workers.probe import ProbeStage

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    config = QarinaConfig(data_dir=Path(data), db_url=f"sqlite:///{data}/store.sqlite3")
    plan = Plan({"probe": ProbeStage(), "hog": MemoryHogStage(HogConfig())})
    store = open_store(config)
    try:
        ingest_paths(store, plan, config, [Path(photo)], source="oom-test")
        start_ray(None, num_cpus=2)
        executor = RayExecutor(plan, config)
        try:
            run_queue(store, plan, executor, config)
        finally:
            executor.close()
    finally:
        store.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
