"""`qarina eval transcript`: word and character error rates on real Arabic speech.

The pipeline (ingest, probe, our ffmpeg decode, VAD, windowing, the stage) is scored beside a
direct faster-whisper call with the same model on the same clips and its default settings,
so any loss from our audio handling shows as a difference, not as a vague score.

Where Whisper's deterministic decode fails it samples at higher temperatures, and a sample
differs from run to run (CTranslate2 cannot reseed a loaded model). Clips where either side
sampled are therefore also scored apart: on the rest both sides are reproducible, and a
difference there is a real difference in audio handling, not luck.
"""

from __future__ import annotations

import csv
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jiwer

from evidence.store import Store
from models import whisper
from pipelines.config import QarinaConfig
from pipelines.ingest import ingest_paths
from pipelines.plan import Plan
from pipelines.runner import SequentialExecutor, run_queue
from pipelines.session import open_store
from workers.arabic import normalise
from workers.transcript import TranscriptConfig, TranscriptResult


@dataclass(frozen=True)
class Transcribed:
    text: str
    sampled: bool


@dataclass(frozen=True)
class ClipScore:
    file: str
    reference: str
    pipeline: str
    direct: str
    sampled: bool

    def rates(self) -> dict[str, float]:
        return {
            "pipeline_wer": jiwer.wer(self.reference, self.pipeline or "-"),
            "pipeline_cer": jiwer.cer(self.reference, self.pipeline or "-"),
            "direct_wer": jiwer.wer(self.reference, self.direct or "-"),
            "direct_cer": jiwer.cer(self.reference, self.direct or "-"),
        }


@dataclass
class TranscriptEvaluation:
    model: dict[str, str]
    clips: list[ClipScore] = field(default_factory=list)

    def overall(self, sampled: bool | None = None) -> dict[str, float]:
        """Rates over the clips together (errors summed, not averaged per clip); only the
        clips where either side sampled, or where neither did, when `sampled` says so."""
        clips = [clip for clip in self.clips if sampled is None or clip.sampled == sampled]
        if not clips:
            return {}
        references = [clip.reference for clip in clips]
        pipeline = [clip.pipeline or "-" for clip in clips]
        direct = [clip.direct or "-" for clip in clips]
        return {
            "clips": len(clips),
            "pipeline_wer": round(jiwer.wer(references, pipeline), 4),
            "pipeline_cer": round(jiwer.cer(references, pipeline), 4),
            "direct_wer": round(jiwer.wer(references, direct), 4),
            "direct_cer": round(jiwer.cer(references, direct), 4),
        }

    def as_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "clips": len(self.clips),
            "overall": self.overall(),
            "deterministic_clips": self.overall(sampled=False),
            "sampled_clips": self.overall(sampled=True),
            "per_clip": [
                {
                    "file": clip.file,
                    "reference": clip.reference,
                    "pipeline": clip.pipeline,
                    "direct": clip.direct,
                    "sampled": clip.sampled,
                    **{name: round(rate, 4) for name, rate in clip.rates().items()},
                }
                for clip in self.clips
            ],
        }


def _references(corpus: Path) -> dict[str, str]:
    """Clips with a reference transcript (one Common Voice clip has none: language ID only)."""
    table = corpus / "transcripts.tsv"
    if not table.is_file():
        raise FileNotFoundError(f"no transcripts.tsv in {corpus}")
    with table.open(encoding="utf-8", newline="") as handle:
        rows = csv.DictReader(handle, delimiter="\t")
        return {row["file"]: row["reference_text"] for row in rows if row["reference_text"]}


def _pipeline_texts(
    store: Store, config: QarinaConfig, files: list[Path]
) -> dict[Path, Transcribed]:
    plan = Plan.default(["probe", "transcript"], settings=config)
    sha_of = {}
    for path in files:
        sha_of[path] = ingest_paths(store, plan, config, [path], source="corpus").sha256s[0]
    executor = SequentialExecutor(plan, config)
    try:
        run_queue(store, plan, executor, config)
    finally:
        executor.close()
    texts = {}
    for path, sha256 in sha_of.items():
        shown = store.show(sha256, plan.current_keys()) or {}
        stored = shown.get("results", {}).get("transcript", {}).get("data")
        segments = TranscriptResult.from_json(stored).segments if stored else []
        texts[path] = Transcribed(
            " ".join(segment.text for segment in segments),
            any("sampled" in segment.flags for segment in segments),
        )
    return texts


def _direct_texts(model: whisper.WhisperModel, files: list[Path]) -> dict[Path, Transcribed]:
    """faster-whisper as its README calls it: the file path, Arabic, its default settings."""
    from faster_whisper import WhisperModel

    device = whisper.choose_device()
    threads = TranscriptConfig().cpu_threads
    direct = WhisperModel(
        str(model.path),
        device=device.kind,
        compute_type=device.compute_type,
        cpu_threads=threads,
        local_files_only=True,
    )
    texts = {}
    for path in files:
        segments, _ = direct.transcribe(str(path), language="ar", beam_size=5)
        decoded = list(segments)
        texts[path] = Transcribed(
            " ".join(segment.text.strip() for segment in decoded),
            any(segment.temperature > 0 for segment in decoded),
        )
    return texts


def evaluate_transcripts(
    corpus: Path, models_dir: Path | None = None, limit: int | None = None
) -> TranscriptEvaluation:
    """Transcribe every clip with a reference both ways and score both with one normaliser.

    Every segment counts, flagged or not: the rates measure recognition, and flags are a
    separate judgement about trust.
    """
    references = dict(list(_references(corpus).items())[:limit])
    with tempfile.TemporaryDirectory(prefix="qarina-eval-transcript-") as scratch:
        data = Path(scratch)
        config = QarinaConfig(
            data_dir=data, db_url=f"sqlite:///{data / 'eval.sqlite3'}", models_root=models_dir
        )
        model = whisper.resolve(config.models_dir, config.whisper_model)
        files = [corpus / name for name in references]
        store = open_store(config)
        try:
            pipeline = _pipeline_texts(store, config, files)
        finally:
            store.close()
        direct = _direct_texts(model, files)
    evaluation = TranscriptEvaluation({"name": model.name, "sha256": model.sha256})
    for name, reference in references.items():
        path = corpus / name
        ours, theirs = pipeline[path], direct[path]
        evaluation.clips.append(
            ClipScore(
                name,
                normalise(reference),
                normalise(ours.text),
                normalise(theirs.text),
                ours.sampled or theirs.sampled,
            )
        )
    return evaluation
