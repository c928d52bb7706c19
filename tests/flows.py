"""Whole flows that several test files drive: ingest a folder, then run its queue in-process."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from evidence.store import Store
from pipelines.config import QarinaConfig
from pipelines.ingest import ingest_paths
from pipelines.plan import Plan
from pipelines.runner import run_plan
from workers.keyframes import KeyframesStage

#: The keys the default plan names: what `show` and `status` call current in tests that run
#: with the default options.
DEFAULT_KEYS = Plan.default().current_keys()


def sqlite_config_in(data: Path, models_dir: Path) -> QarinaConfig:
    """A SQLite store in the folder `data` (made if missing), for fixtures of any scope."""
    data.mkdir(parents=True, exist_ok=True)
    return QarinaConfig(
        data_dir=data,
        db_url=f"sqlite:///{data / 'qarina.sqlite3'}",
        operator="tester",
        models_root=models_dir,
    )


class KeyframesNext(KeyframesStage):
    """The keyframes stage as a newer version would be: the same name, another version."""

    version: ClassVar[str] = str(int(KeyframesStage.version) + 1)


def ingest_and_run(
    store: Store, config: QarinaConfig, folder: Path, source: str = "test-source", priority: int = 3
) -> list[str]:
    """Ingest `folder` and process every job with the sequential runner; the items' hashes."""
    plan = Plan.default(settings=config)
    summary = ingest_paths(store, plan, config, [folder], source=source, priority=priority)
    run_plan(store, plan, config)
    return summary.sha256s
