"""The plan checked end to end (issue 16): bench a sample, plan a backlog, run it, compare.

1. A phone-shaped sample of S items (`make_backlog(shape="phone")`) is benched as
   `qarina bench --sample` does (`bench_stages`): a bench file of this machine.
2. A backlog of B items of the same shape, from other indices (no file in common with the
   sample), is planned from that bench file alone, with its generated mix and average media
   minutes, on a cluster that is this machine: the bench file's cores, no GPU.
3. The backlog is processed as `qarina run` does (`backlog_mix.one_run`: ingest into a fresh
   store, `process_queue` on a private local Ray), and the plan's time to clear is compared
   with the measured processing wall time; per stage, the plan's device-seconds with the
   worker seconds custody recorded (`duration_s` of every attempt) times the cores the stage's
   actor reserves, as the bench counts them (`costs.reserved_units`).

The plan divides work by `cores * EFFICIENCY`. The measured efficiency here is reserved
core-seconds over `cores * processing wall`: the share of the cores' time the scheduler had
handed to stage work; the rest is the driver, the store's commits, scheduling gaps and the
tail of the queue. Where the
measured efficiency is near the plan's margin and the per-stage work matches, the plan holds;
`efficiency_for_exact` is the margin that would have made the prediction exact.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from pipelines.bench.backlog_mix import one_run
from pipelines.bench.report import scratch_folder
from pipelines.bench.stages import bench_stages
from pipelines.config import QarinaConfig
from pipelines.samples.mixed_backlog import (
    PHONE_AUDIO_S,
    PHONE_AUDIO_SHARE,
    PHONE_VIDEO_S,
    PHONE_VIDEO_SHARE,
    BacklogShape,
    make_backlog,
)
from pipelines.sizing.costs import reserved_seconds, reserved_units, write_bench
from pipelines.sizing.plan import (
    EFFICIENCY,
    SECONDS_PER_DAY,
    Backlog,
    Plan,
    Units,
    make_plan,
    plan_json,
)

#: The issue's bar: the plan's time to clear within 20% of the measured one.
TOLERANCE = 0.2
#: The backlog's first index: far from the sample's, so no file is made twice.
BACKLOG_START = 1_000_000
#: Kinds of `make_backlog` as the plan counts them.
_PLAN_KIND = {"photos": "photo", "reposts": "photo", "videos": "video", "voice_notes": "audio"}


@dataclass(frozen=True)
class Comparison:
    """A predicted and a measured time, and how far apart they are."""

    predicted_s: float
    measured_s: float
    tolerance: float = TOLERANCE

    @property
    def error(self) -> float:
        """(predicted - measured) / measured: positive when the plan is pessimistic."""
        return (self.predicted_s - self.measured_s) / self.measured_s

    @property
    def within(self) -> bool:
        return abs(self.error) <= self.tolerance

    def as_json(self) -> dict[str, Any]:
        return {
            "predicted_s": round(self.predicted_s, 3),
            "measured_s": round(self.measured_s, 3),
            "error": round(self.error, 4),
            "tolerance": self.tolerance,
            "within": self.within,
        }


def measured_efficiency(reserved_s: float, cores: int, wall_s: float) -> float:
    """The share of the cores' time handed to stage work: reserved core-s / (cores x wall s)."""
    if cores <= 0 or wall_s <= 0:
        raise ValueError("cores and wall time must be positive")
    return reserved_s / (cores * wall_s)


def backlog_of(shape: BacklogShape) -> Backlog:
    """The plan's view of a generated backlog: its mix by kind and average media minutes."""
    counts: dict[str, int] = {}
    for field_name, kind in _PLAN_KIND.items():
        counts[kind] = counts.get(kind, 0) + int(getattr(shape, field_name))
    total = sum(counts.values())
    mix = {kind: count / total for kind, count in counts.items() if count}
    return Backlog(
        total,
        mix,
        video_minutes=shape.video_s / shape.videos / 60.0 if shape.videos else 0.0,
        audio_minutes=shape.audio_s / shape.voice_notes / 60.0 if shape.voice_notes else 0.0,
    )


def stage_split(
    plan: Plan, measured: Mapping[tuple[str, str], float], kinds: Mapping[str, str]
) -> list[dict[str, Any]]:
    """Per stage: the plan's device-seconds and the measured worker seconds, by kind too.

    `measured` is worker seconds by (stage, item), counted here in reserved core-seconds as
    the bench counts its costs; `kinds` is each item's kind.
    """
    by_stage: dict[str, dict[str, float]] = {}
    for (stage, sha256), seconds in measured.items():
        kind = kinds.get(sha256, "other")
        entry = by_stage.setdefault(stage, {})
        entry[kind] = entry.get(kind, 0.0) + seconds * reserved_units(stage, "cpu")
    rows = []
    predicted = {work.stage: work for work in plan.works}
    for stage in [*predicted, *(name for name in by_stage if name not in predicted)]:
        work = predicted.get(stage)
        seen = by_stage.get(stage, {})
        predicted_s = work.seconds if work is not None else 0.0
        measured_s = sum(seen.values())
        rows.append(
            {
                "stage": stage,
                "device": work.device if work is not None else None,
                "predicted_s": round(predicted_s, 3),
                "measured_s": round(measured_s, 3),
                "predicted_over_measured": (
                    round(predicted_s / measured_s, 3) if measured_s else None
                ),
                "predicted_by_kind": {
                    kind: round(value, 3) for kind, value in (work.by_kind if work else {}).items()
                },
                "measured_by_kind": {kind: round(value, 3) for kind, value in seen.items()},
            }
        )
    return rows


