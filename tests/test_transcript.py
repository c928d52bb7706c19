"""Transcription: the stage with the real Whisper base model, flags, subtitles and search.

Speech comes from espeak-ng. Whisper base hears espeak's Arabic voice badly, which is useful
here: its output shows the invention patterns the flags exist for, so tests assert
structure, provenance and honesty (no unflagged text over silence), never exact words.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import subprocess
import weakref
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import numpy as np
import pytest

from evidence.store import Store
from models import whisper
from pipelines.config import QarinaConfig
from pipelines.plan import Plan
from pipelines.samples import audio, videos
from pipelines.search import search_transcripts
from tests.flows import DEFAULT_KEYS, ingest_and_run, probed_item
from tests.stage_contract import StageContract
from workers.arabic import normalise
from workers.base import (
    FailureReason,
    Kind,
    StageEnvironment,
    StageError,
    StageInput,
    StageSkipped,
    result_to_json,
)
from workers.transcript import (
    ModelRef,
    Packing,
    Segment,
    TranscriptConfig,
    TranscriptResult,
    TranscriptStage,
    _Recording,
    decode_audio,
    decode_audio_many,
    engine_failure,
    pack_windows,
    segment_flags,
    to_srt,
    to_webvtt,
    window_bounds,
)

ARABIC = audio.GREETING


@pytest.fixture(scope="module")
def loaded(models_dir: Path) -> Iterator[TranscriptStage]:
    """One stage with Whisper base loaded, shared by the tests that only run it."""
    stage = TranscriptStage()
    stage.setup(StageEnvironment(models_dir, device="cpu"))
    yield stage
    stage.teardown()


def _transcribe(stage: TranscriptStage, path: Path, tmp_path: Path) -> dict[str, Any]:
    workdir = tmp_path / f"work-{path.name}"
    workdir.mkdir()
    output = stage.run(probed_item(path), workdir)
    return result_to_json(output.result)


# --- normalisation and flags ----------------------------------------------------------------


def test_normaliser_unifies_what_arabic_writers_vary() -> None:
    assert normalise("مُحَمَّد") == normalise("محمد") == "محمد"
    assert normalise("العـــربية") == "العربيه"
    assert normalise("أحمد إلى آخر") == normalise("احمد الي اخر")
    assert normalise("مدرسة") == normalise("مدرسه")
    assert normalise("مستشفى") == normalise("مستشفي")
    assert normalise("قال: «نعم»، ثم ذهب؟") == "قال نعم ثم ذهب"


def test_flags_mark_the_ways_whisper_invents() -> None:
    def flags(text: str, **figures: float) -> list[str]:
        values = {"logprob": -0.2, "no_speech": 0.1, "ratio": 1.2, "dbfs": -20.0} | figures
        return segment_flags(
            text, values["logprob"], values["no_speech"], values["ratio"], values["dbfs"], None
        )

    assert flags("ذهبنا إلى السوق صباحا") == []
    assert "repetition" in flags("ها " * 12)
    assert "repetition" in flags("لا أعرف لا أعرف لا أعرف لا أعرف")
    assert "high_compression" in flags("نص", ratio=3.1)
    assert "low_confidence" in flags("نص", logprob=-1.6)
    assert "no_speech" in flags("نص", no_speech=0.9)
    assert "silence" in flags("نص", dbfs=-70.0)
    assert "non_speech" in flags("[موسيقى]")
    assert "known_hallucination" in flags("اشتركوا في القناة")
    sampled = segment_flags("ذهبنا إلى السوق", -0.2, 0.1, 1.0, -20.0, None, temperature=0.4)
    assert sampled == ["sampled"]
    repeated = segment_flags("شكرا لكم", -0.2, 0.1, 1.0, -20.0, "شُكراً لكم")
    assert repeated == ["repetition"]


def test_long_audio_is_cut_at_a_quiet_moment() -> None:
    rate = 100  # samples per second, to keep the arrays small
    loud = np.full(rate * 100, 8000, dtype=np.int16)
    loud[rate * 85 : rate * 86] = 0  # one quiet second before the nominal cut at 90 s
    edges = window_bounds(loud, window=rate * 90, search=rate * 30, frame=rate // 10)
    assert edges[0] == 0 and edges[-1] == len(loud)
    assert rate * 85 <= edges[1] < rate * 86
    assert all(b - a <= rate * 90 for a, b in itertools.pairwise(edges))


def test_subtitles_keep_right_to_left_text_and_mark_doubt() -> None:
    segments = [
        Segment(1.5, 3.25, "مرحبا بكم --> في المحكمة", -0.2, 0.1, 1.1, []),
        Segment(3661.0, 3662.5, "اشتركوا في القناة", -0.3, 0.7, 1.0, ["no_speech"]),
    ]
    vtt = to_webvtt(segments)
    assert vtt.startswith("WEBVTT\n\n")
    assert "00:00:01.500 --> 00:00:03.250\nمرحبا بكم -> في المحكمة\n" in vtt
    assert "NOTE doubtful: no_speech\n\n01:01:01.000 --> 01:01:02.500\nاشتركوا في القناة" in vtt
    srt = to_srt(segments)
    assert srt.startswith("1\n00:00:01,500 --> 00:00:03,250\nمرحبا بكم -> في المحكمة\n")
    assert "2\n01:01:01,000 --> 01:01:02,500\nاشتركوا في القناة\n[doubtful: no_speech]" in srt
    assert vtt.encode("utf-8").decode("utf-8") == vtt


# --- the stage with the real model ----------------------------------------------------------


class TestTranscriptContract(StageContract):
    stage_class = TranscriptStage
    config: ClassVar[TranscriptConfig] = TranscriptConfig()
    expected_name = "transcript"

    @pytest.fixture
    def stage(self, loaded: TranscriptStage) -> TranscriptStage:
        return loaded

    def supported_item(self, tmp_path: Path) -> StageInput:
        return probed_item(audio.speech(tmp_path / "item", "مرحبا بكم", voice_format="ogg-opus"))

    def unsupported_item(self, tmp_path: Path) -> StageInput:
        return probed_item(videos.video_with_cuts(tmp_path / "item", audio=None))


def test_speech_gives_timed_segments_with_figures_and_subtitles(
    loaded: TranscriptStage, tmp_path: Path, models_dir: Path
) -> None:
    path = audio.speech(tmp_path / "note", ARABIC)
    workdir = tmp_path / "work"
    workdir.mkdir()
    output = loaded.run(probed_item(path), workdir)
    result = result_to_json(output.result)
    assembled = whisper.assemble_base(models_dir)
    assert result["model"] == {"name": assembled.name, "sha256": assembled.sha256}
    assert (
        result["model"]["sha256"]
        == hashlib.sha256((assembled.path / "model.bin").read_bytes()).hexdigest()
    )
    assert result["language"] == "ar" and result["language_probability"] is None
    assert (result["device"], result["compute_type"], result["mode"]) == ("cpu", "int8", "packed")
    # A short note is packed even alone: the same rules whether it came alone or with others.
    assert result["packing"] == {
        "items": [probed_item(path).sha256],
        "position": 0,
        "offset_s": 0.0,
        "attempt": 1,
    }
    assert result["segments"], "espeak speech must give at least one segment"
    for segment in result["segments"]:
        assert 0 <= segment["start"] < segment["end"] <= result["duration_s"] + 0.5
        assert set(segment) == {
            "start", "end", "text", "avg_logprob", "no_speech_prob", "compression_ratio", "flags"
        }  # fmt: skip
    trusted = [segment["text"] for segment in result["segments"] if not segment["flags"]]
    assert result["text"] == " ".join(trusted)
    assert result["flagged_segments"] == len(result["segments"]) - len(trusted)
    roles = {artifact.role: artifact for artifact in output.artifacts}
    assert set(roles) == {"transcript_vtt", "transcript_srt"}
    vtt = roles["transcript_vtt"].path.read_text(encoding="utf-8")
    assert vtt.startswith("WEBVTT")
    assert all(" ".join(s["text"].split()) in vtt for s in result["segments"] if s["text"])


@pytest.mark.parametrize("voice_format", sorted(audio.VOICE_FORMATS))
def test_voice_note_formats_decode_to_the_same_speech(voice_format: str, tmp_path: Path) -> None:
    encoders = subprocess.run(
        ["ffmpeg", "-hide_banner", "-encoders"], capture_output=True, text=True, check=True
    ).stdout
    codec = audio.VOICE_FORMATS[voice_format][1][1]
    if codec not in encoders:
        pytest.skip(f"this ffmpeg cannot write {codec} (it still decodes it)")
    path = audio.speech(tmp_path / "note", ARABIC, voice_format=voice_format)
    assert probed_item(path).kind is Kind.AUDIO
    samples = decode_audio(path, tmp_path / "audio.pcm", 5.0)
    seconds = len(samples) / 16_000
    assert 0.8 < seconds < 3.0
    assert np.abs(samples.astype(np.int32)).max() > 1000, "speech, not silence"


@pytest.mark.parametrize(
    "source",
    ["anullsrc=r=16000:cl=mono", "anoisesrc=color=pink:amplitude=0.3:r=16000:seed=7"],
    ids=["silence", "noise"],
)
def test_silence_and_noise_give_no_unflagged_text(
    loaded: TranscriptStage, tmp_path: Path, source: str
) -> None:
    result = _transcribe(loaded, audio.ambient(tmp_path / "ambient", source), tmp_path)
    assert result["text"] == ""
    assert all(segment["flags"] for segment in result["segments"])


def test_video_with_speech_is_transcribed_and_without_audio_is_skipped(
    loaded: TranscriptStage, tmp_path: Path
) -> None:
    speech = audio.speech(tmp_path / "speech.wav", ARABIC)
    with_audio = _transcribe(loaded, videos.video_with_speech(tmp_path / "clip", speech), tmp_path)
    assert with_audio["segments"] and with_audio["duration_s"] > 0.8
    silent = probed_item(videos.video_with_cuts(tmp_path / "silent", audio=None))
    with pytest.raises(StageSkipped) as skipped:
        loaded.run(silent, tmp_path)
    assert skipped.value.reason == "no_audio"


def test_undecodable_audio_is_corrupt_media(loaded: TranscriptStage, tmp_path: Path) -> None:
    note = audio.speech(tmp_path / "note", ARABIC, voice_format="ogg-opus")
    broken = tmp_path / "broken"
    broken.write_bytes(note.read_bytes()[:60] + b"\x00" * 4000)
    item = StageInput("0" * 64, broken, Kind.AUDIO)
    with pytest.raises(StageError) as failed:
        loaded.run(item, tmp_path)
    assert failed.value.reason is FailureReason.CORRUPT_MEDIA


def test_auto_language_is_detected_and_recorded(models_dir: Path, tmp_path: Path) -> None:
    stage = TranscriptStage(TranscriptConfig(language="auto"))
    stage.setup(StageEnvironment(models_dir, device="cpu"))
    try:
        path = audio.speech(tmp_path / "english", "hello, this is a test of the system", voice="en")
        result = _transcribe(stage, path, tmp_path)
    finally:
        stage.teardown()
    assert result["language"] == "en"
    assert 0.5 < result["language_probability"] <= 1.0
    assert TranscriptConfig(language="auto").config_hash() != TranscriptConfig().config_hash()


def test_a_missing_model_is_a_clear_error(tmp_path: Path) -> None:
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    with pytest.raises(whisper.ModelMissing, match="CTranslate2"):
        whisper.resolve(tmp_path / "models", empty)
    stage = TranscriptStage(TranscriptConfig(model=str(empty)))
    stage.setup(StageEnvironment(tmp_path / "models", device="cpu"))
    note = audio.speech(tmp_path / "note", "مرحبا")
    with pytest.raises(StageError) as failed:
        stage.run(probed_item(note), tmp_path)
    assert failed.value.reason is FailureReason.MODEL_ERROR
    assert str(empty) in failed.value.detail


# --- the pipeline: stored results, artifacts, search ----------------------------------------


def test_pipeline_stores_transcripts_and_search_finds_them(
    store: Store, config: QarinaConfig, tmp_path: Path
) -> None:
    folder = tmp_path / "incoming"
    folder.mkdir()
    speech = audio.speech(folder / "PTT-0001.opus", ARABIC, voice_format="ogg-opus")
    videos.video_with_speech(folder / "VID-0001.mp4", audio.speech(tmp_path / "s.wav", ARABIC))
    videos.video_with_cuts(folder / "VID-0002.mp4", audio=None)
    shas = ingest_and_run(store, config, folder)
    shown = {sha: store.show(sha, DEFAULT_KEYS) for sha in shas}
    note_sha = hashlib.sha256(speech.read_bytes()).hexdigest()
    spoken = [sha for sha, item in shown.items() if item and item["kind"] in ("audio", "video")]
    assert len(spoken) == 3
    for sha in spoken:
        item = shown[sha]
        assert item is not None and not item["failures"] and not item["pending"]
        transcript = item["results"]["transcript"]
        if transcript["skip_reason"]:
            assert transcript["skip_reason"] == "no_audio"
            continue
        assert transcript["status"] == "ok"
        assert transcript["provenance"]["tools"]["faster-whisper"]
        roles = {artifact["role"] for artifact in item["artifacts"]}
        assert {"transcript_vtt", "transcript_srt"} <= roles
    skipped = [
        sha
        for sha in spoken
        if shown[sha]["results"]["transcript"]["skip_reason"]  # type: ignore[index]
    ]
    assert len(skipped) == 1
    # The three were leased together: each provenance names the batch whose time it shares,
    # and each packed result the window it was heard in.
    transcripts = {sha: shown[sha]["results"]["transcript"] for sha in spoken}  # type: ignore[index]
    assert {t["provenance"]["shared_batch"]["items"] for t in transcripts.values()} == {3}
    for sha, transcript in transcripts.items():
        assert sha in skipped or sha in transcript["data"]["packing"]["items"]

    segments = shown[note_sha]["results"]["transcript"]["data"]["segments"]  # type: ignore[index]
    words = [word for segment in segments for word in normalise(segment["text"]).split()]
    assert words, "the voice note should give some words to search for"
    word = max(words, key=len)
    with_marks = word[0] + "\u064e" + word[1:] + "\u0651"  # a fatha and a shadda added
    plain_hits = search_transcripts(store, Plan.default(), word)
    assert note_sha in {hit["sha256"] for hit in plain_hits}
    assert {hit["sha256"] for hit in search_transcripts(store, Plan.default(), with_marks)} == {
        hit["sha256"] for hit in plain_hits
    }
    for hit in plain_hits:
        assert word in normalise(hit["text"]) and hit["start_s"] < hit["end_s"]
    assert search_transcripts(store, Plan.default(), "كلمةغيرموجودةابدا") == []
    assert json.dumps(plain_hits, ensure_ascii=False)
    report = store.verify(fixity=True, actor="t")
    assert report.ok


def test_model_and_language_choices_change_the_result_key(config: QarinaConfig) -> None:
    default = Plan.default(["transcript"], settings=config).spec("transcript")
    detected = Plan.default(
        ["transcript"], settings=config.with_overrides(transcript_language="auto")
    ).spec("transcript")
    other = Plan.default(
        ["transcript"], settings=config.with_overrides(whisper_model=Path("/models/large-v3"))
    ).spec("transcript")
    assert len({default.config_hash, detected.config_hash, other.config_hash}) == 3
    moved = Plan.default(
        ["transcript"], settings=config.with_overrides(data_dir=Path("/elsewhere"))
    ).spec("transcript")
    assert moved.config_hash == default.config_hash


def test_results_made_before_the_engine_was_recorded_read_as_ctranslate2s() -> None:
    result = TranscriptResult(
        language="ar", language_probability=None, model=ModelRef("base", "0" * 64),
        device="cuda", compute_type="float16", mode="batched", duration_s=1.0, speech_s=1.0,
        segments=[], text="", flagged_segments=0, flags=[], engine=whisper.TORCH,
    )  # fmt: skip
    stored = result.to_json()
    assert TranscriptResult.from_json(stored) == result
    older = {key: value for key, value in stored.items() if key != "engine"}
    assert TranscriptResult.from_json(older).engine == whisper.CTRANSLATE2


def test_engine_failures_are_the_engines_and_retried_not_bugs() -> None:
    memory = engine_failure(RuntimeError("CUDA failed with error out of memory"))
    allocation = engine_failure(RuntimeError("cuBLAS failed: CUBLAS_STATUS_ALLOC_FAILED"))
    other = engine_failure(RuntimeError("cuBLAS failed with status CUBLAS_STATUS_NOT_INITIALIZED"))
    assert (memory.reason, memory.retryable) == (FailureReason.RESOURCE_LIMIT, True)
    assert allocation.reason is FailureReason.RESOURCE_LIMIT
    assert (other.reason, other.retryable) == (FailureReason.MODEL_ERROR, True)
    assert "CUBLAS" not in other.detail


class _Decoding:
    """Stands for a decode's state (its caches on the device), referenced while it runs."""


