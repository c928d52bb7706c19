"""`qarina bench hangs`: how much a backlog's good files lose to files that hang a tool.

Evidence comes from everyone, including people who want the system to stall. A file that
keeps a decoder busy costs its tool's timeout on every attempt, and the items batched with it
wait that long too. The figure planners and the issue ask for is the good files' throughput
with a share of such files in the backlog, as a ratio to the same good files alone, measured
in the same run of the benchmark (the clean run is the peer).

A real decoder hang depends on one decoder version's bug; to make one on demand, both runs put
a stand-in `ffprobe` first on PATH. It runs the real ffprobe, except on a file whose last bytes
carry a marker: there it spins on a CPU (`spin`, a decoder caught in a loop) or sleeps (`sleep`,
a read that never returns) until the timeout kills it. Tools only ever see store paths, so the
marker is in the content: copies of the backlog's own videos and voice notes with the marker
appended (the probe flags them `trailing_data`, which changes nothing else).

The good files' time is the processing time up to the commit of the last job of a good item:
what the hanging items' retries cost after that is idle capacity, not lost throughput.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from rich.console import Console

from evidence.schema import custody_events, jobs
from evidence.store import Store
from models import whisper
from pipelines.bench.backlog_mix import Observed, one_run
from pipelines.bench.report import finish, machine_info, median, scratch_folder
from pipelines.config import QarinaConfig
from pipelines.plan import Plan
from pipelines.samples.mixed_backlog import make_backlog

HangMode = Literal["spin", "sleep"]

#: Appended to a copy of a good file: the stand-in ffprobe hangs on files ending with it.
HANG_MARKER = b"QARINA-BENCH-HANG"
#: The issue's figure: the good files keep at least this share of a clean backlog's throughput.
TARGET_RATIO = 0.8
_AV_SUFFIXES = frozenset({".mp4", ".m4a", ".ogg", ".opus", ".mp3", ".amr", ".wav", ".aac"})

_HANGS = {
    # A decoder caught in a loop: one CPU busy until the timeout's SIGKILL to the group.
    "spin": "while :; do :; done",
    # A read that never returns: no CPU, only the worker's time.
    "sleep": "exec sleep 100000",
}


def stand_in_ffprobe(folder: Path, mode: HangMode) -> Path:
    """Write an `ffprobe` into `folder` that hangs on marked files and runs the real one
    otherwise (found on PATH now); returns its path. The file to probe is ffprobe's last
    argument, as `file:PATH` (`workers.tools.ffmpeg_input`)."""
    real = shutil.which("ffprobe")
    if real is None:
        raise FileNotFoundError("ffprobe is not installed")
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "ffprobe"
    script.write_text(
        "#!/bin/sh\n"
        "# qarina bench hangs: a stand-in ffprobe that hangs on marked files.\n"
        'for last in "$@"; do :; done\n'
        'target="${last#file:}"\n'
        f'if [ -f "$target" ] && tail -c {len(HANG_MARKER) + 16} "$target"'
        f" | grep -q '{HANG_MARKER.decode()}'; then\n"
        f"    {_HANGS[mode]}\n"
        "fi\n"
        f'exec {real} "$@"\n',
        encoding="utf-8",
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return script


def make_hanging(sources: list[Path], folder: Path, count: int) -> list[str]:
    """`count` marked copies of `sources` (round robin) in `folder`; returns their SHA-256s.
    Each copy carries its own number after the marker, so no two are the same item."""
    if not sources:
        raise ValueError("the backlog holds no video or voice note to copy")
    folder.mkdir(parents=True, exist_ok=True)
    hashes = []
    for index in range(count):
        source = sources[index % len(sources)]
        data = source.read_bytes() + HANG_MARKER + f"-{index:06d}".encode()
        (folder / f"hang-{index:04d}{source.suffix}").write_bytes(data)
        hashes.append(hashlib.sha256(data).hexdigest())
    return hashes


@contextlib.contextmanager
def _path_first(folder: Path) -> Iterator[None]:
    """`folder` first on PATH while the run's private Ray starts: its workers inherit the
    environment, and the tools they run see the stand-in first."""
    before = os.environ.get("PATH", "")
    os.environ["PATH"] = f"{folder}{os.pathsep}{before}"
    try:
        yield
    finally:
        os.environ["PATH"] = before


def _good_lag_s(store: Store, hanging: set[str]) -> float:
    """Seconds from the last good item's last job to the run's last job."""
    with store.database.reader.connect() as connection:
        rows = connection.execute(
            sa.select(jobs.c.sha256, sa.func.max(jobs.c.finished_at)).group_by(jobs.c.sha256)
        ).all()
    good = [finished for sha256, finished in rows if sha256 not in hanging and finished]
    every = [finished for _, finished in rows if finished]
    return (max(every) - max(good)).total_seconds() if good else 0.0


def _failures(store: Store, hanging: set[str]) -> dict[str, int]:
    """Failed attempts on hanging items and on good ones (a good item's is a batch-mate lost
    with a hang, or a worker lost), from the custody log: `attempts` misses what counted
    against nothing or against worker losses."""
    with store.database.reader.connect() as connection:
        failed = connection.execute(
            sa.select(custody_events.c.item_sha256).where(custody_events.c.action == "failure")
        ).scalars()
        on_hanging = [sha256 in hanging for sha256 in failed]
    return {"hanging": sum(on_hanging), "good": len(on_hanging) - sum(on_hanging)}


def _measured(
    config: QarinaConfig,
    scratch: Path,
    folder: Path,
    index: int,
    stand_in: Path,
    hanging: set[str],
    progress: Console,
) -> dict[str, Any]:
    """One run over `folder` with the stand-in first on PATH: the good items' time and
    throughput, and how the hanging items ended."""
    held: dict[str, Any] = {}

    def inspect(store: Store, seen: Observed) -> None:
        held["lag_s"] = _good_lag_s(store, hanging)
        held["failures"] = _failures(store, hanging)

    with _path_first(stand_in.parent):
        run, seen = one_run(config, scratch, folder, index, False, progress, inspect)
    good = [sha256 for sha256 in seen.items if sha256 not in hanging]
    good_s = run["processing_s"] - held["lag_s"]
    return {
        "processing_s": run["processing_s"],
        "good_items": len(good),
        "good_s": round(good_s, 3),
        "good_items_per_s": round(len(good) / good_s, 4) if good_s > 0 else None,
        "failed_attempts": held["failures"],
        "hanging_outcomes": sorted(
            str(seen.items[sha256]["stages"].get("probe")) for sha256 in hanging
        ),
        "good_failures": sorted(
            f"{stage}:{outcome}"
            for sha256 in good
            for stage, outcome in seen.items[sha256]["stages"].items()
            if outcome != "done" and not str(outcome).startswith("skipped")
        ),
    }


def bench_hangs(
    config: QarinaConfig,
    output: Path,
    *,
    items: int = 30,
    hang_share: float = 0.1,
    mode: HangMode = "spin",
    runs: int = 1,
    progress: Console | None = None,
) -> dict[str, Any]:
    """A phone-shaped backlog of `items`, `hang_share` of them files that hang ffprobe,
    processed on a private local Ray; beside it, in the same run, the good files alone.
    `runs` pairs, medians reported.

    Raises:
        ModelMissing: no Whisper model, checked before anything is timed.
    """
    if runs < 1 or items < 2 or not 0 < hang_share < 1:
        raise ValueError("runs >= 1, items >= 2 and 0 < hang_share < 1")
    hanging_count = max(1, round(items * hang_share))
    config = config.with_overrides(models_root=config.models_dir)
    plan = Plan.default(settings=config)
    if "transcript" in plan.stages:
        whisper.resolve(config.models_dir, config.whisper_model)
    console = progress or Console(quiet=True)
    load_before = list(os.getloadavg())
    pairs: list[dict[str, Any]] = []
    with scratch_folder(config) as scratch:
        machine = machine_info(scratch)
        good_folder, mixed_folder = scratch / "good", scratch / "mixed"
        good_folder.mkdir()
        shape = make_backlog(good_folder, items - hanging_count, shape="phone")
        shutil.copytree(good_folder, mixed_folder / "good")
        media = sorted(path for path in good_folder.rglob("*") if path.suffix in _AV_SUFFIXES)
        hanging = set(make_hanging(media, mixed_folder / "hanging", hanging_count))
        stand_in = stand_in_ffprobe(scratch / "tools", mode)
        for index in range(runs):
            console.print(f"run {index + 1}/{runs}: the good files alone")
            clean = _measured(config, scratch, good_folder, 2 * index, stand_in, set(), console)
            console.print(f"run {index + 1}/{runs}: with {hanging_count} hanging files")
            hung = _measured(
                config, scratch, mixed_folder, 2 * index + 1, stand_in, hanging, console
            )
            pairs.append(
                {
                    "clean": clean,
                    "with_hangs": hung,
                    "ratio": round(clean["good_s"] / hung["good_s"], 3),
                }
            )
    ratio = median([pair["ratio"] for pair in pairs])
    result: dict[str, Any] = {
        "benchmark": "hangs",
        "machine": machine,
        "params": {
            "items": items,
            "hanging": hanging_count,
            "mode": mode,
            "runs": runs,
            "probe_timeout_s": plan.stages["probe"].config.tool.timeout_s,
            "max_attempts": config.max_attempts,
            "load_average": {"before": load_before, "after": list(os.getloadavg())},
        },
        "backlog": dataclasses.asdict(shape),
        "ratio": ratio,
        "target": TARGET_RATIO,
        "meets_target": ratio >= TARGET_RATIO,
        "runs": pairs,
    }
    headline = (
        f"good files' throughput with {hanging_count} of {items} files hanging ffprobe"
        f" ({mode}): {ratio:.2f} of the good files alone (target {TARGET_RATIO})"
    )
    return finish(result, output, headline)
