"""`qarina bench backlog-mix`: a real, mixed folder as one backlog, end to end, stage by stage.

Benchmarks of one stage on one long file do not predict a backlog: the corpus's short voice
clips ran at 0.4x real time through the transcript stage while one long recording runs at
7-10x (DESIGN.md). So this ingests a folder (by default the shared corpus) into a fresh
store and runs it as `qarina run` does: a private local Ray, the driver, links and the
search index kept up. It reports:
- the folder's shape: items by kind as the probe decided, bytes, seconds of audio and video;
- ingest, Ray start and processing times, their sum (the wall time), and items per second;
- per stage: jobs, what they ended as (done, skips and failures by reason), the worker time
  summed from the `duration_s` of every attempt's provenance (read from custody, so failed
  and retried attempts count too) and its share of all worker time; for transcripts also the
  seconds of audio and of speech and the real-time factor (audio seconds / stage seconds);
- per item, keyed by SHA-256, its kind and the outcome of every stage, so two runs can be
  compared (`compare`): a faster stage must leave every outcome but the transcripts' as it was;
- with `peer`, each stage's library peer timed on the same items, after the run, from the
  blob store: faster-whisper called directly with the stage's options and the device, compute
  type and mode its results recorded; PySceneDetect's adaptive detector on the videos;
  pdqhash (with imagehash, as `qarina bench hashes` calls them) on a full decode of the photos.

With several runs, times are medians; counts and outcomes are the last run's, and items whose
outcome changed between runs are listed as unstable.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
import sqlalchemy as sa
from rich.console import Console, Group
from rich.table import Table

from evidence import jobs as jobq
from evidence.blobs import BlobStore
from evidence.schema import custody_events, items, jobs, results
from evidence.store import Store
from models import whisper
from pipelines.bench.hashes import peer_hashes
from pipelines.bench.keyframes import DEFAULT_CORPUS, pyscenedetect_cuts
from pipelines.bench.report import finish, fresh_data, machine_info, median, scratch_folder, timed
from pipelines.bench.transcript import whisper_engine
from pipelines.config import QarinaConfig
from pipelines.ingest import IngestSummary, ingest_paths
from pipelines.plan import Plan
from pipelines.ray_runtime import start_ray
from pipelines.session import open_store, process_queue
from workers import STAGES
from workers.base import Kind
from workers.tools import package_version
from workers.transcript import TranscriptConfig, transcribe_options

log = logging.getLogger(__name__)

#: Stages whose outcomes may change without a run counting as different: the issue lets a
#: faster transcript path decide otherwise about silence or noise.
FREE_STAGES = frozenset({"transcript"})
#: Custody actions that close one attempt of a stage, each with its provenance.
_ATTEMPTS = ("result", "skip", "failure")
_RUN_FIGURES = (
    "ingest_s",
    "ray_startup_s",
    "processing_s",
    "wall_s",
    "items_per_s",
    "processing_items_per_s",
    "worker_s",
    "worker_per_processing_s",
)
_STAGE_FIGURES = ("worker_s", "worker_share", "realtime_factor")
_PEER_FIGURES = ("setup_s", "peer_s", "stage_s", "stage_over_peer")


@dataclass
class Observed:
    """What one run left in its store, read once before the store goes."""

    #: sha256 -> {"kind": ..., "stages": {stage: outcome}}; see `_outcome`.
    items: dict[str, dict[str, Any]] = field(default_factory=dict)
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    shape: dict[str, Any] = field(default_factory=dict)
    #: (stage, sha256) -> worker seconds over every attempt.
    work: dict[tuple[str, str], float] = field(default_factory=dict)
    #: Device, compute type and mode of a transcript the stage made: the peer's settings.
    transcribed_with: dict[str, str] | None = None


def _outcome(state: str, reason: str | None, status: str | None, skip: str | None) -> str:
    """One stage's end for one item as a short comparable string: `done`, `skipped:REASON`,
    `failed:REASON`, `dead:REASON` (retries spent), or the open state it was left in."""
    if state == jobq.DONE:
        return f"skipped:{skip}" if status == "skipped" else "done"
    return f"{state}:{reason}" if reason else state


def _durations(rows: Iterable[sa.Row[Any]]) -> dict[tuple[str, str], float]:
    """Worker seconds per (stage, item) over the attempts these custody events close."""
    work: dict[tuple[str, str], float] = {}
    for row in rows:
        provenance = json.loads(row.details).get("provenance", {})
        key = (row.stage, row.item_sha256)
        work[key] = work.get(key, 0.0) + float(provenance.get("duration_s", 0.0))
    return work


def _observe(store: Store) -> Observed:
    """Items, jobs, results and attempts of a fresh store, as the report needs them."""
    seen = Observed()
    with store.database.reader.connect() as connection:
        item_rows = connection.execute(
            sa.select(items.c.sha256, items.c.kind, items.c.size_bytes)
        ).all()
        job_rows = [
            (row.sha256, row.stage, row.state, row.error_reason)
            for row in connection.execute(
                sa.select(jobs.c.sha256, jobs.c.stage, jobs.c.state, jobs.c.error_reason)
            )
        ]
        ended = {
            (row.sha256, row.stage): (row.status, row.skip_reason)
            for row in connection.execute(
                sa.select(
                    results.c.sha256, results.c.stage, results.c.status, results.c.skip_reason
                )
            )
        }
        # Only the probe's and the transcripts' data are read: durations and speech.
        data = {
            (row.sha256, row.stage): row.data
            for row in connection.execute(
                sa.select(results.c.sha256, results.c.stage, results.c.data).where(
                    results.c.stage.in_(("probe", "transcript")), results.c.status == "ok"
                )
            )
        }
        seen.work = _durations(
            connection.execute(
                sa.select(
                    custody_events.c.item_sha256, custody_events.c.stage, custody_events.c.details
                ).where(custody_events.c.action.in_(_ATTEMPTS))
            )
        )
        by_kind: dict[str, dict[str, float]] = {}
        for row in item_rows:
            kind = row.kind or "undecided"
            seen.items[row.sha256] = {"kind": kind, "stages": {}}
            entry = by_kind.setdefault(kind, {"items": 0, "bytes": 0, "media_s": 0.0})
            entry["items"] += 1
            entry["bytes"] += row.size_bytes
            probe = data.get((row.sha256, "probe")) or {}
            entry["media_s"] += float(probe.get("duration_s") or 0.0)
    for sha256, stage, state, reason in job_rows:
        outcome = _outcome(state, reason, *ended.get((sha256, stage), (None, None)))
        seen.items[sha256]["stages"][stage] = outcome
    seen.shape = {
        "items": len(seen.items),
        "bytes": sum(int(entry["bytes"]) for entry in by_kind.values()),
        "audio_s": round(by_kind.get(Kind.AUDIO.value, {}).get("media_s", 0.0), 1),
        "video_s": round(by_kind.get(Kind.VIDEO.value, {}).get("media_s", 0.0), 1),
        "by_kind": {
            kind: {**entry, "media_s": round(entry["media_s"], 1)}
            for kind, entry in sorted(by_kind.items())
        },
    }
    transcripts = [value for (_, stage), value in data.items() if stage == "transcript"]
    if transcripts:
        seen.transcribed_with = {
            **{key: transcripts[0][key] for key in ("device", "compute_type", "mode")},
            "engine": transcripts[0].get("engine", whisper.CTRANSLATE2),
        }
    seen.stages = _stage_figures(seen, transcripts)
    return seen


def _stage_figures(
    seen: Observed, transcripts: list[Mapping[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Per stage: jobs and their ends, worker time and its share of all worker time."""
    total_s = sum(seen.work.values())
    stages: dict[str, dict[str, Any]] = {}
    ends = (end for item in seen.items.values() for end in item["stages"].items())
    for stage, end in ends:
        entry = stages.setdefault(
            stage,
            {"jobs": 0, "done": 0, "skipped": Counter(), "failed": Counter(), "other": Counter()},
        )
        entry["jobs"] += 1
        state, _, reason = end.partition(":")
        if state == "done":
            entry["done"] += 1
        elif state == "skipped":
            entry["skipped"][reason] += 1
        elif state in (jobq.FAILED, jobq.DEAD):
            entry["failed"][reason if state == jobq.FAILED else f"{reason} (dead)"] += 1
        else:
            entry["other"][state] += 1
    for stage, entry in stages.items():
        worker_s = sum(seconds for (name, _), seconds in seen.work.items() if name == stage)
        attempts = sum(1 for name, _ in seen.work if name == stage)
        entry.update(
            {key: dict(entry[key]) for key in ("skipped", "failed", "other")},
            attempts=attempts,
            worker_s=round(worker_s, 3),
            worker_share=round(worker_s / total_s, 4) if total_s else 0.0,
        )
        if stage == "transcript":
            audio_s = sum(float(data["duration_s"]) for data in transcripts)
            entry.update(
                audio_s=round(audio_s, 1),
                speech_s=round(sum(float(data["speech_s"]) for data in transcripts), 1),
                realtime_factor=round(audio_s / worker_s, 3) if worker_s else None,
            )
    order = [stage_class.name for stage_class, _ in STAGES]
    return dict(sorted(stages.items(), key=lambda named: order.index(named[0])))