class _EngineWithLittleMemory:
    """Stands in for the loaded model on a small GPU: like CTranslate2 it decodes lazily, and
    with more than `fits` windows at once (one, unbatched) it runs out of device memory
    while the segments are read, after transcribe() has returned."""

    def __init__(self, fits: int, message: str = "CUDA failed with error out of memory") -> None:
        self.fits, self.message = fits, message
        self.batches: list[int] = []
        #: What each try's decode held (its "device memory"), and whether any of it was still
        #: held when the next try began.
        self.held: list[weakref.ref[_Decoding]] = []
        self.still_held_at_retry: list[bool] = []

    def transcribe(self, window: Any, **options: Any) -> tuple[Any, Any]:
        self.still_held_at_retry += [held() is not None for held in self.held]
        self.batches.append(options.get("batch_size", 1))
        fails = self.batches[-1] > self.fits
        decoding = _Decoding()
        self.held.append(weakref.ref(decoding))

        def pieces() -> Any:
            yield SimpleNamespace(start=0.0, end=1.0, text=" مرحبا", avg_logprob=-0.2,
                                  no_speech_prob=0.01, temperature=0.0, words=None)  # fmt: skip
            if fails and decoding:
                raise RuntimeError(self.message)

        info = SimpleNamespace(
            language="ar", language_probability=1.0, duration=1.0, duration_after_vad=1.0
        )
        return pieces(), info


