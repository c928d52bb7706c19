"""`qarina eval transcript`: word and character error rates on real Arabic speech.

The pipeline (ingest, probe, our ffmpeg decode, VAD, windowing, the stage) is scored beside a
direct faster-whisper call with the same model on the same clips and its default settings
(beam 5, its VAD), so any loss from our audio handling shows as a difference, not as a vague
score. Direct without VAD is scored too, as the figure earlier reports compared against.

Settings chosen on the clips they are then scored on look better than they are: with the
settings first chosen on this whole corpus, the pipeline lost to direct faster-whisper with
its defaults on dialect clips it had never seen (CER 0.384 against 0.360). So the corpus is
split in two (`SPLIT_RULE`): `--tune` tries candidate settings on the choosing half only,
and the held-out half says whether the choice carries over to speakers it was not made on.

Where Whisper's deterministic decode fails it samples at higher temperatures, and a sample
differs from run to run (CTranslate2 cannot reseed a loaded model). Clips where either side
sampled are therefore also scored apart: on the rest both sides are reproducible, and a
difference there is a real difference in audio handling, not luck.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import inspect
import itertools
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import jiwer

from models import whisper
from pipelines.config import QarinaConfig
from pipelines.ingest import ingest_paths
from pipelines.plan import Plan
from pipelines.runner import run_plan
from pipelines.session import open_store
from workers.arabic import normalise
from workers.transcript import TranscriptConfig, TranscriptResult, TranscriptStage

Half = Literal["choosing", "held_out"]
HALVES: tuple[Half, Half] = ("choosing", "held_out")

SPLIT_RULE = (
    "Within each folder of the corpus, clips are grouped by speaker where transcripts.tsv"
    " names one ('speaker N' in its description), else each clip is a group of its own; the"
    " groups, sorted by name, go to the choosing and the held-out half in turn, the first to"
    " the choosing half. On the shared corpus: Speech Commands speaker 00000014 chooses and"
    " 00000026 is held out; of the five Common Voice clips with a transcript, the 1st, 3rd"
    " and 5th by name choose and the 2nd and 4th are held out."
)
_SPEAKER = re.compile(r"\bspeaker (\S+)")

#: The candidates `--tune` tries, faster-whisper's values among them. Padding: its 400 ms,
#: the stage's earlier second, and less; threshold: its 0.5 and a laxer one for faint voices.
#: `condition_on_previous_text` is not tried: every recording of the corpus fits one model
#: window (and is packed, where the batched decode carries no context), so it never acts.
TUNING_GRID: Mapping[str, tuple[Any, ...]] = {
    "vad_speech_pad_ms": (200, 400, 1000),
    "vad_threshold": (0.5, 0.35),
}
#: The stage options the report records beside its figures.
REPORTED_SETTINGS = (
    "beam_size",
    "vad",
    "vad_threshold",
    "vad_speech_pad_ms",
    "condition_on_previous_text",
)
#: Character errors on the choosing half within which candidates count as equally good:
#: one character of its ~280 is noise, not a reason to leave faster-whisper's defaults.
TIE_CHARACTERS = 1


@dataclass(frozen=True)
class CorpusClip:
    """A clip with a reference transcript, and the half of the split it belongs to."""

    file: str
    reference: str
    half: Half


@dataclass(frozen=True)
class Transcribed:
    text: str
    sampled: bool


@dataclass(frozen=True)
class ClipScore:
    file: str
    half: Half
    reference: str
    pipeline: str
    direct: str
    direct_no_vad: str
    #: The pipeline or direct faster-whisper (with VAD) sampled: the pair is not reproducible.
    sampled: bool

    def rates(self) -> dict[str, float]:
        rates = {}
        for side in ("pipeline", "direct", "direct_no_vad"):
            text = getattr(self, side) or "-"
            rates[f"{side}_wer"] = jiwer.wer(self.reference, text)
            rates[f"{side}_cer"] = jiwer.cer(self.reference, text)
        return rates


@dataclass(frozen=True)
class Trial:
    """One candidate's run of the pipeline over the choosing half."""

    settings: dict[str, Any]
    clips: int
    char_errors: int
    cer: float
    wer: float
    #: How many of its settings differ from faster-whisper's own: the tie-breaker.
    departures: int

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Tuning:
    grid: Mapping[str, tuple[Any, ...]]
    faster_whisper_defaults: Mapping[str, Any]
    trials: list[Trial]
    chosen: Trial

    def as_json(self) -> dict[str, Any]:
        return {
            "half": "choosing",
            "grid": {name: list(values) for name, values in self.grid.items()},
            "rule": f"fewest character errors on the choosing half; candidates within"
            f" {TIE_CHARACTERS} of the fewest are tied, and of those the one with the fewest"
            " departures from faster-whisper's defaults is chosen (then grid order)",
            "faster_whisper_defaults": dict(self.faster_whisper_defaults),
            "tried": [trial.as_json() for trial in self.trials],
            "chosen": self.chosen.settings,
        }


