"""What the CLI and the demo share: opening the store, and working off the queue with progress."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from evidence.store import Store
from models import whisper
from pipelines.config import QarinaConfig
from pipelines.dedup.config import MatchConfig
from pipelines.dedup.matcher import Matcher
from pipelines.plan import Plan
from pipelines.runner import LoopControl, RunSummary, SequentialExecutor, run_queue
from pipelines.search import update_search_index

#: Seconds between index updates (links, transcript search) while a run goes on: links
#: appear as items arrive, and the driver spends little of its time on them.
_MATCH_EVERY_S = 5.0


def open_store(config: QarinaConfig) -> Store:
    config.data_dir.mkdir(parents=True, exist_ok=True)
    return Store.open(config.db_url, config.blob_root)


def open_matcher(config: QarinaConfig, store: Store, plan: Plan) -> Matcher:
    """The matcher over the hashes results under the keys `plan` names."""
    return Matcher(
        store,
        config.index_dir,
        plan.keys("hashes"),
        MatchConfig(threshold=config.match_threshold, min_quality=config.match_min_quality),
        probe_keys=plan.keys("probe"),
        hashes_config=plan.stage("hashes").config,
    )


def process_queue(
    config: QarinaConfig,
    store: Store,
    sequential: bool,
    console: Console,
    quiet: bool = False,
    control: LoopControl | None = None,
) -> RunSummary:
    """Run every open job on Ray (or sequentially) with a progress bar; with `control`, as
    long as it says (a service runs until stopped). Links and the search index keep up
    while it runs.

    Raises:
        ModelMissing: the Whisper model cannot be found or assembled; checked here, once,
            so a broken install stops the run instead of failing every recording.
    """
    plan = Plan.default(settings=config)
    if "transcript" in plan.stages:
        whisper.resolve(config.models_dir, config.whisper_model)
    if sequential:
        executor: Any = SequentialExecutor(plan, config)
    else:
        from pipelines.ray_runtime import RayExecutor, start_ray  # Ray starts only when used

        start_ray(config.ray_address)
        executor = RayExecutor(plan, config)
    total = store.status(current=plan.current_keys()).open_jobs
    progress = Progress(
        TextColumn("[bold]processing"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=quiet,
    )
    with progress:
        task = progress.add_task("jobs", total=total)

        def advance(committed: int, in_flight: int) -> None:
            completed = int(progress.tasks[0].completed) + committed
            # Follow-up stages appear as their predecessors finish: the total grows.
            progress.update(task, completed=completed, total=max(total, completed + in_flight))

        matcher = open_matcher(config, store, plan)
        actor = f"qarina-match@{config.operator}"
        last_upkeep = time.monotonic()

        def keep_up() -> None:
            nonlocal last_upkeep
            if time.monotonic() - last_upkeep >= _MATCH_EVERY_S:
                matcher.update(actor, save=False)
                update_search_index(store, plan)
                last_upkeep = time.monotonic()

        try:
            summary = run_queue(store, plan, executor, config, advance, keep_up, control)
        finally:
            executor.close()
        matcher.update(actor)
        update_search_index(store, plan)
        return summary