def _time_peer(
    name: str, shas: list[str], blobs: BlobStore, action: Callable[[Path], object]
) -> tuple[float, dict[str, int]]:
    """Seconds `action` took over the items (read from the blob store, so no file name is
    ever handled), and its failures by exception type: the corpus holds broken files on
    purpose, and a peer that raises on one has still spent its time."""
    spent, failures = 0.0, Counter[str]()
    for sha256 in shas:
        started = time.perf_counter()
        try:
            action(blobs.path_for(sha256))
        except Exception as error:  # any library error on a hostile file is the peer's outcome
            failures[type(error).__name__] += 1
            log.info("%s peer failed on item %s: %s", name, sha256[:16], type(error).__name__)
        spent += time.perf_counter() - started
    return spent, dict(failures)


def _whisper_peer(
    config: TranscriptConfig, model: whisper.WhisperModel, settings: Mapping[str, str]
) -> Callable[[Path], object]:
    """faster-whisper loaded once, as a stage's actor loads it, transcribing a file the way a
    script would: the path handed over, with the stage's options (`transcribe_options`) and
    the device, compute type and mode the stage's results recorded."""
    batched = settings["mode"] == "batched"
    device = whisper.Device(
        settings["device"], settings["compute_type"], settings.get("engine", whisper.CTRANSLATE2)
    )
    engine = whisper_engine(model, config, batched, device)
    options = transcribe_options(config, config.language, batched)

    def transcribe(path: Path) -> None:
        segments, _ = engine.transcribe(str(path), **options)
        list(segments)  # segments decode lazily: the work is done while they are read

    return transcribe