def _rates(clips: Sequence[ClipScore], sides: Iterable[str]) -> dict[str, float]:
    """Rates over the clips together (errors summed, not averaged per clip)."""
    if not clips:
        return {}
    references = [clip.reference for clip in clips]
    rates: dict[str, float] = {"clips": len(clips)}
    for side in sides:
        texts = [getattr(clip, side) or "-" for clip in clips]
        rates[f"{side}_wer"] = round(jiwer.wer(references, texts), 4)
        rates[f"{side}_cer"] = round(jiwer.cer(references, texts), 4)
    return rates


@dataclass
class TranscriptEvaluation:
    model: dict[str, str]
    #: The stage options the pipeline ran with (`REPORTED_SETTINGS`).
    settings: dict[str, Any]
    clips: list[ClipScore] = field(default_factory=list)
    tuning: Tuning | None = None

    def overall(self, sampled: bool | None = None, half: Half | None = None) -> dict[str, float]:
        """Pipeline against direct faster-whisper (with VAD); only the clips where either
        sampled, or where neither did, when `sampled` says so; only one half's if asked."""
        return _rates(self._clips(sampled, half), ("pipeline", "direct"))

    def _clips(self, sampled: bool | None, half: Half | None) -> list[ClipScore]:
        return [
            clip
            for clip in self.clips
            if (sampled is None or clip.sampled == sampled) and (half is None or clip.half == half)
        ]

    def as_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "settings": self.settings,
            "split": SPLIT_RULE,
            "clips": len(self.clips),
            "overall": self.overall(),
            "deterministic_clips": self.overall(sampled=False),
            "sampled_clips": self.overall(sampled=True),
            "halves": {
                half: {
                    "overall": self.overall(half=half),
                    "deterministic_clips": self.overall(sampled=False, half=half),
                    "sampled_clips": self.overall(sampled=True, half=half),
                }
                for half in HALVES
            },
            "direct_no_vad": {
                "overall": _rates(self.clips, ("direct_no_vad",)),
                **{half: _rates(self._clips(None, half), ("direct_no_vad",)) for half in HALVES},
            },
            **({"tuning": self.tuning.as_json()} if self.tuning else {}),
            "per_clip": [
                {
                    **dataclasses.asdict(clip),
                    **{name: round(rate, 4) for name, rate in clip.rates().items()},
                }
                for clip in self.clips
            ],
        }


def corpus_clips(corpus: Path) -> list[CorpusClip]:
    """Clips with a reference transcript (one Common Voice clip has none: language ID only),
    each in its half of the split (`SPLIT_RULE`)."""
    table = corpus / "transcripts.tsv"
    if not table.is_file():
        raise FileNotFoundError(f"no transcripts.tsv in {corpus}")
    with table.open(encoding="utf-8", newline="") as handle:
        rows = [row for row in csv.DictReader(handle, delimiter="\t") if row["reference_text"]]
    halves = split_halves({row["file"]: _speaker(row.get("description") or "") for row in rows})
    return [CorpusClip(row["file"], row["reference_text"], halves[row["file"]]) for row in rows]


def _speaker(description: str) -> str | None:
    found = _SPEAKER.search(description)
    return found.group(1) if found else None


