"""Speech to text with faster-whisper, with every doubtful segment marked as doubtful.

A transcript read in court as what was said must not carry the model's inventions as fact.
Whisper invents in known ways: it loops on a phrase, it writes fluent text over silence or
music, it emits stock phrases from its training subtitles ("subscribe to the channel"). Each
segment therefore keeps the model's own confidence figures and a list of flags, and the
item's plain `text` holds only the unflagged segments; flagged ones stay in `segments` for a
listener to check.

Audio is decoded by ffmpeg (with a timeout and a memory limit, like every tool) into 16 kHz
mono PCM in the scratch folder, then transcribed in windows of at most half an hour cut at a
quiet moment, so a ten-hour interception needs the memory of a short one.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import itertools
import math
import re
import time
import zlib
from collections.abc import Collection, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import numpy as np

from models import whisper
from workers.arabic import normalise
from workers.base import (
    ArtifactFile,
    FailureReason,
    JsonRecord,
    Kind,
    Resources,
    Stage,
    StageConfig,
    StageEnvironment,
    StageError,
    StageInput,
    StageOutput,
    StageSkipped,
)
from workers.probe import ProbeResult, duration_of
from workers.tools import (
    ToolLimits,
    ToolRun,
    ffmpeg_input,
    package_version,
    run_tool,
    tool_version,
)

SAMPLE_RATE = 16_000
#: A window of audio handed to the model at once: 30 min of float32 is 115 MB.
WINDOW_S = 1800.0
#: A window ends at the quietest 100 ms within this many seconds before its nominal end.
_CUT_SEARCH_S = 30.0
#: What Whisper hears at once: a packed window is padded to it in a batched call.
_MODEL_WINDOW_S = 30.0
#: Packed windows decoded side by side in one step of a batched call (64 recordings rarely
#: fill more; their features and activations stay a few hundred MB).
_WINDOWS_PER_CALL = 16
#: How far (seconds) a word's timing must reach into a packed recording's speech to meet it
#: (or all of it, for a shorter word): one step of the alignment Whisper's word times come
#: from; less is rounding.
_MEETS_S = 0.02
_FRAME_S = 0.1
#: Whisper's own thresholds (OpenAI's transcribe defaults), reused as flags rather than
#: only as fallback triggers: a segment that still crosses them after fallback is doubtful.
COMPRESSION_RATIO_LIMIT = 2.4
LOGPROB_LIMIT = -1.0
NO_SPEECH_LIMIT = 0.6
#: Below this RMS level (dBFS) a segment's span is silence whatever text it carries.
SILENCE_DBFS = -50.0
#: A word n-gram (n up to 4) repeated this many times in a row is a decoding loop.
_LOOP_REPEATS = 4
#: Stock phrases Whisper writes over silence and music in Arabic, learned from subtitle
#: credits and channel outros; compared after normalisation.
KNOWN_HALLUCINATIONS = (
    "اشتركوا في القناه",
    "لا تنسوا الاشتراك في القناه",
    "ترجمه نانسي قنقر",
    "شكرا للمشاهده",
    "شكرا على المشاهده",
    "المترجم للقناه",
)
#: Whole-segment captions in brackets ("[موسيقى]", "(music)") and music notes.
_NON_SPEECH_MARKERS = re.compile(r"^[\[(].*[\])]$|[\u266a\u266b]")


@dataclass(frozen=True)
class TranscriptConfig(StageConfig):
    """Options that change the transcript, so all of them are part of the result key.

    `model` is `base` (the packaged Whisper base) or a CTranslate2 Whisper folder
    (QARINA_WHISPER_MODEL); `language` is an ISO code, or `auto` to detect and record it.
    `mode` `auto` batches on a GPU and decodes sequentially (with beam search and context)
    on a CPU, where recordings with little speech are packed together (`pack_*`).

    The VAD options were chosen by `qarina eval transcript --tune` on one half of the shared
    corpus and checked on the other (see pipelines/transcript_eval.py for the split): settings
    chosen and judged on the same clips had not carried over to dialect recordings. Where
    the corpus cannot tell values apart, faster-whisper's own default stands, not a value no
    data tested: so for `condition_on_previous_text`, since every corpus recording fits one
    30-s model window, where earlier text never exists.
    """

    model: str = "base"
    language: str = "ar"
    beam_size: int = 5
    vad: bool = True
    #: faster-whisper's 0.5: a laxer 0.35 gave 50 character errors on the choosing half
    #: against 49 (with the padding below), within a character of it.
    vad_threshold: float = 0.5
    #: A second of audio kept around each speech region. Choosing half (speaker 00000014 and
    #: three Common Voice clips, 279 characters, run alone): CER 0.176 against 0.208 with
    #: faster-whisper's 400 ms and with 200 ms. Held-out half (speaker 00000026, two Common
    #: Voice clips), the corpus run as one backlog: 0.210 against 0.262 with 400 ms; direct
    #: faster-whisper with its defaults, VAD on, 0.555 and 0.572 in two runs (it samples).
    #: Choosing half in that run 0.172, direct 0.305 (2026-12, Whisper base int8).
    vad_speech_pad_ms: int = 1000
    #: faster-whisper's default, which the corpus as it is cannot test (see above); off, the
    #: pipeline lost to direct faster-whisper on dialect recordings held apart (issue 14).
    #: Corpus clips joined into recordings of 2-3 min favour off (CER 0.140 against 0.159 on
    #: the choosing half, 0.275 against 0.385 held out) and on one 3-min join it decoded
    #: 2.2x slower, but a list of unrelated words is not the speech context exists for.
    condition_on_previous_text: bool = True
    mode: str = "auto"
    batch_size: int = 8
    #: Recordings with at most this much speech (after VAD) share model windows: alone, a
    #: one-word voice note pays a full 30-s encoder window and a decode. 0 packs nothing.
    pack_speech_s: float = 20.0
    #: Recordings longer than this are not looked at for packing (their VAD would run twice).
    pack_max_duration_s: float = 300.0
    #: Silence put between packed recordings, so the model ends a segment between them.
    pack_gap_s: float = 1.0
    #: Packed audio per model window, gaps included: under Whisper's 30 s, so it is one.
    pack_window_s: float = 28.0
    cpu_threads: int = 2
    #: Seconds of wall clock per second of audio, on top of a fixed five minutes.
    budget_per_audio_s: float = 2.0


@dataclass(frozen=True)
class ModelRef(JsonRecord):
    """Which weights made a transcript: a name for people, the SHA-256 for proof."""

    name: str
    sha256: str


@dataclass(frozen=True)
class Segment(JsonRecord):
    """A stretch of speech: seconds from the start of the audio, the text as transcribed, the
    model's own figures for it, and why it is doubtful (empty when nothing marks it)."""

    start: float
    end: float
    text: str
    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float
    flags: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Packing(JsonRecord):
    """How a packed transcript ran: the items whose speech shared its model window, in that
    order, and where this item's speech began in it. The model heard the item beside the
    others, so its words can differ from a run alone; this says beside which, so the run can
    be repeated."""

    items: list[str]
    position: int
    offset_s: float
    #: 2 for a recording packed again, apart from those it may have swapped words with,
    #: because its first window could not vouch for its words (see
    #: `TranscriptStage._split_window`); 3 for one decoded alone because its second could not.
    attempt: int = 1


