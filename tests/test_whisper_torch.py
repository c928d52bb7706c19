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
from models.whisper_torch import negative_dtw, read_ct2
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


@pytest.fixture(scope="module")
def encoded(engines: dict[str, Any]) -> dict[str, Any]:
    """Two corpus clips' features, encoded by each engine (a batch of two)."""
    import ctranslate2
    from faster_whisper.audio import decode_audio

    extractor = engines["torch"].feature_extractor
    features = np.stack([
        np.pad(extracted, ((0, 0), (0, 3000 - extracted.shape[1])))
        for extracted in (extractor(decode_audio(str(clip)))[:, :3000] for clip in _clips()[:2])
    ]).astype(np.float32)  # fmt: skip
    return {
        "ctranslate2": engines["ctranslate2"].model.encode(
            ctranslate2.StorageView.from_array(features)
        ),
        "torch": engines["torch"].model.encode(features),
    }


def _generated(engines: dict[str, Any], encoded: dict[str, Any], prompt: list[int],
               **options: Any) -> list[Any]:  # fmt: skip
    """Both engines on one batch: the same tokens; scores (summed log-probabilities) and
    no-speech probabilities equal but for float rounding."""
    found = {
        name: engines[name].model.generate(
            encoded[name], [prompt, prompt], return_scores=True, return_no_speech_prob=True,
            **options,
        )
        for name in ("ctranslate2", "torch")
    }  # fmt: skip
    for ours, theirs in zip(found["torch"], found["ctranslate2"], strict=True):
        assert ours.sequences_ids == theirs.sequences_ids, options
        assert np.allclose(ours.scores, theirs.scores, atol=2e-3), options
        assert abs(ours.no_speech_prob - theirs.no_speech_prob) < 1e-4, options
    return list(found["torch"])


def test_every_decoding_option_faster_whisper_can_pass_decodes_alike(
    engines: dict[str, Any], encoded: dict[str, Any]
) -> None:
    """`generate` itself, over the options faster-whisper passes (beam or greedy, a forced
    prefix, earlier text, penalties, a short budget, several hypotheses): the same tokens,
    scores and no-speech probabilities as CTranslate2's."""
    rules = engines["torch"].model.rules
    tokenizer = engines["torch"].hf_tokenizer
    arabic, transcribe = tokenizer.token_to_id("<|ar|>"), tokenizer.token_to_id("<|transcribe|>")
    earlier = tokenizer.encode(" مرحبا بكم", add_special_tokens=False).ids
    start = [rules.sot, arabic, transcribe]
    plain = {"suppress_tokens": [-1], "max_initial_timestamp_index": 50}
    _generated(engines, encoded, start, beam_size=5, **plain)
    _generated(engines, encoded, start, beam_size=1, **plain)
    _generated(engines, encoded, [*start, rules.no_timestamps], beam_size=5, **plain)
    _generated(engines, encoded, [*start, rules.timestamp_begin, *earlier], beam_size=5, **plain)
    previous = [tokenizer.token_to_id("<|startofprev|>"), *earlier, *start]
    _generated(engines, encoded, previous, beam_size=5, **plain)
    _generated(engines, encoded, start, beam_size=1, repetition_penalty=1.5,
               no_repeat_ngram_size=2, **plain)  # fmt: skip
    _generated(engines, encoded, start, beam_size=5, max_length=12, **plain)
    _generated(engines, encoded, start, beam_size=5, length_penalty=0.0, **plain)
    several = _generated(engines, encoded, start, beam_size=5, num_hypotheses=3, **plain)
    assert all(len(result.sequences_ids) == 3 for result in several)


def test_alignments_of_texts_of_unequal_length_match(
    engines: dict[str, Any], encoded: dict[str, Any]
) -> None:
    """The batch case CTranslate2 pads (equal frames, texts of unequal length) and the one it
    aligns item by item (unequal frames)."""
    tokenizer = engines["torch"].hf_tokenizer
    rules = engines["torch"].model.rules
    start = [rules.sot, tokenizer.token_to_id("<|ar|>"), tokenizer.token_to_id("<|transcribe|>")]
    texts = [tokenizer.encode(text, add_special_tokens=False).ids
             for text in (" لا يقولون بعد الآباء", " الكلام فضة")]  # fmt: skip
    for frames in (3000, [3000, 3000], [2400, 1000]):
        found = {name: engines[name].model.align(encoded[name], start, texts, frames)
                 for name in ("ctranslate2", "torch")}  # fmt: skip
        for ours, theirs in zip(found["torch"], found["ctranslate2"], strict=True):
            assert [tuple(pair) for pair in ours.alignments] == [
                tuple(pair) for pair in theirs.alignments
            ], frames
            assert np.allclose(ours.text_token_probs, theirs.text_token_probs, atol=1e-4)


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


@pytest.fixture(scope="module")
def checkpoint(
    base: whisper.WhisperModel, engines: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """How Arabic fine-tunes are published: transformers' folder (safetensors, config,
    generation config, tokenizer), written here from the packaged base."""
    folder = tmp_path_factory.mktemp("whisper-base-hf")
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
    return folder


def test_a_hugging_face_checkpoint_runs_on_the_torch_engine(
    checkpoint: Path, engines: dict[str, Any], tmp_path: Path
) -> None:
    """Written from the packaged base, so the words it gives must be the base's."""
    from faster_whisper.audio import decode_audio

    folder = tmp_path / "whisper-base-hf"
    shutil.copytree(checkpoint, folder)
    model = whisper.from_folder(folder)
    assert model.engines == (whisper.TORCH,)
    device = whisper.choose_device("cpu", "auto", model)
    assert device == whisper.Device("cpu", "float32", whisper.TORCH)
    audio = decode_audio(str(_clips()[0]))
    loaded = whisper.load(model, device, 2)
    assert _segments(loaded, audio) == _segments(engines["torch"], audio)
    whisper.verify(model)
    (folder / "model.safetensors").write_bytes(b"changed")
    with pytest.raises(whisper.ModelMissing, match="no longer match"):
        whisper.verify(model)


@pytest.mark.parametrize(("quantization", "step"), [("int8", 127), ("int16", 2**10)])
def test_quantized_ctranslate2_weights_read_back_within_a_step(
    checkpoint: Path, base: whisper.WhisperModel, tmp_path: Path, quantization: str, step: int
) -> None:
    """Quantized folders (CTranslate2's int8, int16) read as the weights they round, the
    output projection too, which CTranslate2 stores as an alias of the embeddings."""
    import ctranslate2

    ctranslate2.converters.TransformersConverter(str(checkpoint)).convert(
        str(tmp_path / quantization), quantization=quantization
    )
    quantized = read_ct2(tmp_path / quantization / "model.bin")
    exact = read_ct2(base.path / "model.bin")
    for name in ("decoder/projection/weight", "decoder/embeddings/weight",
                 "encoder/layer_0/ffn/linear_0/weight", "encoder/conv1/weight"):  # fmt: skip
        assert quantized[name].dtype == np.float32
        assert np.abs(quantized[name] - exact[name]).max() <= np.abs(exact[name]).max() / step


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