def test_an_engine_failure_while_decoding_is_retried_as_resource_limit(
    models_dir: Path, tmp_path: Path
) -> None:
    stage = TranscriptStage()
    stage.setup(StageEnvironment(models_dir, device="cpu"))
    stage._model = stage._window_engine = _EngineWithLittleMemory(fits=0)
    note = audio.speech(tmp_path / "note", "مرحبا")
    with pytest.raises(StageError) as failed:
        stage.run(probed_item(note), tmp_path)
    assert (failed.value.reason, failed.value.retryable) == (FailureReason.RESOURCE_LIMIT, True)


def test_a_gpu_out_of_memory_is_tried_again_with_half_the_windows(
    models_dir: Path, tmp_path: Path
) -> None:
    """Not a failed job: the batch of windows halves until it fits, and the segment read
    before the failure is not given twice."""
    stage = TranscriptStage(TranscriptConfig(mode="batched"))
    stage.setup(StageEnvironment(models_dir, device="cpu"))
    stage._device = whisper.Device("cuda", "float16")
    stage._pipeline = engine = _EngineWithLittleMemory(fits=2)
    note = audio.speech(tmp_path / "note", "مرحبا")
    result = stage.run(probed_item(note), tmp_path).result
    assert engine.batches == [8, 4, 2]
    assert engine.still_held_at_retry == [False] * 3, "a failed try's decode is let go"
    assert [segment.text for segment in result.segments] == ["مرحبا"]
    stage._pipeline = never = _EngineWithLittleMemory(fits=0)
    with pytest.raises(StageError) as failed:
        stage.run(probed_item(note), tmp_path)
    assert never.batches == [8, 4, 2, 1]
    assert (failed.value.reason, failed.value.retryable) == (FailureReason.RESOURCE_LIMIT, True)
    stage._pipeline = broken = _EngineWithLittleMemory(fits=0, message="cuBLAS failed")
    with pytest.raises(StageError) as failed:
        stage.run(probed_item(note), tmp_path)
    assert broken.batches == [8], "only memory is worth a smaller batch"
    assert failed.value.reason is FailureReason.MODEL_ERROR


