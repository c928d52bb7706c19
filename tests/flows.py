"""Whole flows that several test files drive: ingest a folder, then run its queue in-process."""

from __future__ import annotations

from pathlib import Path

from evidence.store import Store
from pipelines.config import QarinaConfig
from pipelines.ingest import ingest_paths
from pipelines.plan import Plan
from pipelines.runner import SequentialExecutor, run_queue


def ingest_and_run(
    store: Store, config: QarinaConfig, folder: Path, source: str = "test-source", priority: int = 3
) -> list[str]:
    """Ingest `folder` and process every job with the sequential runner; the items' hashes."""
    plan = Plan.default(settings=config)
    summary = ingest_paths(store, plan, config, [folder], source=source, priority=priority)
    executor = SequentialExecutor(plan, config)
    try:
        run_queue(store, plan, executor, config)
    finally:
        executor.close()
    return summary.sha256s
