"""The PyTorch speech engine against CTranslate2: the same weights must give the same words.

CTranslate2 runs float32 here, as the PyTorch engine does on a CPU: int8 would change the
numbers, and with them, now and then, a word, which says nothing about either engine. Both
decode at temperature 0 only, so every segment is deterministic (a sampled fallback could never
match token for token). The corpus clips are real Arabic speech (../shared/corpus/audio_ar).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models import whisper
from models.whisper_torch import negative_dtw
from pipelines.bench.keyframes import DEFAULT_CORPUS
from pipelines.samples import audio
from pipelines.transcript_eval import corpus_clips
from tests.flows import probed_item
from workers.base import StageEnvironment
from workers.transcript import TranscriptConfig, TranscriptStage, transcribe_options

pytest.importorskip("torch")
AUDIO_CORPUS = DEFAULT_CORPUS / "audio_ar"


@pytest.fixture(scope="module")
def base(models_dir: Path) -> whisper.WhisperModel:
    return whisper.assemble_base(models_dir)


@pytest.fixture(scope="module")
def engines(base: whisper.WhisperModel) -> Iterator[dict[str, Any]]:
    """faster-whisper on each engine, both float32 on the CPU."""
    yield {
        "ctranslate2": whisper.load(base, whisper.Device("cpu", "float32"), 2),
        "torch": whisper.load(base, whisper.Device("cpu", "float32", whisper.TORCH), 2),
    }


def _clips() -> list[Path]:
    """Two Common Voice sentences and two Arabic speech commands: read speech of several
    words, and single words, the shape of a short voice note."""
    if not AUDIO_CORPUS.is_dir():
        pytest.skip("the shared corpus is not beside the repository")
    files = [clip.file for clip in corpus_clips(AUDIO_CORPUS)]
    common_voice = [file for file in files if file.startswith("common_voice/")][:2]
    commands = [file for file in files if file.startswith("speech_commands/")][:2]
    return [AUDIO_CORPUS / file for file in common_voice + commands]


def _segments(model: Any, audio: np.ndarray, **changes: Any) -> list[tuple[Any, ...]]:
    options = {**transcribe_options(TranscriptConfig(), "ar", batched=False), **changes}
    segments, _ = model.transcribe(audio, temperature=0.0, **options)
    return [
        (segment.text, segment.start, segment.end, round(segment.avg_logprob, 3),
         round(segment.no_speech_prob, 3),
         [(word.word, word.start, word.end) for word in segment.words or ()])
        for segment in segments
    ]  # fmt: skip


def test_the_torch_engine_writes_what_ctranslate2_writes_on_corpus_speech(
    engines: dict[str, Any],
) -> None:
    from faster_whisper.audio import decode_audio

    compared = 0
    for clip in _clips():
        audio = decode_audio(str(clip))
        theirs = _segments(engines["ctranslate2"], audio)
        assert _segments(engines["torch"], audio) == theirs, clip.name
        compared += len(theirs)
    assert compared >= 4, "the clips must give segments to compare"


def test_word_timing_and_batches_match_too(engines: dict[str, Any]) -> None:
    """The packed path: several windows decoded as one batch, with word timestamps (the
    cross-attention alignment), as the stage runs packed voice notes."""
    from faster_whisper import BatchedInferencePipeline
    from faster_whisper.audio import decode_audio

    clips = _clips()
    gap = np.zeros(16000, dtype=np.float32)
    audio = np.concatenate(
        [piece for clip in clips[:2] for piece in (decode_audio(str(clip)), gap)]
    )
    audio = np.concatenate([audio] * 3)  # more than one 30-s window, so a real batch
    found = []
    for name in ("ctranslate2", "torch"):
        segments, _ = BatchedInferencePipeline(engines[name]).transcribe(
            audio, language="ar", batch_size=4, word_timestamps=True, vad_filter=True,
            temperature=0.0, beam_size=5,
        )  # fmt: skip
        found.append([(segment.text, [(word.word, word.start, word.end) for word in segment.words])
                      for segment in segments])  # fmt: skip
    assert found[0] and found[1] == found[0]


def test_a_hugging_face_checkpoint_runs_on_the_torch_engine(
    base: whisper.WhisperModel, engines: dict[str, Any], tmp_path: Path
) -> None:
    """How Arabic fine-tunes are published: transformers' folder (safetensors, config,
    generation config, tokenizer). Written here from the packaged base, so the words it gives
    must be the base's."""
    from faster_whisper.audio import decode_audio

    folder = tmp_path / "whisper-base-hf"
    engines["torch"].model._modules.save_pretrained(folder)
    shutil.copy(base.path / "tokenizer.json", folder)
    converted = json.loads((base.path / "config.json").read_text())
    vocabulary = engines["torch"].model.rules.vocabulary
    (folder / "generation_config.json").write_text(json.dumps({
        "lang_to_id": {vocabulary[token]: token for token in converted["lang_ids"]},
        "suppress_tokens": converted["suppress_ids"],
        "begin_suppress_tokens": converted["suppress_ids_begin"],
        "alignment_heads": converted["alignment_heads"],
    }))  # fmt: skip
    checkpoint = whisper.from_folder(folder)
    assert checkpoint.engines == (whisper.TORCH,)
    device = whisper.choose_device("cpu", "auto", checkpoint)
    assert device == whisper.Device("cpu", "float32", whisper.TORCH)
    audio = decode_audio(str(_clips()[0]))
    loaded = whisper.load(checkpoint, device, 2)
    assert _segments(loaded, audio) == _segments(engines["torch"], audio)
    whisper.verify(checkpoint)
    (folder / "model.safetensors").write_bytes(b"changed")
    with pytest.raises(whisper.ModelMissing, match="no longer match"):
        whisper.verify(checkpoint)