def peer_entry(
    description: str,
    shas: list[str],
    blobs: BlobStore,
    seen: Observed,
    stage: str,
    make: Callable[[], Callable[[Path], object]],
) -> dict[str, Any]:
    """One peer on the items one stage ran on, beside the stage's worker time on them."""
    started = time.perf_counter()
    action = make()
    setup_s = time.perf_counter() - started
    peer_s, failures = _time_peer(stage, shas, blobs, action)
    stage_s = sum(seen.work.get((stage, sha256), 0.0) for sha256 in shas)
    return {
        "peer": description,
        "items": len(shas),
        "setup_s": round(setup_s, 3),
        "peer_s": round(peer_s, 3),
        "peer_failures": failures,
        "stage_s": round(stage_s, 3),
        "stage_over_peer": round(stage_s / peer_s, 3) if peer_s else None,
    }


def _peers(store: Store, plan: Plan, config: QarinaConfig, seen: Observed) -> dict[str, Any]:
    """Each stage's peer on the items that stage ran on (for hashes, the photos only: the
    peer hashes photos, while the stage also hashes the keyframes of videos)."""

    def ran(stage: str, kind: Kind | None = None) -> list[str]:
        return sorted(
            sha256
            for sha256, item in seen.items.items()
            if stage in item["stages"] and (kind is None or item["kind"] == kind.value)
        )

    blobs = store.blobs
    peers: dict[str, Any] = {
        "hashes": peer_entry(
            f"pdqhash {package_version('pdqhash')} + imagehash {package_version('imagehash')}"
            " on a full Pillow decode (`bench hashes` peer_hashes), photos only",
            ran("hashes", Kind.PHOTO), blobs, seen, "hashes", lambda: peer_hashes,
        ),
        "keyframes": peer_entry(
            f"scenedetect {package_version('scenedetect')} detect(path, AdaptiveDetector())",
            ran("keyframes"), blobs, seen, "keyframes", lambda: pyscenedetect_cuts,
        ),
    }  # fmt: skip
    if seen.transcribed_with is not None:
        stage_config = plan.stages["transcript"].config
        assert isinstance(stage_config, TranscriptConfig)
        model = whisper.resolve(config.models_dir, config.whisper_model)
        settings = seen.transcribed_with
        peers["transcript"] = peer_entry(
            f"faster-whisper {package_version('faster-whisper')} WhisperModel.transcribe(path)"
            f" with the stage's options, {settings['device']} {settings['compute_type']}"
            f" {settings['mode']}; setup_s is the model load",
            ran("transcript"), blobs, seen, "transcript",
            lambda: _whisper_peer(stage_config, model, settings),
        )  # fmt: skip
    return peers