def split_halves(speakers: Mapping[str, str | None]) -> dict[str, Half]:
    """Each file's half (`SPLIT_RULE`), from its speaker where known: one speaker's clips
    never sit on both sides, or the held-out half would hear a voice the choice was tuned to."""
    groups: dict[str, dict[str, list[str]]] = {}
    for file, speaker in speakers.items():
        folder = file.split("/", 1)[0] if "/" in file else ""
        groups.setdefault(folder, {}).setdefault(speaker or file, []).append(file)
    halves: dict[str, Half] = {}
    for by_group in groups.values():
        for number, group in enumerate(sorted(by_group)):
            halves.update(dict.fromkeys(by_group[group], HALVES[number % 2]))
    return halves


def faster_whisper_defaults() -> dict[str, Any]:
    """faster-whisper's own values of the options the stage exposes, read from the installed
    version, so that a tie goes to what the library's authors chose, not to ours."""
    from faster_whisper import WhisperModel
    from faster_whisper.vad import VadOptions

    vad = VadOptions()
    transcribe = inspect.signature(WhisperModel.transcribe).parameters
    return {
        "beam_size": transcribe["beam_size"].default,
        "vad_threshold": vad.threshold,
        "vad_speech_pad_ms": vad.speech_pad_ms,
        "condition_on_previous_text": transcribe["condition_on_previous_text"].default,
    }