@dataclass(frozen=True)
class TranscriptResult(JsonRecord):
    """A transcript with its provenance: `text` holds only segments without flags.

    `language_probability` is None when the language was forced rather than detected.
    `mode` `packed` with `packing` None: VAD found no speech, and no model heard the item.
    """

    language: str
    language_probability: float | None
    model: ModelRef
    device: str
    compute_type: str
    mode: str
    duration_s: float
    speech_s: float
    segments: list[Segment]
    text: str
    flagged_segments: int
    flags: list[str]
    packing: Packing | None = None
    #: The engine that ran the model (`ctranslate2` or `torch`): results made before there was
    #: a choice were all CTranslate2's.
    engine: str = whisper.CTRANSLATE2

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        packing = data.get("packing")
        return cls(
            **{
                **data,
                "model": ModelRef.from_json(data["model"]),
                "segments": [Segment.from_json(segment) for segment in data["segments"]],
                "packing": None if packing is None else Packing.from_json(packing),
            }
        )


def compression_ratio(text: str) -> float:
    """How well the text compresses: loops compress far better than speech (Whisper's test)."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def _has_loop(words: Sequence[str]) -> bool:
    for size in range(1, 5):
        for start in range(len(words) - size * _LOOP_REPEATS + 1):
            gram = words[start : start + size]
            if all(
                words[start + size * repeat : start + size * (repeat + 1)] == gram
                for repeat in range(1, _LOOP_REPEATS)
            ):
                return True
    return False


def _rms_dbfs(samples: np.ndarray) -> float:
    if samples.size == 0:
        return -math.inf
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
    return 20 * math.log10(rms) if rms > 0 else -math.inf


def segment_flags(
    text: str,
    avg_logprob: float,
    no_speech_prob: float,
    ratio: float,
    span_dbfs: float,
    previous_text: str | None,
    temperature: float = 0.0,
) -> list[str]:
    """Why a segment is doubtful; an empty list means nothing marks it as invented.

    `sampled` marks text Whisper only produced by sampling, after its deterministic decode
    failed (looped or scored too low): such text is a guess, and a rerun may guess otherwise
    (CTranslate2 cannot reseed a loaded model), so it never enters the trusted text.
    """
    words = normalise(text).split()
    repeats_previous = previous_text is not None and normalise(previous_text) == " ".join(words)
    flags = []
    if _has_loop(words) or repeats_previous:
        flags.append("repetition")
    if ratio > COMPRESSION_RATIO_LIMIT:
        flags.append("high_compression")
    if avg_logprob < LOGPROB_LIMIT:
        flags.append("low_confidence")
    if no_speech_prob > NO_SPEECH_LIMIT:
        flags.append("no_speech")
    if span_dbfs < SILENCE_DBFS:
        flags.append("silence")
    if _NON_SPEECH_MARKERS.search(text.strip()) or not words:
        flags.append("non_speech")
    if " ".join(words) in KNOWN_HALLUCINATIONS:
        flags.append("known_hallucination")
    if temperature > 0:
        flags.append("sampled")
    return flags


def window_bounds(samples: np.ndarray, window: int, search: int, frame: int) -> list[int]:
    """Window edges (sample indexes) no longer than `window`, each cut at the quietest frame
    of the `search` samples before the nominal cut, so a word is rarely split in two."""
    edges = [0]
    total = len(samples)
    while total - edges[-1] > window:
        nominal = edges[-1] + window
        region = samples[nominal - search : nominal]
        frames = region[: len(region) // frame * frame].reshape(-1, frame)
        quietest = int(np.argmin(np.mean(np.square(frames, dtype=np.float64), axis=1)))
        edges.append(nominal - search + quietest * frame + frame // 2)
    edges.append(total)
    return edges


@dataclass(frozen=True, eq=False)
class _Recording:
    """One item's audio on its way into a packed window: where its outcome goes in the batch,
    its samples, and the speech VAD found in them (sample indexes, and those samples joined)."""

    index: int
    item: StageInput
    workdir: Path
    #: 16-bit, mapped from the scratch file: a batch holds many recordings at once.
    samples: np.ndarray
    chunks: list[dict[str, int]]
    speech: np.ndarray

    def original_time(self, local_s: float, is_end: bool = False) -> float:
        """A time in the joined speech as a time in the recording."""
        from faster_whisper.vad import SpeechTimestampsMap

        local_s = min(max(local_s, 0.0), len(self.speech) / SAMPLE_RATE)
        timeline = SpeechTimestampsMap(self.chunks, SAMPLE_RATE, time_precision=3)
        return float(timeline.get_original_time(local_s, is_end=is_end))


def pack_windows(
    speech_s: Sequence[float],
    gap_s: float,
    window_s: float,
    apart: Sequence[AbstractSet[int]] | None = None,
) -> list[list[int]]:
    """Recordings (by index) that share a window: each goes, in batch order, into the first
    window where its speech, with a gap before it, still fits, so one long note does not
    leave the rest of a window empty; with `apart` (for each recording, those it must not
    share a window with, every pair named both ways), into none that holds one of those."""
    windows: list[list[int]] = []
    filled: list[float] = []
    for index, seconds in enumerate(speech_s):
        room = next(
            (
                number
                for number, used in enumerate(filled)
                if used + gap_s + seconds <= window_s
                and (apart is None or apart[index].isdisjoint(windows[number]))
            ),
            None,
        )
        if room is None:
            windows.append([index])
            filled.append(seconds)
        else:
            windows[room].append(index)
            filled[room] += gap_s + seconds
    return windows


class TranscriptStage(Stage[TranscriptConfig, TranscriptResult]):
    """Transcribe the first audio stream of a video or audio item with faster-whisper.

    The model is loaded once per worker in setup(); on a GPU node the runtime gives the actor
    a GPU and this stage uses batched inference there. On a CPU, a batch's recordings with
    little speech are packed into shared model windows (`run_many`).
    """

    name = "transcript"
    #: 3: a packed recording keeps only words timed inside its own speech, and one whose
    #: words its window cannot vouch for is packed again apart, then alone (2: packing).
    version = "3"
    kinds = frozenset({Kind.VIDEO, Kind.AUDIO})
    requires = ("probe",)
    resources = Resources(num_cpus=2.0, memory_mb=2048, gpus_when_available=1.0)
    #: Enough voice notes to fill several windows (about a dozen one-word notes fill one).
    batch_size = 64
    shares_work = True

    def __init__(self, config: TranscriptConfig | None = None) -> None:
        super().__init__(config or TranscriptConfig())
        self._model: Any = None
        self._pipeline: Any = None
        #: The engine packed windows go through: several windows in one batched call.
        self._window_engine: Any = None
        self._model_ref: whisper.WhisperModel | None = None
        self._device = whisper.Device("cpu", "int8")
        #: Device memory one model window takes while decoded (an estimate, see whisper.Shape).
        self._window_bytes = 0
        self._setup_error: str | None = None

    def __getstate__(self) -> dict[str, Any]:
        # A loaded model does not travel between processes; the receiver loads its own.
        state = self.__dict__.copy()
        state.update(_model=None, _pipeline=None, _window_engine=None)
        return state

    def setup(self, env: StageEnvironment | None = None) -> None:
        """Find, check and load the model once; a missing model fails each job clearly
        (model_error) instead of killing the worker."""
        from faster_whisper import BatchedInferencePipeline

        override = None if self.config.model == "base" else Path(self.config.model)
        if env is None:
            self._setup_error = "no models folder given to the transcript stage"
            return
        try:
            model = whisper.resolve(env.models_dir, override)
            whisper.verify(model)
            self._device = whisper.choose_device(env.device, env.engine, model)
            self._window_bytes = whisper.shape(model).window_bytes(self.config.beam_size)
            self._model = whisper.load(model, self._device, self.config.cpu_threads)
        except whisper.ModelMissing as error:
            self._setup_error = str(error)
            return
        self._model_ref = model
        self._window_engine = BatchedInferencePipeline(self._model)
        if self.mode == "batched":
            self._pipeline = self._window_engine

    def teardown(self) -> None:
        """Free the model (and its GPU memory) before the worker goes."""
        self._model = self._pipeline = self._window_engine = None

    @property
    def mode(self) -> str:
        if self.config.mode != "auto":
            return self.config.mode
        return "batched" if self._device.kind == "cuda" else "sequential"

    def tool_versions(self) -> dict[str, str]:
        """faster-whisper, the engine's packages and ffmpeg: each can change the words."""
        versions = {"ffmpeg": tool_version("ffmpeg")}
        engine = (
            ("torch", "transformers") if self._device.engine == whisper.TORCH else ("ctranslate2",)
        )
        for package in ("faster-whisper", *engine):
            versions[package] = package_version(package) or "unknown"
        return versions

    def run(self, item: StageInput, workdir: Path) -> StageOutput[TranscriptResult]:
        """Transcribe one item and write WebVTT and SRT beside the result: a batch of one,
        so an item follows the same rules whether it came alone or with others.

        Raises:
            StageSkipped: `no_audio` for a video without an audio stream.
            StageError: model_error when no model could be loaded, corrupt_media when the
                audio does not decode, tool_timeout past the time budget.
        """
        (outcome,) = self.run_many([(item, workdir)])
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def run_many(
        self, items: Sequence[tuple[StageInput, Path]]
    ) -> list[StageOutput[TranscriptResult] | Exception]:
        """Transcribe a batch: recordings with little speech share model windows (their
        results say with which), the rest are transcribed one by one in windows of their own.
        Each outcome is the item's own; a shared window's engine failure is the failure of
        each item in it (and retried, like any engine failure)."""
        outcomes: list[StageOutput[TranscriptResult] | Exception | None] = [None] * len(items)
        packable: list[_Recording] = []
        for index, ((item, workdir), samples) in enumerate(
            zip(items, self._decode(items), strict=True)
        ):
            try:
                if isinstance(samples, Exception):
                    raise samples
                recording = self._packable(index, item, workdir, samples)
                if recording is None:
                    outcomes[index] = _with_subtitles(self._transcribe(samples), workdir)
                elif recording.speech.size == 0:
                    outcomes[index] = _with_subtitles(self._unheard(recording), workdir)
                else:
                    packable.append(recording)
            except Exception as error:  # the item's own outcome, classified by the runtime
                outcomes[index] = error
        for recording, outcome in self._transcribe_packable(packable).items():
            if isinstance(outcome, Exception):
                outcomes[recording.index] = outcome
                continue
            try:
                outcomes[recording.index] = _with_subtitles(outcome, recording.workdir)
            except OSError as error:  # its scratch folder's, not the others'
                outcomes[recording.index] = error
        return [outcome for outcome in outcomes if outcome is not None]

    def _transcribe_packable(
        self, packable: list[_Recording]
    ) -> dict[_Recording, TranscriptResult | Exception]:
        """Pack the recordings into windows and transcribe each window. A recording whose
        words its window cannot vouch for (`_split_window`) is packed again apart from those
        it may have swapped words with there, and, where that window cannot vouch for them
        either, decoded alone, where every word is its own.

        Alone at once costs a 30-s window per doubted recording: on the shared corpus as one
        backlog (each keyword said by two speakers side by side, so their texts match) about
        60 of 85, which took 118 s of pipeline time against 49-76 s packed apart first (28-32 s
        before either; a busy 2 vCPU, 2026-12); and alone, Whisper base invents more on
        one-second notes (held-out CER 1.78, with a loop, against 0.41)."""
        outcomes: dict[_Recording, TranscriptResult | Exception] = {}
        apart: dict[_Recording, set[_Recording]] = {}
        pending = packable
        for attempt in (1, 2, 3):
            if attempt == 3:
                windows = [[index] for index in range(len(pending))]
            else:
                index_of = {recording: index for index, recording in enumerate(pending)}
                windows = pack_windows(
                    [len(recording.speech) / SAMPLE_RATE for recording in pending],
                    self.config.pack_gap_s,
                    self.config.pack_window_s,
                    [
                        {index_of[other] for other in apart.get(recording, ())}
                        for recording in pending
                    ],
                )
            grouped = [[pending[index] for index in window] for window in windows]
            doubted: list[_Recording] = []
            heard = self._transcribe_windows(grouped, attempt)
            for recordings, results in zip(grouped, heard, strict=True):
                if isinstance(results, Exception):  # each item's own outcome
                    outcomes.update(dict.fromkeys(recordings, results))
                    continue
                for recording, result in zip(recordings, results, strict=True):
                    if isinstance(result, TranscriptResult):
                        outcomes[recording] = result
                        continue
                    doubted.append(recording)
                    apart[recording] = {recordings[position] for position in result}
            pending = doubted
        assert not pending, "a recording alone in its window owns every word it is given"
        return outcomes

    def _transcribe_windows(
        self, windows: list[list[_Recording]], attempt: int
    ) -> list[list[TranscriptResult | frozenset[int]] | Exception]:
        """Every packed window in one batched model call (13.3 s against 23.8 s one window
        after another for the corpus's 8 windows of voice notes, the same text and figures,
        2 vCPU); when the shared call fails, each window alone, so that a failure stays with
        the window it belongs to."""
        if not windows:
            return []
        try:
            return list(self._transcribe_packed(windows, attempt))
        except Exception as error:  # retried window by window, as decoding files is
            if len(windows) == 1:
                return [error]
        outcomes: list[list[TranscriptResult | frozenset[int]] | Exception] = []
        for window in windows:
            try:
                outcomes += self._transcribe_packed([window], attempt)
            except Exception as error:  # that window's recordings' own outcome
                outcomes.append(error)
        return outcomes

    def _decode(self, items: Sequence[tuple[StageInput, Path]]) -> list[np.ndarray | Exception]:
        """Each item's samples, or why there are none: a video without sound is skipped,
        and without a model nothing is decoded."""
        decoded: list[np.ndarray | Exception] = []
        sources: list[tuple[Path, Path, float]] = []
        for item, workdir in items:
            probe = item.upstream_result("probe", ProbeResult)
            if item.kind is Kind.VIDEO and probe is not None and not probe.has_audio:
                decoded.append(StageSkipped("no_audio"))
            elif self._model is None or self._model_ref is None:
                decoded.append(
                    StageError(FailureReason.MODEL_ERROR, self._setup_error or "model not loaded")
                )
            else:
                decoded.append(np.zeros(0, dtype=np.int16))  # a place for its samples
                sources.append((item.path, workdir / "audio.pcm", duration_of(probe)))
        samples = iter(decode_audio_many(sources))
        return [next(samples) if isinstance(place, np.ndarray) else place for place in decoded]

    def _packable(
        self, index: int, item: StageInput, workdir: Path, samples: np.ndarray
    ) -> _Recording | None:
        """The recording ready to pack, or None when it runs alone: packing needs the
        sequential decode, a forced language (one window, one language) and VAD, and pays
        only for recordings with little speech."""
        from faster_whisper.vad import VadOptions, get_speech_timestamps

        config = self.config
        if (
            self.mode != "sequential"
            or config.language == "auto"
            or not config.vad
            or len(samples) > config.pack_max_duration_s * SAMPLE_RATE
        ):
            return None
        audio = _as_float(samples)
        chunks = get_speech_timestamps(
            audio,
            VadOptions(threshold=config.vad_threshold, speech_pad_ms=config.vad_speech_pad_ms),
        )
        if sum(chunk["end"] - chunk["start"] for chunk in chunks) > (
            config.pack_speech_s * SAMPLE_RATE
        ):
            return None
        speech = (
            np.concatenate([audio[chunk["start"] : chunk["end"]] for chunk in chunks])
            if chunks
            else np.zeros(0, dtype=np.float32)
        )
        return _Recording(index, item, workdir, samples, chunks, speech)

    def _deadline(self, audio_s: float) -> float:
        return time.monotonic() + 300.0 + self.config.budget_per_audio_s * audio_s

    def _transcribe(self, samples: np.ndarray) -> TranscriptResult:
        deadline = self._deadline(len(samples) / SAMPLE_RATE)
        edges = window_bounds(
            samples,
            int(WINDOW_S * SAMPLE_RATE),
            int(_CUT_SEARCH_S * SAMPLE_RATE),
            int(_FRAME_S * SAMPLE_RATE),
        )
        segments: list[Segment] = []
        speech_s = 0.0
        language, probability = self.config.language, None
        for start, end in itertools.pairwise(edges):
            window = _as_float(samples[start:end])
            options = transcribe_options(self.config, language, batched=self._pipeline is not None)
            pieces, info = self._model_call(window, options, deadline)
            if self.config.language == "auto" and start == 0:
                language, probability = info.language, round(float(info.language_probability), 4)
            speech_s += float(info.duration_after_vad if self.config.vad else info.duration)
            offset = start / SAMPLE_RATE
            for piece in _from_engine(pieces):
                _check(deadline)
                span = window[int(piece.start * SAMPLE_RATE) : int(piece.end * SAMPLE_RATE)]
                segments.append(
                    self._segment(
                        piece.text, offset + piece.start, offset + piece.end, piece, span, segments
                    )
                )
        return self._result(language, probability, len(samples), speech_s, segments, self.mode)

    def _unheard(self, recording: _Recording) -> TranscriptResult:
        """A packable recording in which VAD found no speech: what a run alone gives too."""
        return self._result(self.config.language, None, len(recording.samples), 0.0, [], "packed")

    def _transcribe_packed(
        self, windows: list[list[_Recording]], attempt: int = 1
    ) -> list[list[TranscriptResult | frozenset[int]]]:
        """Model windows each holding several recordings' speech, a silent gap between each,
        decoded together (each window padded to 30 s, as the model hears one), and split
        among their recordings by word time (`_split_window`).

        Temperature fallback is off here: sampled text never enters the trusted text, so it
        could change only doubtful segments, and it would decode the whole window again,
        every recording in it, for one recording's failed segment."""
        built = [self._window_audio(recordings) for recordings in windows]
        span = int(_MODEL_WINDOW_S * SAMPLE_RATE)
        audio = np.concatenate([np.pad(window, (0, span - len(window))) for window, _ in built])
        clips = []
        for number, (window, _) in enumerate(built):
            start = number * _MODEL_WINDOW_S
            clips.append({"start": start, "end": start + len(window) / SAMPLE_RATE})
        deadline = self._deadline(len(audio) / SAMPLE_RATE)
        options = {
            **transcribe_options(self.config, self.config.language, batched=True),
            "batch_size": min(len(windows), _WINDOWS_PER_CALL),
            "clip_timestamps": clips,
            "vad_filter": False,
            "temperature": 0.0,
            "word_timestamps": True,
            "without_timestamps": False,
        }
        options.pop("vad_parameters")
        pieces, _ = self._model_call(audio, options, deadline, self._window_engine)
        heard: list[list[Any]] = [[] for _ in windows]
        for piece in _from_engine(pieces):
            _check(deadline)
            number = min(int(piece.start // _MODEL_WINDOW_S), len(windows) - 1)
            heard[number].append(_shifted(piece, -number * _MODEL_WINDOW_S))
        return [
            self._split_window(recordings, offsets, pieces_heard, attempt)
            for recordings, (_, offsets), pieces_heard in zip(windows, built, heard, strict=True)
        ]

    def _window_audio(self, recordings: list[_Recording]) -> tuple[np.ndarray, list[float]]:
        """One window's samples: the recordings' speech with a silent gap between each, and
        where each starts (seconds)."""
        gap = np.zeros(int(self.config.pack_gap_s * SAMPLE_RATE), dtype=np.float32)
        offsets: list[float] = []
        parts: list[np.ndarray] = []
        filled = 0
        for recording in recordings:
            if parts:
                parts.append(gap)
                filled += len(gap)
            offsets.append(filled / SAMPLE_RATE)
            parts.append(recording.speech)
            filled += len(recording.speech)
        return np.concatenate(parts), offsets

    def _split_window(
        self,
        recordings: list[_Recording],
        offsets: list[float],
        pieces: list[Any],
        attempt: int,
    ) -> list[TranscriptResult | frozenset[int]]:
        """The engine segments of one window, split among its recordings by word time; for a
        recording whose words the window cannot vouch for, instead of a result, the others
        (positions) it may have swapped words with.

        The model hears a window as one stream, and its words land on the wrong recording
        in three ways, all seen on the shared corpus (Speech Commands notes, 1 s apart): it
        writes one segment over several recordings, whose word times then come only from an
        alignment that starts each word where the last ended, so a word slides over the gap
        onto the next recording (`two`'s "اثنان" on `undo`); it times a word late, onto the
        neighbour, and its own recording gets none (`cancel`'s on `close`); and it writes a
        neighbour's word over a recording with exact timing (`stop`, "توقف" alone, heard as
        `three`'s "ثلاثة", which `three` got too). So a word is a recording's only when its
        timing meets that recording's speech and no other's, and a recording is doubted
        with the others that could claim one of its words (timed across them, or in the
        gap between), with its neighbours when it got no word and none was claimed, and
        with those whose text is the same as its own. Gaps of 2 or 3 s or a tone between
        recordings removed none of these and cost accuracy (corpus, 2026-12). Alone, a
        recording owns every word it is given.
        """
        spans = [
            (offset, offset + len(recording.speech) / SAMPLE_RATE)
            for recording, offset in zip(recordings, offsets, strict=True)
        ]
        suspects: dict[int, set[int]] = {}

        def doubt(positions: Collection[int]) -> None:
            for position in positions:
                suspects.setdefault(position, set()).update(positions)
                suspects[position].discard(position)

        def owner(start: float, end: float) -> int | None:
            if len(spans) == 1:
                return 0
            met = _speech_met(start, end, spans)
            if len(met) == 1:
                return met[0]
            doubt(met or _either_side(start, spans))
            return None

        segments: list[list[Segment]] = [[] for _ in recordings]
        for piece in pieces:
            # A segment without words (nothing but punctuation) is timed as one word.
            words = [(word.start, word.end, word.word) for word in piece.words or ()] or [
                (piece.start, piece.end, piece.text)
            ]
            for position, run in itertools.groupby(words, key=lambda word: owner(*word[:2])):
                if position is None:
                    continue
                run_words = list(run)
                recording, offset = recordings[position], offsets[position]
                start = recording.original_time(run_words[0][0] - offset)
                end = recording.original_time(run_words[-1][1] - offset, is_end=True)
                text = "".join(word[2] for word in run_words)
                span = _as_float(
                    recording.samples[int(start * SAMPLE_RATE) : int(end * SAMPLE_RATE)]
                )
                segments[position].append(
                    self._segment(text, start, end, piece, span, segments[position])
                )
        if len(recordings) > 1:
            texts = [normalise(" ".join(segment.text for segment in own)) for own in segments]
            for position, text in enumerate(texts):
                if not text and position not in suspects:
                    for near in (position - 1, position + 1):
                        if 0 <= near < len(recordings):
                            doubt((position, near))
                elif texts.count(text) > 1:
                    doubt([other for other, same in enumerate(texts) if same == text])
        sha256s = [recording.item.sha256 for recording in recordings]
        return [
            frozenset(suspects[position])
            if position in suspects
            else dataclasses.replace(
                self._result(
                    self.config.language,
                    None,
                    len(recording.samples),
                    len(recording.speech) / SAMPLE_RATE,
                    segments[position],
                    "packed",
                ),
                packing=Packing(sha256s, position, round(offsets[position], 3), attempt),
            )
            for position, recording in enumerate(recordings)
        ]

    def _result(
        self,
        language: str,
        probability: float | None,
        samples: int,
        speech_s: float,
        segments: list[Segment],
        mode: str,
    ) -> TranscriptResult:
        model = self._model_ref
        assert model is not None
        flagged = sum(1 for segment in segments if segment.flags)
        return TranscriptResult(
            language=language,
            language_probability=probability,
            model=ModelRef(model.name, model.sha256),
            device=self._device.kind,
            compute_type=self._device.compute_type,
            engine=self._device.engine,
            mode=mode,
            duration_s=round(samples / SAMPLE_RATE, 3),
            speech_s=round(speech_s, 3),
            segments=segments,
            text=" ".join(segment.text for segment in segments if not segment.flags),
            flagged_segments=flagged,
            flags=["doubtful_segments"] if flagged else [],
        )

    def _model_call(
        self, window: np.ndarray, options: dict[str, Any], deadline: float, engine: Any = None
    ) -> tuple[Iterator[Any], Any]:
        """`engine` on `window`, its failures classified; by default the batched pipeline
        where the mode is batched, else the model.

        A batched call (`batch_size`) decodes at most the windows the device's free memory
        holds (`whisper.windows_fitting`), and when the device runs out all the same, it is
        made again with half the windows, down to one, before the job fails: its segments are
        read here, so that no segment of a failed try is given twice."""
        if engine is None:
            engine = self._pipeline if self._pipeline is not None else self._model
        if "batch_size" not in options:
            try:
                result: tuple[Iterator[Any], Any] = engine.transcribe(window, **options)
            except RuntimeError as error:
                raise engine_failure(error) from None
            return result
        windows = whisper.windows_fitting(self._device, self._window_bytes, options["batch_size"])
        while True:
            failure = self._batched_try(engine, window, {**options, "batch_size": windows},
                                        deadline)  # fmt: skip
            if not isinstance(failure, StageError):
                return failure
            if failure.reason is not FailureReason.RESOURCE_LIMIT or windows == 1:
                raise failure
            gc.collect()  # the failed try's frames, before the device memory they held
            whisper.release_device_memory()
            windows //= 2

    @staticmethod
    def _batched_try(
        engine: Any, window: np.ndarray, options: dict[str, Any], deadline: float
    ) -> tuple[Iterator[Any], Any] | StageError:
        """One batched call read to its end, or its classified failure, kept apart from
        the call's frames so that nothing of the failed try outlives it."""
        try:
            pieces, info = engine.transcribe(window, **options)
            read = []
            for piece in _from_engine(pieces):
                _check(deadline)
                read.append(piece)
            return iter(read), info
        except RuntimeError as error:
            failure = engine_failure(error)
        except StageError as error:
            failure = StageError(error.reason, error.detail, retryable=error.retryable)
        return failure

    def _segment(
        self,
        text: str,
        start: float,
        end: float,
        piece: Any,
        span: np.ndarray,
        earlier: list[Segment],
    ) -> Segment:
        """A segment from the engine's text over `span` (its audio), with the figures of the
        engine segment it came from: a packed segment's share of one has that one's."""
        text = text.strip()
        ratio = compression_ratio(text)
        flags = segment_flags(
            text,
            piece.avg_logprob,
            piece.no_speech_prob,
            ratio,
            _rms_dbfs(span),
            earlier[-1].text if earlier else None,
            float(piece.temperature or 0.0),
        )
        return Segment(
            start=round(start, 3),
            end=round(end, 3),
            text=text,
            avg_logprob=round(float(piece.avg_logprob), 4),
            no_speech_prob=round(float(piece.no_speech_prob), 4),
            compression_ratio=round(ratio, 3),
            flags=flags,
        )


def _speech_met(start: float, end: float, spans: Sequence[tuple[float, float]]) -> list[int]:
    """The recordings (positions in a packed window) whose speech a word timed from `start`
    to `end` reaches into by `_MEETS_S`, or lies in whole."""
    reach = min(_MEETS_S, end - start)
    return [
        position
        for position, (begins, ends) in enumerate(spans)
        if min(end, ends) - max(start, begins) >= reach
    ]


def _either_side(start: float, spans: Sequence[tuple[float, float]]) -> list[int]:
    """The recordings on either side of a word that meets no speech (it lies in a gap, or
    after the last recording): the ones it may have slid from or onto."""
    after = next(
        (position for position, (begins, _) in enumerate(spans) if begins >= start), len(spans)
    )
    return [position for position in (after - 1, after) if 0 <= position < len(spans)]


def _as_float(samples: np.ndarray) -> np.ndarray:
    """16-bit samples as the model's float32 in [-1, 1)."""
    return samples.astype(np.float32) / 32768.0


def _shifted(piece: Any, by_s: float) -> Any:
    """A copy of an engine segment and of its words, moved by `by_s` seconds (from the
    batched call's timeline to its window's)."""
    moved = copy.copy(piece)
    moved.start, moved.end = piece.start + by_s, piece.end + by_s
    if piece.words:
        moved.words = []
        for word in piece.words:
            shifted_word = copy.copy(word)
            shifted_word.start, shifted_word.end = word.start + by_s, word.end + by_s
            moved.words.append(shifted_word)
    return moved


def _check(deadline: float) -> None:
    if time.monotonic() > deadline:
        raise StageError(FailureReason.TOOL_TIMEOUT, "transcription over budget")


def _with_subtitles(result: TranscriptResult, workdir: Path) -> StageOutput[TranscriptResult]:
    """The result with its WebVTT and SRT written beside it in the item's scratch folder."""
    vtt, srt = workdir / "transcript.vtt", workdir / "transcript.srt"
    vtt.write_text(to_webvtt(result.segments), encoding="utf-8")
    srt.write_text(to_srt(result.segments), encoding="utf-8")
    return StageOutput(
        result,
        (
            ArtifactFile(vtt, "text/vtt", "transcript_vtt"),
            ArtifactFile(srt, "application/x-subrip", "transcript_srt"),
        ),
    )


def engine_failure(error: RuntimeError) -> StageError:
    """A failure CTranslate2 reports as RuntimeError (GPU memory exhausted, a CUDA library
    error): the engine's and the node's, not a bug in our code, so another attempt, maybe
    on another node, may pass. The message is not kept: it is the engine's, not ours."""
    text = str(error).lower()
    if "out of memory" in text or "failed to allocate" in text or "alloc_failed" in text:
        return StageError(
            FailureReason.RESOURCE_LIMIT, "speech engine ran out of memory", retryable=True
        )
    return StageError(FailureReason.MODEL_ERROR, "speech engine failed", retryable=True)


def _from_engine(pieces: Iterator[Any]) -> Iterator[Any]:
    """The engine's segments, which it decodes lazily as they are read: its failures while
    reading them are classified like those of the call itself. The classified error is
    raised outside the handler, so it does not hold the engine's error, whose traceback
    holds the failed decode's frames and, on PyTorch, their device memory."""
    try:
        yield from pieces
        return
    except RuntimeError as error:
        failure = engine_failure(error)
    raise failure


def transcribe_options(config: TranscriptConfig, language: str, batched: bool) -> dict[str, Any]:
    """faster-whisper's keyword arguments for these options: the one place they are spelled,
    so the benchmark's direct call cannot drift from what the stage does."""
    options: dict[str, Any] = {
        "language": None if language == "auto" else language,
        "beam_size": config.beam_size,
        "vad_filter": config.vad,
        "vad_parameters": {
            "threshold": config.vad_threshold,
            "speech_pad_ms": config.vad_speech_pad_ms,
        },
    }
    if batched:
        options["batch_size"] = config.batch_size
    else:  # batches carry no context
        options["condition_on_previous_text"] = config.condition_on_previous_text
    return options


#: Files decoded by one ffmpeg run: its start costs more CPU than decoding a voice note
#: (16 one-second notes took 0.11 s of CPU in one run and 1.09 s in sixteen, measured).
_DECODE_GROUP = 16


def decode_audio(path: Path, target: Path, duration_s: float) -> np.ndarray:
    """The first audio stream as 16 kHz mono 16-bit samples, mapped from a scratch file.

    Raises:
        StageError: corrupt_media when nothing decodes; tool_timeout / resource_limit from
            the ffmpeg run.
    """
    (samples,) = decode_audio_many([(path, target, duration_s)])
    if isinstance(samples, StageError):
        raise samples
    return samples


def decode_audio_many(
    sources: Sequence[tuple[Path, Path, float]],
) -> list[np.ndarray | StageError]:
    """Each (path, target, duration) decoded as `decode_audio` does, several files to one
    ffmpeg run; where a shared run fails, each of its files is decoded in a run of its own,
    so a bad file fails alone, with its own error, and costs the others nothing."""
    decoded: list[np.ndarray | StageError] = []
    for start in range(0, len(sources), _DECODE_GROUP):
        group = sources[start : start + _DECODE_GROUP]
        try:
            run = _decode_run(group)
        except StageError as error:  # a timeout or a crash: whose, a run alone says
            if len(group) == 1:
                decoded.append(error)
                continue
            run = None
        if run is not None and (run.returncode == 0 or len(group) == 1):
            decoded.extend(_mapped(target, run) for _, target, _ in group)
        else:
            decoded.extend(result for source in group for result in decode_audio_many([source]))
    return decoded


def _decode_run(group: Sequence[tuple[Path, Path, float]]) -> ToolRun:
    inputs = [argument for path, _, _ in group for argument in ("-i", ffmpeg_input(path))]
    outputs = [
        argument
        for number, (_, target, _) in enumerate(group)
        for argument in (
            "-map", f"{number}:a:0", "-vn", "-sn", "-dn",
            "-ac", "1", "-ar", str(SAMPLE_RATE), "-c:a", "pcm_s16le", "-f", "s16le",
            "-y", str(target),
        )
    ]  # fmt: skip
    seconds = sum(duration_s for _, _, duration_s in group)
    return run_tool(
        ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error",
         "-protocol_whitelist", "file", *inputs, *outputs],
        ToolLimits(timeout_s=60.0 + 0.05 * seconds, memory_mb=1024),
    )  # fmt: skip


def _mapped(target: Path, run: ToolRun) -> np.ndarray | StageError:
    size = target.stat().st_size if target.exists() else 0
    if size < 2:
        detail = run.stderr_summary() if run.returncode else "no audio samples decoded"
        return StageError(FailureReason.CORRUPT_MEDIA, f"audio: {detail}")
    return np.memmap(target, dtype=np.int16, mode="r")


def _timestamp(seconds: float, separator: str) -> str:
    millis = round(seconds * 1000)
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    return f"{hours:02d}:{minutes:02d}:{rest // 1000:02d}{separator}{rest % 1000:03d}"


def to_webvtt(segments: Sequence[Segment]) -> str:
    """WebVTT with the text exactly as transcribed (UTF-8, right-to-left untouched); a
    flagged cue is preceded by a NOTE naming its flags, which players do not show."""
    lines = ["WEBVTT", ""]
    for segment in segments:
        if segment.flags:
            lines += [f"NOTE doubtful: {', '.join(segment.flags)}", ""]
        start, end = _timestamp(segment.start, "."), _timestamp(segment.end, ".")
        lines += [f"{start} --> {end}", _cue_text(segment.text), ""]
    return "\n".join(lines)


def to_srt(segments: Sequence[Segment]) -> str:
    """SRT, which has no comments: a flagged cue carries its flags on a second line."""
    blocks = []
    for number, segment in enumerate(segments, start=1):
        start, end = _timestamp(segment.start, ","), _timestamp(segment.end, ",")
        text = _cue_text(segment.text)
        if segment.flags:
            text += f"\n[doubtful: {', '.join(segment.flags)}]"
        blocks.append(f"{number}\n{start} --> {end}\n{text}\n")
    return "\n".join(blocks)


def _cue_text(text: str) -> str:
    """A cue ends at a blank line and `-->` starts a timing line: neither may appear in text."""
    return " ".join(text.split()).replace("-->", "->") or "…"
