"""`qarina bench transcript`: the transcript stage against faster-whisper called directly.

The recording is real Arabic speech: every clip of the corpus's `audio_ar` folder, joined with
short pauses and repeated until it lasts `minutes`, stored as a voice note (Opus in Ogg, as
messengers send them) by `pipelines.samples.corpus_speech`. On it, in each round and in
alternating order:
- **direct**: `WhisperModel(...)` loaded, then `transcribe(path, ...)` consumed, with exactly
  the stage's settings (language, beam, VAD, context, threads, compute type);
- **pipeline**: the sequential runner on a fresh store holding only the recording: probe, then
  the stage (ffmpeg decode, model load and hash check, VAD, transcription, subtitles, result
  and custody committed). Target: at most 1.05x direct.
Both are measured sequentially (beam search) and batched (`BatchedInferencePipeline`, batch 8),
as real-time factors (audio seconds per wall second). Memory: one stage transcribes 100 corpus
clips in a row and the resident set is read after each; growth is the last tenth against the
first tenth.
"""

from __future__ import annotations

import dataclasses
import itertools
import tempfile
import time
from pathlib import Path
from typing import Any

from models import whisper
from pipelines.bench.report import finish, machine_info, median
from pipelines.config import QarinaConfig
from pipelines.ingest import ingest_paths
from pipelines.plan import Plan
from pipelines.runner import run_plan
from pipelines.samples import corpus_speech
from pipelines.session import open_store
from workers.base import Kind, StageEnvironment, StageInput
from workers.tools import package_version
from workers.transcript import (
    SAMPLE_RATE,
    TranscriptConfig,
    TranscriptStage,
    decode_audio,
    transcribe_options,
)

_CPU = whisper.Device("cpu", "int8")


def whisper_engine(
    model: whisper.WhisperModel,
    config: TranscriptConfig,
    batched: bool,
    device: whisper.Device = _CPU,
) -> Any:
    """faster-whisper on its own, as a script would load it, on the engine the stage ran: the
    peer the stage is timed against (batched inference for the GPU's way, the model itself
    for the CPU's)."""
    from faster_whisper import BatchedInferencePipeline

    loaded = whisper.load(model, device, config.cpu_threads)
    return BatchedInferencePipeline(loaded) if batched else loaded


def _direct(
    model: whisper.WhisperModel, path: Path, config: TranscriptConfig, batched: bool
) -> float:
    """Seconds for faster-whisper alone: model load plus transcription, segments consumed."""
    started = time.perf_counter()
    engine = whisper_engine(model, config, batched)
    options = transcribe_options(config, config.language, batched)
    segments, _ = engine.transcribe(str(path), **options)
    list(segments)
    return time.perf_counter() - started


def _pipeline(
    path: Path, folder: Path, models_dir: Path, config: TranscriptConfig
) -> tuple[float, dict[str, Any]]:
    """Seconds for the sequential runner to probe and transcribe the recording and commit."""
    data = Path(tempfile.mkdtemp(prefix="store-", dir=folder))
    settings = QarinaConfig(
        data_dir=data, db_url=f"sqlite:///{data / 'bench.sqlite3'}", models_root=models_dir
    )
    plan = Plan.default(["probe", "transcript"], settings=settings)
    plan.stages["transcript"] = TranscriptStage(config)
    store = open_store(settings)
    try:
        (sha256,) = ingest_paths(store, plan, settings, [path], source="bench").sha256s
        started = time.perf_counter()
        run_plan(store, plan, settings)
        elapsed = time.perf_counter() - started
        shown = store.show(sha256, plan.current_keys()) or {}
    finally:
        store.close()
    result = shown.get("results", {}).get("transcript", {})
    if result.get("status") != "ok":
        raise RuntimeError(
            f"the pipeline did not transcribe the recording: {shown.get('failures')}"
        )
    data_json: dict[str, Any] = result["data"]
    return elapsed, data_json