def test_windows_at_once_are_capped_by_free_device_memory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On the PyTorch engine's GPU; CTranslate2's is left to its out-of-memory retry."""
    base = whisper.Shape(width=512, decoder_layers=6, encoder_heads=8)
    assert 130e6 < base.window_bytes(beams=5) < 140e6
    cuda = whisper.Device("cuda", "float16", whisper.TORCH)
    assert whisper.windows_fitting(whisper.Device("cpu", "int8"), base.window_bytes(5), 8) == 8
    assert whisper.windows_fitting(whisper.Device("cuda", "float16"), base.window_bytes(5), 8) == 8
    if not whisper.torch_cuda_available():  # the arithmetic, with the driver's figures given
        torch = pytest.importorskip("torch")
        monkeypatch.setattr(whisper, "torch_cuda_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda: (700_000_000, 80_000_000_000))
        monkeypatch.setattr(torch.cuda, "memory_reserved", lambda: 400_000_000)
        monkeypatch.setattr(torch.cuda, "memory_allocated", lambda: 100_000_000)
        assert whisper.windows_fitting(cuda, base.window_bytes(5), 8) == 3
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda: (10_000_000, 80_000_000_000))
        monkeypatch.setattr(torch.cuda, "memory_reserved", lambda: 0)
    assert 1 <= whisper.windows_fitting(cuda, base.window_bytes(5), 8) <= 8


# --- packing short recordings -----------------------------------------------------------------


def test_pack_windows_put_each_recording_in_the_first_that_has_room() -> None:
    speech_s = [5.0, 5.0, 20.0, 1.0, 27.0, 28.0]
    assert pack_windows(speech_s, gap_s=1.0, window_s=28.0) == [[0, 1, 3], [2], [4], [5]]
    assert pack_windows([], gap_s=1.0, window_s=28.0) == []
    apart = [{1}, {0, 2}, {1}, set()]
    assert pack_windows([1.0] * 4, 1.0, 28.0, apart) == [[0, 2, 3], [1]]


class _WordsEngine:
    """Stands in for the model on a packed window: one segment across two recordings and one
    within the second, with words at known times; it records the options it was given."""

    def __init__(self) -> None:
        self.options: dict[str, Any] = {}

    def transcribe(self, window: Any, **options: Any) -> tuple[Any, Any]:
        self.options = options

        def word(start: float, end: float, text: str) -> SimpleNamespace:
            return SimpleNamespace(start=start, end=end, word=text)

        figures = {"avg_logprob": -0.25, "no_speech_prob": 0.01, "temperature": 0.0}
        pieces = [
            SimpleNamespace(start=0.0, end=3.6, text=" أ ب ج", **figures,
                            words=[word(0.1, 0.5, " أ"), word(1.0, 1.8, " ب"),
                                   word(3.1, 3.6, " ج")]),
            SimpleNamespace(start=3.6, end=3.9, text=" د", **figures, words=[word(3.6, 3.9, " د")]),
        ]  # fmt: skip
        return iter(pieces), SimpleNamespace(duration=len(window) / 16_000)


def test_a_packed_window_gives_each_recording_its_own_words_at_its_own_times(
    models_dir: Path, tmp_path: Path
) -> None:
    """The split is checked against an engine whose words lie at known times: the first
    recording's speech starts 0.5 s into it (VAD dropped the rest), the second's at once, and
    a 1 s gap lies between them in the window."""
    stage = TranscriptStage()
    stage.setup(StageEnvironment(models_dir, device="cpu"))
    engine = _WordsEngine()
    stage._window_engine = engine
    rng = np.random.default_rng(7)
    first = rng.normal(0, 3000, 48_000).astype(np.int16)
    second = rng.normal(0, 3000, 32_000).astype(np.int16)
    recordings = [
        _Recording(0, StageInput("a" * 64, tmp_path, Kind.AUDIO), tmp_path, first,
                   [{"start": 8_000, "end": 40_000}], first[8_000:40_000] / 32768.0),
        _Recording(1, StageInput("b" * 64, tmp_path, Kind.AUDIO), tmp_path, second,
                   [{"start": 0, "end": 16_000}], second[:16_000] / 32768.0),
    ]  # fmt: skip
    [[one, two]] = stage._transcribe_packed([recordings])
    assert engine.options["vad_filter"] is False and engine.options["temperature"] == 0.0
    assert engine.options["word_timestamps"] is True
    assert engine.options["clip_timestamps"] == [{"start": 0.0, "end": 4.0}]
    assert [(s.start, s.end, s.text) for s in one.segments] == [(0.6, 2.3, "أ ب")]
    assert [(s.start, s.end, s.text) for s in two.segments] == [(0.1, 0.6, "ج"), (0.6, 0.9, "د")]
    assert all(s.avg_logprob == -0.25 and not s.flags for s in one.segments + two.segments)
    assert (one.text, two.text) == ("أ ب", "ج د")
    assert one.packing == Packing(["a" * 64, "b" * 64], 0, 0.0)
    assert two.packing == Packing(["a" * 64, "b" * 64], 1, 3.0)
    assert (one.speech_s, two.speech_s, one.duration_s, two.duration_s) == (2.0, 1.0, 3.0, 2.0)
    assert TranscriptResult.from_json(result_to_json(two)) == two


def test_a_batch_packs_short_notes_and_keeps_each_outcome_apart(
    loaded: TranscriptStage, tmp_path: Path
) -> None:
    """Three notes share one window, silence is never heard by the model, and a broken note
    fails alone; a long-speech or auto-language item would run in windows of its own."""
    notes = [audio.speech(tmp_path / f"note{n}", phrase) for n, phrase in
             enumerate((ARABIC, "مرحبا بكم", "شكرا جزيلا"))]  # fmt: skip
    quiet = audio.ambient(tmp_path / "quiet", "anullsrc=r=16000:cl=mono", seconds=3.0)
    broken = tmp_path / "broken"
    broken.write_bytes(b"\x00" * 4000)
    paths = [notes[0], quiet, notes[1], broken, notes[2]]
    batch = []
    for number, path in enumerate(paths):
        (tmp_path / f"work{number}").mkdir()
        item = probed_item(path) if path != broken else StageInput("f" * 64, broken, Kind.AUDIO)
        batch.append((item, tmp_path / f"work{number}"))
    outcomes = loaded.run_many(batch)
    assert isinstance(outcomes[3], StageError)
    assert outcomes[3].reason is FailureReason.CORRUPT_MEDIA
    results = [outcome.result for outcome in outcomes if not isinstance(outcome, Exception)]
    spoken = [results[0], results[2], results[3]]
    assert {result.mode for result in results} == {"packed"}
    shared = [batch[0][0].sha256, batch[2][0].sha256, batch[4][0].sha256]
    assert [result.packing for result in spoken] == [
        Packing(shared, position, result.packing.offset_s if result.packing else -1.0)
        for position, result in enumerate(spoken)
    ]
    for result in spoken:
        assert result.segments, "each note's words come back to it"
        assert all(0 <= s.start < s.end <= result.duration_s + 0.05 for s in result.segments)
    silent = results[1]
    assert (silent.segments, silent.text, silent.speech_s, silent.packing) == ([], "", 0.0, None)


class _FirstOnlyEngine:
    """Hears only the start of each window, as the model does when it skips a stretch; with
    `fails_shared`, a call of several windows fails as a whole (not for memory, which a
    smaller batch is tried for first)."""

    def __init__(self, fails_shared: bool = False) -> None:
        self.windows: list[float] = []
        self.calls: list[int] = []
        self.fails_shared = fails_shared

    def transcribe(self, audio: Any, **options: Any) -> tuple[Any, Any]:
        clips = options["clip_timestamps"]
        self.calls.append(len(clips))
        if self.fails_shared and len(clips) > 1:
            raise RuntimeError("cuDNN failed with status CUDNN_STATUS_EXECUTION_FAILED")
        pieces = []
        for clip in clips:
            self.windows.append(round(clip["end"] - clip["start"], 3))
            at = clip["start"] + 0.1
            word = SimpleNamespace(start=at, end=at + 0.4, word=" أ")
            figures = {"avg_logprob": -0.2, "no_speech_prob": 0.0, "temperature": 0.0}
            pieces.append(
                SimpleNamespace(start=at, end=at + 0.4, text=" أ", words=[word], **figures)
            )
        return iter(pieces), SimpleNamespace()


def _recordings(tmp_path: Path, count: int, seconds: float) -> list[_Recording]:
    samples = np.random.default_rng(3).normal(0, 3000, int(seconds * 16_000)).astype(np.int16)
    return [
        _Recording(n, StageInput(str(n) * 64, tmp_path, Kind.AUDIO), tmp_path, samples,
                   [{"start": 0, "end": len(samples)}], samples / 32768.0)
        for n in range(count)
    ]  # fmt: skip


def test_a_recording_skipped_in_its_window_is_packed_again_apart_then_alone(
    models_dir: Path, tmp_path: Path
) -> None:
    """Where the model skips a recording, its words may have gone to a neighbour: both go
    into other windows apart from each other, and what is doubted there is decoded alone."""
    stage = TranscriptStage()
    stage.setup(StageEnvironment(models_dir, device="cpu"))
    engine = _FirstOnlyEngine()
    stage._window_engine = engine
    recordings = _recordings(tmp_path, 3, 1.0)
    outcomes = stage._transcribe_packable(recordings)
    # One window of three; the 1st and 3rd apart from the skipped 2nd; then each alone.
    assert engine.windows == [5.0, 3.0, 1.0, 1.0, 1.0]
    first, second, third = (outcomes[recording] for recording in recordings)
    assert isinstance(first, TranscriptResult) and isinstance(second, TranscriptResult)
    assert isinstance(third, TranscriptResult)
    assert (first.text, second.text, third.text) == ("أ", "أ", "أ")
    assert first.packing == Packing(["0" * 64], 0, 0.0, attempt=3)
    assert second.packing == Packing(["1" * 64], 0, 0.0, attempt=2)
    assert third.packing == Packing(["2" * 64], 0, 0.0, attempt=3)


class _NeighbourEngine:
    """Stands in for the model as it was caught lending words across packed recordings
    (Speech Commands notes, 1 s apart). Recording n is a level of (n + 1) / 100 and says
    `OWN[n]`, which any window gives it, except the first window of all eight: there the
    2nd's word is timed over the gap into the 3rd, in one segment with the 3rd's; the 4th
    is written with the 5th's word, which the 5th gets too; the 7th's word is timed in the
    gap before it. Only the 1st and the 8th come back clean."""

    OWN = ("اثنان", "تراجع", "على", "توقف", "ثلاثة", "نعم", "صفر", "تكبير")

    def __init__(self) -> None:
        self.windows: list[list[int]] = []

    def transcribe(self, audio: Any, **options: Any) -> tuple[Any, Any]:
        figures = {"avg_logprob": -0.2, "no_speech_prob": 0.01, "temperature": 0.0}

        def piece(*words: tuple[float, float, str]) -> SimpleNamespace:
            timed = [SimpleNamespace(start=a, end=b, word=f" {w}") for a, b, w in words]
            return SimpleNamespace(start=timed[0].start, end=timed[-1].end,
                                   text="".join(word.word for word in timed), words=timed,
                                   **figures)  # fmt: skip

        own, pieces = self.OWN, []
        for clip in options["clip_timestamps"]:
            at = clip["start"]
            heard = audio[int(at * 16_000) : int(clip["end"] * 16_000)]
            starts = np.flatnonzero(np.diff(heard, prepend=0.0) > 0)  # silence between each
            layout = [round(float(heard[start]) * 100) - 1 for start in starts]
            self.windows.append(layout)
            if layout != list(range(8)):  # each recording's own word, inside its speech
                for start, n in zip(starts, layout, strict=True):
                    begins = at + start / 16_000
                    pieces.append(piece((begins + 0.1, begins + 0.7, own[n])))
                continue
            pieces += [
                piece((at + 0.0, at + 0.8, own[0])),
                piece((at + 2.88, at + 4.28, own[1]), (at + 4.28, at + 5.2, own[2])),
                piece((at + 6.0, at + 6.8, own[4])),
                piece((at + 8.0, at + 8.8, own[4])),
                piece((at + 10.1, at + 10.7, own[5])),
                piece((at + 11.2, at + 11.8, own[6])),
                piece((at + 14.1, at + 14.7, own[7])),
            ]
        return iter(pieces), SimpleNamespace()


def test_no_word_lands_on_a_recording_that_did_not_say_it(models_dir: Path, tmp_path: Path) -> None:
    """A word is kept only where its timing meets its own recording's speech and no other's,
    and a recording whose text is a neighbour's is doubted too; the doubted are packed again
    apart from those they may have swapped words with, and each gets its own word back."""
    stage = TranscriptStage()
    stage.setup(StageEnvironment(models_dir, device="cpu"))
    engine = _NeighbourEngine()
    stage._window_engine = engine
    recordings = [
        _Recording(n, StageInput(str(n) * 64, tmp_path, Kind.AUDIO), tmp_path,
                   np.full(16_000, (n + 1) * 328, dtype=np.int16), [{"start": 0, "end": 16_000}],
                   np.full(16_000, (n + 1) / 100, dtype=np.float32))
        for n in range(8)
    ]  # fmt: skip
    outcomes = stage._transcribe_packable(recordings)
    results = [outcomes[recording] for recording in recordings]
    assert all(isinstance(result, TranscriptResult) for result in results)
    heard = [result for result in results if isinstance(result, TranscriptResult)]
    assert [result.text for result in heard] == list(_NeighbourEngine.OWN)
    assert all(0 <= s.start < s.end <= 1.0 for result in heard for s in result.segments)
    assert engine.windows == [list(range(8)), [1, 3, 5], [2, 4, 6]]
    attempts = [result.packing.attempt for result in heard if result.packing]
    assert attempts == [1, 2, 2, 2, 2, 2, 2, 1]
    assert heard[3].packing == Packing(["1" * 64, "3" * 64, "5" * 64], 1, 2.0, attempt=2)


def test_files_decoded_together_give_what_each_gives_alone_and_a_bad_one_fails_alone(
    tmp_path: Path,
) -> None:
    notes = [audio.speech(tmp_path / f"note{n}", ARABIC, voice_format=voice_format)
             for n, voice_format in enumerate(("wav", "ogg-opus", "mp3"))]  # fmt: skip
    broken = tmp_path / "broken"
    broken.write_bytes(b"\x00" * 4000)
    paths = [notes[0], broken, notes[1], notes[2]]
    sources = [(path, tmp_path / f"{number}.pcm", 5.0) for number, path in enumerate(paths)]
    together = decode_audio_many(sources)
    failed = together[1]
    assert isinstance(failed, StageError) and failed.reason is FailureReason.CORRUPT_MEDIA
    for number, path in enumerate(paths):
        if path == broken:
            continue
        alone = decode_audio(path, tmp_path / f"alone{number}.pcm", 5.0)
        assert np.array_equal(np.asarray(together[number]), np.asarray(alone))


@pytest.mark.parametrize("fails_shared", [False, True])
def test_windows_share_one_call_and_a_failed_call_is_retried_window_by_window(
    models_dir: Path, tmp_path: Path, fails_shared: bool
) -> None:
    """Three recordings too long to share a window are heard in one batched call, each word
    back on its own window's timeline; when that call fails, each window is heard alone."""
    stage = TranscriptStage()
    stage.setup(StageEnvironment(models_dir, device="cpu"))
    engine = _FirstOnlyEngine(fails_shared)
    stage._window_engine = engine
    recordings = _recordings(tmp_path, 3, 15.0)
    outcomes = stage._transcribe_packable(recordings)
    assert engine.calls == ([3, 1, 1, 1] if fails_shared else [3])
    for recording in recordings:
        result = outcomes[recording]
        assert isinstance(result, TranscriptResult)
        assert [(s.start, s.end, s.text) for s in result.segments] == [(0.1, 0.5, "أ")]
        assert result.packing == Packing([recording.item.sha256], 0, 0.0, attempt=1)