def candidates(grid: Mapping[str, tuple[Any, ...]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, in grid order."""
    return [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]


def departures(settings: Mapping[str, Any], defaults: Mapping[str, Any]) -> int:
    return sum(1 for name, value in settings.items() if defaults.get(name, value) != value)


def choose(trials: Sequence[Trial]) -> Trial:
    """The trial with the fewest character errors, unless it wins by no more than
    `TIE_CHARACTERS`: then, of the tied, the one closest to faster-whisper's defaults, and of
    those the first tried. A setting the data cannot tell apart stays the library's."""
    if not trials:
        raise ValueError("no trial to choose from")
    fewest = min(trial.char_errors for trial in trials)
    tied = [trial for trial in trials if trial.char_errors <= fewest + TIE_CHARACTERS]
    return min(tied, key=lambda trial: trial.departures)


def _plan(config: QarinaConfig, settings: Mapping[str, Any]) -> Plan:
    """The probe and the transcript stage as `qarina run` plans them, `settings` over the
    transcript stage's registered options."""
    default = Plan.default(["probe", "transcript"], settings=config)
    options = dataclasses.replace(default.stages["transcript"].config, **settings)
    return Plan({**default.stages, "transcript": TranscriptStage(options)}, default.reads)


class _Runner:
    """Runs the pipeline and direct faster-whisper on corpus clips, each pipeline run on a
    fresh store (a store keeps results by key, and a candidate's must not be found there)."""

    def __init__(self, corpus: Path, scratch: Path, models_dir: Path | None) -> None:
        self.corpus = corpus
        self.scratch = scratch
        self.base = self._config(0, models_dir or scratch / "models")
        self.runs = 0

    @functools.cached_property
    def model(self) -> whisper.WhisperModel:
        return whisper.resolve(self.base.models_dir, None)

    def _config(self, run: int, models_root: Path) -> QarinaConfig:
        data = self.scratch / f"run-{run}"
        return QarinaConfig(
            data_dir=data, db_url=f"sqlite:///{data / 'eval.sqlite3'}", models_root=models_root
        )

    def settings(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        """The options the pipeline runs with under `settings`, as the report records them."""
        config = _plan(self.base, settings).stage("transcript").config
        return {name: getattr(config, name) for name in REPORTED_SETTINGS}

    def pipeline(
        self, clips: Sequence[CorpusClip], settings: Mapping[str, Any]
    ) -> dict[str, Transcribed]:
        """The clips through ingest, probe and the transcript stage with `settings`, as one
        backlog in table order (the stage packs a batch's short recordings together, so
        which clips run together changes the words: the same clips in the same order give
        the same words)."""
        self.runs += 1
        config = self._config(self.runs, self.base.models_dir)
        plan = _plan(config, settings)
        store = open_store(config)
        try:
            sha_of = {
                clip.file: ingest_paths(
                    store, plan, config, [self.corpus / clip.file], source="corpus"
                ).sha256s[0]
                for clip in clips
            }
            run_plan(store, plan, config)
            texts = {}
            for file, sha256 in sha_of.items():
                shown = store.show(sha256, plan.current_keys()) or {}
                stored = shown.get("results", {}).get("transcript", {}).get("data")
                segments = TranscriptResult.from_json(stored).segments if stored else []
                texts[file] = Transcribed(
                    " ".join(segment.text for segment in segments),
                    any("sampled" in segment.flags for segment in segments),
                )
        finally:
            store.close()
        return texts

    def direct(self, clips: Sequence[CorpusClip], vad: bool) -> dict[str, Transcribed]:
        """faster-whisper as its README calls it: the file path, Arabic, its defaults (beam
        5), with its VAD on (its default VAD options) or off."""
        device = whisper.choose_device(engine=whisper.CTRANSLATE2)  # faster-whisper's own
        engine = whisper.load(self.model, device, TranscriptConfig().cpu_threads)
        texts = {}
        for clip in clips:
            segments, _ = engine.transcribe(
                str(self.corpus / clip.file), language="ar", beam_size=5, vad_filter=vad
            )
            decoded = list(segments)
            texts[clip.file] = Transcribed(
                " ".join(segment.text.strip() for segment in decoded),
                any(segment.temperature > 0 for segment in decoded),
            )
        return texts

    def tune(self, clips: Sequence[CorpusClip], grid: Mapping[str, tuple[Any, ...]]) -> Tuning:
        """Every candidate run on the choosing half alone, so that no held-out recording
        even shares a model window with the clips the choice is scored on."""
        choosing = [clip for clip in clips if clip.half == "choosing"]
        references = [normalise(clip.reference) for clip in choosing]
        defaults = faster_whisper_defaults()
        trials = []
        for settings in candidates(grid):
            texts = self.pipeline(choosing, settings)
            heard = [normalise(texts[clip.file].text) or "-" for clip in choosing]
            scored = jiwer.process_characters(references, heard)
            trials.append(
                Trial(
                    settings,
                    len(choosing),
                    scored.substitutions + scored.deletions + scored.insertions,
                    round(scored.cer, 4),
                    round(jiwer.wer(references, heard), 4),
                    departures(settings, defaults),
                )
            )
        return Tuning(grid, defaults, trials, choose(trials))


def evaluate_transcripts(
    corpus: Path,
    models_dir: Path | None = None,
    limit: int | None = None,
    tune: bool = False,
) -> TranscriptEvaluation:
    """Transcribe every clip with a reference both ways and score both with one normaliser,
    each half of the split apart; with `tune`, the pipeline runs with the settings chosen
    on the choosing half (`TUNING_GRID`), else with the stage's registered options.

    The report's pipeline run takes the whole corpus as one backlog, as `qarina run` would,
    so its overall figures compare with earlier reports; its choosing half therefore differs
    a little from the tuning's run of that half alone (other clips share its windows).

    Every segment counts, flagged or not: the rates measure recognition, and flags are a
    separate judgement about trust.
    """
    clips = corpus_clips(corpus)[:limit]
    with tempfile.TemporaryDirectory(prefix="qarina-eval-transcript-") as scratch:
        runner = _Runner(corpus, Path(scratch), models_dir)
        tuning = runner.tune(clips, TUNING_GRID) if tune else None
        settings = tuning.chosen.settings if tuning else {}
        pipeline = runner.pipeline(clips, settings)
        direct, direct_no_vad = (runner.direct(clips, vad) for vad in (True, False))
    evaluation = TranscriptEvaluation(
        {"name": runner.model.name, "sha256": runner.model.sha256},
        runner.settings(settings),
        tuning=tuning,
    )
    for clip in clips:
        ours, theirs = pipeline[clip.file], direct[clip.file]
        evaluation.clips.append(
            ClipScore(
                clip.file,
                clip.half,
                normalise(clip.reference),
                normalise(ours.text),
                normalise(theirs.text),
                normalise(direct_no_vad[clip.file].text),
                ours.sampled or theirs.sampled,
            )
        )
    return evaluation
