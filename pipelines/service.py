"""`qarina serve`: one long-running service that processes whatever arrives.

Ray starts once and stays warm (its start costs about 7 s on two cores, which every
`qarina run` pays), and in one process run together:
- the driver loop, leasing without end and woken at once when intake in this process
  registers something, so a new item starts its first stage within the loop's poll;
- the HTTP API (uvicorn, in a thread), when asked for;
- a watcher per drop folder (threads);
- a summary line a minute, in counts only.

SIGTERM (or Ctrl-C) stops intake, then the driver stops leasing: jobs in flight get a grace
period to finish and commit, and what is still running after it goes back to the queue.
Nothing is lost, and a second service on the same store shares the queue through the job
table's leases, so no job is done twice.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any

from rich.console import Console

from evidence import controls
from evidence.records import CurrentKeys
from evidence.store import Store
from pipelines.api import ApiSettings, create_app
from pipelines.config import QarinaConfig
from pipelines.plan import Plan
from pipelines.runner import LoopControl, RunSummary
from pipelines.session import open_store, process_queue
from pipelines.watch import DropFolder, Watcher

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeOptions:
    """What one service runs besides the driver loop, and how it stops."""

    sequential: bool = False
    #: (host, port) of the HTTP API, None for none; loopback unless an operator says so.
    http: tuple[str, int] | None = None
    api: ApiSettings | None = None
    drops: Sequence[DropFolder] = ()
    #: Seconds a dropped file's size and mtime must stay still before it is taken.
    settle_s: float = 2.0
    #: Seconds between looks at the drop folders.
    watch_every_s: float = 0.5
    #: Seconds jobs in flight get to finish after SIGTERM before they are handed back.
    grace_s: float = 30.0
    summary_every_s: float = 60.0


class ComponentFailed(RuntimeError):
    """A part of the service (a drop folder's watcher, the HTTP API) stopped on its own: the
    service stops too, rather than run on without it unnoticed."""


def serve(config: QarinaConfig, options: ServeOptions, console: Console) -> RunSummary:
    """Run the service until SIGTERM or SIGINT; returns what its driver committed.

    Raises:
        ComponentFailed: a watcher or the HTTP server ended while the service ran (a port
            already taken, a thread that died); the driver stopped as after SIGTERM.
    """
    store = open_store(config)
    plan = Plan.default(settings=config)
    control = LoopControl(forever=True, grace_s=options.grace_s)
    try:
        server = _http_server(store, config, options, control) if options.http else None
    except Exception:
        store.close()
        raise

    def stop() -> None:
        control.stop.set()
        control.wake.set()
        if server is not None:
            server.should_exit = True

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.warning(
            "%s: stopping intake, finishing or handing back leased jobs",
            signal.Signals(signum).name,
        )
        stop()

    if not options.sequential:
        # Ray's core worker installs its own SIGTERM handler, which ends the process at once:
        # start it first, so the service's handler (stop, finish, hand back) is the one left.
        from pipelines.ray_runtime import start_ray

        start_ray(config.ray_address)
    previous = {
        number: signal.signal(number, on_signal) for number in (signal.SIGTERM, signal.SIGINT)
    }
    components = [
        threading.Thread(
            target=Watcher(store, plan, config, drop, options.settle_s, control.wake.set).run,
            args=(control.stop, options.watch_every_s),
            name=f"drop folder {number + 1}",
            daemon=True,
        )
        for number, drop in enumerate(options.drops)
    ]
    if server is not None:
        components.append(threading.Thread(target=server.run, name="http api", daemon=True))
    failed: list[str] = []
    keeper = threading.Thread(
        target=_keep_watch,
        args=(store, plan, control.stop, options.summary_every_s, components, failed, stop),
        name="watchdog",
        daemon=True,
    )
    try:
        for thread in [*components, keeper]:
            thread.start()
        log.info("serving: %d drop folders, http %s", len(options.drops), options.http)
        summary = process_queue(config, store, options.sequential, console, True, control)
    finally:
        stop()
        # One deadline for every part, so a stop fits in what systemd allows it.
        deadline = time.monotonic() + max(options.grace_s, 10.0)
        for thread in [*components, keeper]:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        for number, handler in previous.items():
            signal.signal(number, handler)
        store.close()
    if failed:
        raise ComponentFailed(", ".join(failed))
    return summary


def _http_server(
    store: Store, config: QarinaConfig, options: ServeOptions, control: LoopControl
) -> Any:
    """The API on uvicorn, to run in a thread (uvicorn leaves signals to the main thread)."""
    import uvicorn  # the HTTP stack loads only where it serves

    if options.api is None or options.http is None:
        raise ValueError("an HTTP API needs its settings (tokens, allowed roots)")
    host, port = options.http
    app = create_app(store, config, options.api, on_register=control.wake.set)
    return uvicorn.Server(
        uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
    )


def _keep_watch(
    store: Store,
    plan: Plan,
    stop_event: threading.Event,
    summary_every_s: float,
    components: list[threading.Thread],
    failed: list[str],
    stop: Callable[[], None],
) -> None:
    """Once a second: a part that ended while the service runs stops it (named in `failed`);
    once every `summary_every_s`: a line of counts (never names), so the log says the service
    is alive and what it does."""
    current = plan.current_keys()
    last_summary = time.monotonic()
    while not stop_event.wait(1.0):
        ended = [thread.name for thread in components if not thread.is_alive()]
        if ended:
            log.error("%s stopped on its own: stopping the service", ", ".join(ended))
            failed.extend(ended)
            stop()
            return
        if time.monotonic() - last_summary >= summary_every_s:
            _summary(store, current, summary_every_s)
            last_summary = time.monotonic()


def _summary(store: Store, current: CurrentKeys, every_s: float) -> None:
    report = store.status(window_s=int(every_s), current=current)
    states = {"queued": 0, "leased": 0, "done": 0, "failed": 0, "dead": 0}
    for stage in report.stages:
        for state, count in stage.counts.items():
            states[state] = states.get(state, 0) + count
    ended = round((report.throughput_per_s or 0.0) * every_s)
    paused = controls.pause_state(store.database).paused
    log.info(
        "serve: %d items; %s; %d jobs ended in the last %d s; %s",
        report.items,
        ", ".join(f"{state} {count}" for state, count in states.items()),
        ended,
        int(every_s),
        "paused" if paused else "running",
    )