def test_the_stage_records_the_engine_that_ran(models_dir: Path, tmp_path: Path) -> None:
    stage = TranscriptStage()
    stage.setup(StageEnvironment(models_dir, device="cpu", engine=whisper.TORCH))
    try:
        path = audio.speech(tmp_path / "voice", audio.GREETING)
        workdir = tmp_path / "work"
        workdir.mkdir()
        result = stage.run(probed_item(path), workdir).result
        assert (result.engine, result.device, result.compute_type) == ("torch", "cpu", "float32")
        assert {"torch", "transformers", "faster-whisper"} <= stage.tool_versions().keys()
    finally:
        stage.teardown()


def test_dtw_follows_the_cheapest_monotonic_path() -> None:
    """The wavefront fill against the plain double loop it replaces, ties included."""
    generator = np.random.default_rng(7)
    for shape in ((1, 1), (3, 9), (12, 40), (40, 12)):
        matrix = generator.integers(-3, 3, size=shape).astype(np.float32)
        assert negative_dtw(matrix) == _plain_dtw(matrix)


def _plain_dtw(matrix: np.ndarray) -> list[tuple[int, int]]:
    rows, columns = matrix.shape
    cost = np.full((rows + 1, columns + 1), np.inf, dtype=np.float32)
    cost[0, 0] = 0
    trace = np.full((rows + 1, columns + 1), -1)
    for j in range(1, columns + 1):
        for i in range(1, rows + 1):
            options = (cost[i - 1, j - 1], cost[i - 1, j], cost[i, j - 1])
            if options[0] < options[1] and options[0] < options[2]:
                move = 0
            elif options[1] < options[0] and options[1] < options[2]:
                move = 1
            else:
                move = 2
            cost[i, j] = options[move] - matrix[i - 1, j - 1]
            trace[i, j] = move
    trace[0, :], trace[:, 0] = 2, 1
    i, j, path = rows, columns, []
    while i > 0 and j > 0:
        path.append((i - 1, j - 1))
        i, j = {0: (i - 1, j - 1), 1: (i - 1, j), 2: (i, j - 1)}[int(trace[i, j])]
    return path[::-1]