def run_check(
    config: QarinaConfig,
    *,
    sample_items: int = 200,
    backlog_items: int = 1000,
    runs: int = 1,
    video_share: float = PHONE_VIDEO_SHARE,
    audio_share: float = PHONE_AUDIO_SHARE,
    video_range: tuple[float, float] = PHONE_VIDEO_S,
    audio_range: tuple[float, float] = PHONE_AUDIO_S,
    json_out: Path | None = None,
    bench_out: Path | None = None,
    progress: Console | None = None,
) -> dict[str, Any]:
    """Bench a sample, plan a backlog of the same shape, process it, compare; the report."""
    say = progress or Console(quiet=True)
    config = config.with_overrides(models_root=config.models_dir)
    shape_options: dict[str, Any] = {
        "shape": "phone",
        "video_share": video_share,
        "audio_share": audio_share,
        "video_range": video_range,
        "audio_range": audio_range,
    }
    with scratch_folder(config) as scratch:
        sample_folder = Path(tempfile.mkdtemp(prefix="check-sample-", dir=scratch))
        say.print(f"generating a {sample_items}-item sample")
        started = time.perf_counter()
        sample_shape = make_backlog(sample_folder, sample_items, **shape_options)
        sample_made_s = time.perf_counter() - started
        say.print("benching the sample")
        bench = bench_stages(config, sample=sample_folder, runs=runs, peer=False, progress=say)
        shutil.rmtree(sample_folder, ignore_errors=True)
        if bench_out is not None:
            bench_out.parent.mkdir(parents=True, exist_ok=True)
            write_bench(bench, bench_out)

        backlog_folder = Path(tempfile.mkdtemp(prefix="check-backlog-", dir=scratch))
        say.print(f"generating a {backlog_items}-item backlog")
        started = time.perf_counter()
        backlog_shape = make_backlog(
            backlog_folder, backlog_items, start=BACKLOG_START, **shape_options
        )
        backlog_made_s = time.perf_counter() - started
        backlog = backlog_of(backlog_shape)
        cluster = Units(cpu=bench.cores, gpu=0)
        plan = make_plan(backlog, [bench], cluster=cluster)
        assert plan.days is not None  # a cluster was given
        predicted_s = plan.days * SECONDS_PER_DAY
        say.print(f"processing the backlog (the plan says {predicted_s:,.0f} s)")
        run, seen = one_run(config, scratch, backlog_folder, 0, False, say)
    kinds = {sha256: entry["kind"] for sha256, entry in seen.items.items()}
    work_s = sum(plan.seconds.values())
    processing = Comparison(predicted_s, float(run["processing_s"]))
    with_intake = Comparison(predicted_s, float(run["wall_s"]))
    reserved_s = reserved_seconds(seen.work)
    efficiency = measured_efficiency(reserved_s, bench.cores, run["processing_s"])
    report: dict[str, Any] = {
        "machine": bench.machine,
        "versions": bench.versions,
        "shape": {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in shape_options.items()
        },
        "sample": {
            "items": sample_items,
            "generated": asdict(sample_shape),
            "made_s": round(sample_made_s, 3),
            "bench_processing_s": bench.sample.get("processing_s"),
            "bench_worker_s": bench.sample.get("worker_s"),
            "fits": bench.sample.get("fits"),
            "runs": runs,
        },
        "backlog": {
            "items": backlog_items,
            "start": BACKLOG_START,
            "generated": asdict(backlog_shape),
            "made_s": round(backlog_made_s, 3),
            "ingested": run["ingest"],
            "stored": seen.shape,
        },
        "plan": plan_json(plan),
        "predicted": {
            "time_to_clear_s": round(predicted_s, 3),
            "efficiency": plan.efficiency,
            "at_full_efficiency_s": round(work_s / bench.cores, 3),
            "device_s": round(work_s, 3),
            "cores": bench.cores,
        },
        "measured": {
            "processing_s": run["processing_s"],
            "wall_s": run["wall_s"],
            "ingest_s": run["ingest_s"],
            "ray_startup_s": run["ray_startup_s"],
            "worker_s": run["worker_s"],
            "reserved_core_s": round(reserved_s, 3),
            "jobs_committed": run["jobs_committed"],
            "jobs_failed": run["jobs_failed"],
            "efficiency": round(efficiency, 4),
        },
        # The margin that would have made the prediction exact, and the work's own ratio.
        "efficiency_for_exact": round(work_s / (bench.cores * float(run["processing_s"])), 4),
        "work_predicted_over_measured": (round(work_s / reserved_s, 4) if reserved_s else None),
        "comparison": processing.as_json(),
        "comparison_with_intake": with_intake.as_json(),
        "stages": stage_split(plan, seen.work, kinds),
        "planned_efficiency": EFFICIENCY,
    }
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return report