def _resident_mib() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _memory(corpus: Path, folder: Path, models_dir: Path, files: int) -> dict[str, Any]:
    """Resident memory of one stage over `files` consecutive files (corpus clips, cycled)."""
    stage = TranscriptStage()
    stage.setup(StageEnvironment(models_dir, device="cpu"))
    after_setup = _resident_mib()
    readings = []
    try:
        for number, clip in zip(
            range(files), itertools.cycle(corpus_speech.speech_clips(corpus)), strict=False
        ):
            workdir = folder / f"memory-{number}"
            workdir.mkdir()
            stage.run(StageInput("0" * 64, clip, Kind.AUDIO), workdir)
            readings.append(_resident_mib())
    finally:
        stage.teardown()
    tenth = max(1, files // 10)
    first, last = median(readings[:tenth]), median(readings[-tenth:])
    return {
        "files": files,
        "rss_after_model_load_mib": round(after_setup, 1),
        "rss_first_tenth_mib": round(first, 1),
        "rss_last_tenth_mib": round(last, 1),
        "growth_mib": round(last - first, 1),
        "rss_max_mib": round(max(readings), 1),
    }


def bench_transcript(
    settings: QarinaConfig,
    corpus: Path,
    output: Path,
    runs: int = 3,
    minutes: float = 10.0,
    memory_files: int = 100,
) -> dict[str, Any]:
    """Time direct faster-whisper and the pipeline, sequential and batched, `runs` rounds."""
    model = whisper.resolve(settings.models_dir, settings.whisper_model)
    sequential = TranscriptConfig(mode="sequential")
    batched = dataclasses.replace(sequential, mode="batched")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-transcript-", dir=settings.data_dir) as scratch:
        folder = Path(scratch)
        recording = corpus_speech.build_recording(corpus, minutes, folder)
        probe_samples = decode_audio(recording, folder / "length.pcm", minutes * 60)
        audio_s = len(probe_samples) / SAMPLE_RATE
        timings: dict[str, list[float]] = {}
        segments: dict[str, int] = {}
        for round_number in range(runs):
            order = ["sequential", "batched"]
            for mode in order if round_number % 2 == 0 else order[::-1]:
                config = sequential if mode == "sequential" else batched
                direct_s = _direct(model, recording, config, mode == "batched")
                pipeline_s, data = _pipeline(recording, folder, settings.models_dir, config)
                timings.setdefault(f"direct_{mode}", []).append(direct_s)
                timings.setdefault(f"pipeline_{mode}", []).append(pipeline_s)
                timings.setdefault(f"ratio_{mode}", []).append(pipeline_s / direct_s)
                segments[mode] = len(data["segments"])
        memory = _memory(corpus, folder, settings.models_dir, memory_files)
    figures = {name: round(median(values), 4) for name, values in timings.items()}
    rtf = {
        name: round(audio_s / median(values), 2)
        for name, values in timings.items()
        if not name.startswith("ratio")
    }
    result = {
        "machine": machine_info(settings.data_dir),
        "model": {"name": model.name, "sha256": model.sha256},
        "faster_whisper": package_version("faster-whisper"),
        "ctranslate2": package_version("ctranslate2"),
        "settings": dataclasses.asdict(sequential),
        "audio_s": round(audio_s, 1),
        "runs": runs,
        "median_s": {
            name: value for name, value in figures.items() if not name.startswith("ratio")
        },
        "pipeline_over_direct": {
            "sequential": figures["ratio_sequential"],
            "batched": figures["ratio_batched"],
            "target": 1.05,
        },
        "realtime_factor": rtf,
        "segments": segments,
        "all_runs_s": {name: [round(v, 3) for v in values] for name, values in timings.items()},
        "memory": memory,
    }
    headline = (
        f"{audio_s / 60:.1f} min of Arabic speech, medians of {runs}: pipeline/direct"
        f" {figures['ratio_sequential']:.3f} sequential, {figures['ratio_batched']:.3f} batched"
        f" (target <= 1.05); real-time factor direct {rtf['direct_sequential']}x sequential,"
        f" {rtf['direct_batched']}x batched; pipeline {rtf['pipeline_sequential']}x /"
        f" {rtf['pipeline_batched']}x; memory growth over {memory_files} files"
        f" {memory['growth_mib']} MiB"
    )
    return finish(result, output, headline)
