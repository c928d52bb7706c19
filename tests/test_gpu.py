"""GPU tests that run on the lent GPU machine's own image (`make gpu-check` runs this file
alone, without the suite's conftest, whose packages that image does not hold).

Where no GPU works they skip, as everywhere in CI, unless QARINA_REQUIRE_GPU=1: on the lent
machine a skip would hide that the GPU path never ran, so there they fail. They read the
speech and the joined weights that gpu-check hands them (QARINA_GPU_BUNDLE,
QARINA_WHISPER_MODEL).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from models import whisper

pytestmark = pytest.mark.gpu


def _require_gpu() -> None:
    if whisper.torch_cuda_available():
        return
    if os.environ.get("QARINA_REQUIRE_GPU") == "1":
        pytest.fail("QARINA_REQUIRE_GPU=1, but PyTorch sees no working CUDA device")
    pytest.skip("needs a CUDA device")


def _given(variable: str) -> Path:
    value = os.environ.get(variable)
    if not value:
        pytest.fail(f"{variable} must name what gpu-check prepared")
    return Path(value)


def test_the_torch_engine_decodes_a_voice_note_on_the_gpu_in_float16() -> None:
    """The words float16 on the GPU gives stay those float32 on the CPU gives, within a
    tenth of the characters (half precision may change a word, not the transcript)."""
    import jiwer

    _require_gpu()
    model = whisper.from_folder(_given("QARINA_WHISPER_MODEL"))
    speech = np.load(_given("QARINA_GPU_BUNDLE") / "speech.npz")
    note = speech["notes"][: int(speech["note_lengths"][0])].astype(np.float32) / 32768.0
    texts = []
    for device in (whisper.Device("cuda", "float16", whisper.TORCH),
                   whisper.Device("cpu", "float32", whisper.TORCH)):  # fmt: skip
        loaded = whisper.load(model, device, cpu_threads=4)
        segments, _ = loaded.transcribe(note, language="ar", beam_size=5, temperature=0.0)
        texts.append(" ".join(segment.text for segment in segments).strip())
        if device.kind == "cuda":
            assert str(loaded.model.encode(np.zeros((80, 3000), np.float32)).dtype) == (
                "torch.float16"
            )
    assert texts[1], "the note must give words on the CPU"
    assert whisper.choose_device("auto", "auto", model).kind == "cuda", "auto takes the GPU"
    assert jiwer.cer(texts[1], texts[0]) <= 0.1, json.dumps(texts, ensure_ascii=False)


def test_the_batch_of_windows_fits_the_free_device_memory() -> None:
    import torch

    _require_gpu()
    model = whisper.from_folder(_given("QARINA_WHISPER_MODEL"))
    window = whisper.shape(model).window_bytes(beams=5)
    free, total = torch.cuda.mem_get_info()
    fitting = whisper.windows_fitting(whisper.Device("cuda", "float16", whisper.TORCH), window, 64)
    assert 1 <= fitting <= 64
    assert fitting == 64 or fitting * 2 * window <= free
    assert 0 < free <= total