def one_run(
    config: QarinaConfig,
    scratch: Path,
    corpus: Path,
    index: int,
    peer: bool,
    progress: Console,
    inspect: Callable[[Store, Observed], None] | None = None,
    address: str | None = None,
) -> tuple[dict[str, Any], Observed]:
    """Ingest the folder into a fresh store and data folder, process it on a private local
    Ray as `qarina run` does (Ray started here and timed apart), or on the running cluster at
    `address`, read what it left; `inspect` reads more of the store (`qarina bench`: growth,
    devices, the cluster's resources) before it goes, while Ray is still joined."""
    run_config = fresh_data(config, scratch, f"run-{index}").with_overrides(ray_address=address)
    plan = Plan.default(settings=run_config)
    store = open_store(run_config)
    started_ray = False
    try:
        started = time.perf_counter()
        intake: IngestSummary = ingest_paths(
            store, plan, run_config, [corpus], source="bench-backlog-mix"
        )
        ingest_s = time.perf_counter() - started
        started_ray = not ray.is_initialized()
        startup_s = timed(lambda: start_ray(run_config.ray_address))
        summary = process_queue(run_config, store, False, progress, quiet=progress.quiet)
        seen = _observe(store)
        if inspect is not None:
            inspect(store, seen)
        peers = _peers(store, plan, run_config, seen) if peer else {}
    finally:
        store.close()
        if started_ray:
            ray.shutdown()
        shutil.rmtree(run_config.data_dir, ignore_errors=True)
    count = len(seen.items)
    wall_s = ingest_s + startup_s + summary.wall_s
    worker_s = sum(seen.work.values())
    run = {
        "ingest": {
            "files": intake.files,
            "new_items": intake.new_items,
            "duplicates": intake.duplicates,
            "bytes": intake.bytes,
            "refused": intake.refused,
        },
        "ingest_s": round(ingest_s, 3),
        "ray_startup_s": round(startup_s, 3),
        "processing_s": round(summary.wall_s, 3),
        "wall_s": round(wall_s, 3),
        "items_per_s": round(count / wall_s, 3),
        "processing_items_per_s": round(count / summary.wall_s, 3) if summary.wall_s else None,
        "jobs_committed": summary.committed,
        "jobs_failed": summary.failed,
        "worker_s": round(worker_s, 3),
        # Above 1: stages ran side by side; the rest to the core count is driver, store, idle.
        "worker_per_processing_s": round(worker_s / summary.wall_s, 3) if summary.wall_s else None,
        "stages": seen.stages,
        "peers": peers,
    }
    return run, seen


def _comparable(item: Mapping[str, Any] | None) -> tuple[str, dict[str, str]] | None:
    if item is None:
        return None
    stages = {name: end for name, end in item["stages"].items() if name not in FREE_STAGES}
    return item["kind"], stages


def differing_items(
    before: Mapping[str, Mapping[str, Any]], after: Mapping[str, Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """Items whose kind or any stage's outcome (transcripts aside) differs between two runs'
    per-item maps, or that only one run holds; by SHA-256."""
    return [
        {"sha256": sha256, "before": before.get(sha256), "after": after.get(sha256)}
        for sha256 in sorted(before.keys() | after.keys())
        if _comparable(before.get(sha256)) != _comparable(after.get(sha256))
    ]


def _medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Times as medians over runs; counts as the last run left them."""
    last = runs[-1]

    def middle(values: list[Any]) -> float | None:
        present = [value for value in values if value is not None]
        return round(median(present), 4) if present else None

    def section(name: str, figures: tuple[str, ...]) -> dict[str, Any]:
        return {
            key: {
                **entry,
                **{
                    figure: middle([run[name].get(key, {}).get(figure) for run in runs])
                    for figure in figures
                    if figure in entry
                },
            }
            for key, entry in last[name].items()
        }

    return {
        **{figure: middle([run[figure] for run in runs]) for figure in _RUN_FIGURES},
        "stages": section("stages", _STAGE_FIGURES),
        "peers": section("peers", _PEER_FIGURES),
    }


def _compare(earlier: Path, result: dict[str, Any]) -> dict[str, Any]:
    before = json.loads(earlier.read_text())
    wall_before = before["median"]["wall_s"]
    return {
        "file": str(earlier),
        "measured_at": before["machine"]["measured_at"],
        "wall_s_before": wall_before,
        "speedup": round(wall_before / result["median"]["wall_s"], 3),
        "ignored_stages": sorted(FREE_STAGES),
        "differing_items": differing_items(before["items"], result["items"]),
    }


def bench_backlog_mix(
    config: QarinaConfig,
    output: Path,
    *,
    corpus: Path | None = None,
    runs: int = 1,
    peer: bool = False,
    compare: Path | None = None,
    progress: Console | None = None,
) -> dict[str, Any]:
    """Ingest `corpus` (default: the shared corpus) into a fresh store and process it end to
    end, `runs` times; with `peer`, time each stage's peer on the same items; with `compare`,
    list the items whose outcomes differ from an earlier run's JSON. `progress` shows a
    progress bar of each run.

    Raises:
        FileNotFoundError: the folder is not there.
        ModelMissing: no Whisper model, checked before anything is timed.
    """
    if runs < 1:
        raise ValueError("runs must be at least 1")
    folder = (corpus or DEFAULT_CORPUS).resolve()
    if not folder.is_dir():
        raise FileNotFoundError(f"no folder at {folder}: the shared corpus, or --corpus DIR")
    # Every fresh data folder reads the one assembled model: joining it (a 145 MB copy) is
    # no part of a backlog, and `qarina run` finds it assembled already.
    config = config.with_overrides(models_root=config.models_dir)
    if "transcript" in Plan.default(settings=config).stages:
        whisper.resolve(config.models_dir, config.whisper_model)
    # Two cores shared with anything else distort every timing: say how busy the machine was.
    load_before = list(os.getloadavg())
    measured: list[dict[str, Any]] = []
    outcomes: list[dict[str, dict[str, Any]]] = []
    with scratch_folder(config) as scratch:
        machine = machine_info(scratch)
        for index in range(runs):
            run, seen = one_run(
                config, scratch, folder, index, peer, progress or Console(quiet=True)
            )
            measured.append(run)
            outcomes.append(seen.items)
            shape = seen.shape
    last = outcomes[-1]
    result: dict[str, Any] = {
        "benchmark": "backlog-mix",
        "machine": machine,
        "params": {
            "corpus": str(folder),
            "runs": runs,
            "peer": peer,
            "ray_address": "local",
            "load_average": {"before": load_before, "after": list(os.getloadavg())},
        },
        "corpus": {**shape, "files": measured[-1]["ingest"]["files"]},
        "median": _medians(measured),
        "runs": measured,
        "items": last,
        "unstable_items": sorted(
            sha256 for sha256 in last if any(run.get(sha256) != last[sha256] for run in outcomes)
        ),
    }
    if compare is not None:
        result["compare"] = _compare(compare, result)
    return finish(result, output, _headline(result))


def _headline(result: dict[str, Any]) -> str:
    summary, shape = result["median"], result["corpus"]
    kinds = ", ".join(f"{entry['items']} {kind}" for kind, entry in shape["by_kind"].items())
    line = (
        f"{shape['items']} items ({kinds}; {shape['bytes'] / 2**20:.1f} MiB,"
        f" {shape['audio_s']:.0f} s audio, {shape['video_s']:.0f} s video):"
        f" {summary['wall_s']:.1f} s wall, {summary['items_per_s']:.2f} items/s"
        f" (ingest {summary['ingest_s']:.1f} s, Ray start {summary['ray_startup_s']:.1f} s,"
        f" processing {summary['processing_s']:.1f} s)"
    )
    transcript = summary["stages"].get("transcript")
    if transcript is not None:
        line += (
            f"; transcript {transcript['worker_share']:.0%} of worker time at"
            f" {transcript['realtime_factor']}x real time"
        )
    return line


def _counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{reason} {count}" for reason, count in sorted(counts.items())) or "-"


def render(result: dict[str, Any]) -> Group:
    """The report as people read it: stage figures, peers, and what a comparison found;
    items only by hash."""
    summary = result["median"]
    peers = summary["peers"]
    columns = ["stage", "jobs", "done", "skipped", "failed", "worker s", "share"]
    if peers:
        columns += ["peer s", "stage/peer"]
    runs = result["params"]["runs"]
    table = Table(*columns, title=_headline(result) + (f" (medians of {runs})" if runs > 1 else ""))
    for name, stage in summary["stages"].items():
        row = [
            name, str(stage["jobs"]), str(stage["done"]), _counts(stage["skipped"]),
            _counts(stage["failed"]), f"{stage['worker_s']:.1f}", f"{stage['worker_share']:.1%}",
        ]  # fmt: skip
        if peers:
            found = peers.get(name)
            row += ["-", "-"] if found is None else [
                f"{found['peer_s']:.1f}",
                "-" if found["stage_over_peer"] is None else f"{found['stage_over_peer']:.2f}",
            ]  # fmt: skip
        table.add_row(*row)
    lines: list[Any] = [table]
    transcript = summary["stages"].get("transcript")
    if transcript is not None:
        lines.append(
            f"transcript: {transcript['audio_s']} s of audio, {transcript['speech_s']} s of"
            f" speech, real-time factor {transcript['realtime_factor']}"
        )
    if result["unstable_items"]:
        lines.append(f"outcomes that changed between runs: {len(result['unstable_items'])} items")
    compared = result.get("compare")
    if compared is not None:
        differing = compared["differing_items"]
        lines.append(
            f"against {compared['file']} ({compared['measured_at']}):"
            f" x{compared['speedup']} wall; {len(differing)} items differ outside"
            f" {', '.join(compared['ignored_stages'])}"
        )
        lines.extend(
            f"  {item['sha256']}: {_comparable(item['before'])} -> {_comparable(item['after'])}"
            for item in differing
        )
    return Group(*lines)
