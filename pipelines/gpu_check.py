"""`make gpu-check`: the GPU paths measured in one short run on a lent GPU machine.

A GPU machine is lent for minutes, with an image of its own: Python and PyTorch, but no Ray,
no ffmpeg binary and no network, and at most 64 MiB carried per call. So what the check reads
is prepared here by `make gpu-bundle` (`bundle`): the speech decoded to arrays with its
reference texts (corpus clips one by one, the shape of voice notes, and joined into one long
recording), 1080p phone-shaped clips with known cuts, the wheels the image lacks, and Whisper
base's weights in parts of at most 40 MiB (`whisper.split_into_parts`). On the machine, `stash`
keeps each call's carried part in a folder that lives while the machine stays warm, and
`check` installs the wheels, joins the parts (each, and the whole, checked by SHA-256) and
measures:

- the GPU tests (`pytest -m gpu` on tests/test_gpu.py, which fail rather than skip there);
- transcription on the GPU (the PyTorch engine, float16, batched) against the CPU of the same
  machine (CTranslate2 int8 where it loads, else PyTorch float32): real-time factors on the
  long recording and on the notes, and character error rates against the references;
- the keyframes stage decoding with NVDEC against the CPU: the same cuts, and the speed-up.

Every figure goes to `gpu-check.json` under `--out` (or $OUT), with `nvidia-smi`'s summary.
Without a GPU the check stops at once with a message and exit status 3; `--rehearse` runs
every step on the CPU instead, on a shorter recording, so the script is tried before any
device time is spent on it.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from models import whisper
from models.whisper import ModelMissing

#: A part of the weights per transfer: 40 MiB leaves room for the tree and the speech.
PART_BYTES = 40 * 2**20
#: Where carried parts wait for the last call, on the lent machine (kept while it is warm).
STASH = Path(tempfile.gettempdir()) / "qarina-gpu-stash"
SAMPLE_RATE = 16_000
NO_GPU = 3
NOT_JOINED = 4
#: The issue's targets: Whisper base float16 batched on the long recording, and its CER
#: no worse than the CPU's by more than this.
TARGET_REAL_TIME = 300.0
TARGET_CER_MARGIN = 0.01


def _stages_without_registry() -> None:
    """Let `workers.<stage>` import without `workers/__init__`, whose registry imports every
    stage and what each needs: the photo hashers' pdqhash has no wheel for the GPU image's
    Python, and keyframes and transcripts do not use it. A process that already imported
    the package (the tests) keeps it."""
    if "workers" not in sys.modules:
        package = types.ModuleType("workers")
        package.__path__ = [str(Path(__file__).resolve().parents[1] / "workers")]
        sys.modules["workers"] = package


def gpu_name() -> str | None:
    """The CUDA device PyTorch sees, or None."""
    if not whisper.torch_cuda_available():
        return None
    import torch

    name: str = torch.cuda.get_device_name(0)
    return name


#: The videos' shots (frames at 30 fps), a clip each: cuts where phones' keyframes are not.
CLIP_SHOTS = ((90, 60, 150), (150, 45, 105), (30, 120, 90, 60))


def bundle(
    corpus: Path,
    models_dir: Path,
    target: Path,
    long_minutes: float,
    clip_size: str = "1920x1080",
    clip_shots: Sequence[Sequence[int]] = CLIP_SHOTS,
) -> dict[str, Any]:
    """The speech arrays (int16) and their references, phone-shaped H.264 clips with known
    cuts (the image has no ffmpeg to make them), and the weights in parts, under `target`."""
    from faster_whisper.audio import decode_audio

    from pipelines.samples.videos import video_with_hard_cuts
    from pipelines.transcript_eval import corpus_clips

    (target / "clips").mkdir(parents=True, exist_ok=True)
    cuts = {}
    for number, shots in enumerate(clip_shots):
        path = target / "clips" / f"clip{number}.mp4"
        video_with_hard_cuts(path, shots, size=clip_size, rate=30,
                             encoder=("-g", "30", "-sc_threshold", "0", "-bf", "0"))  # fmt: skip
        cuts[path.name] = [int(frame) for frame in np.cumsum(shots)[:-1]]
    (target / "clips.json").write_text(json.dumps(cuts))
    clips = corpus_clips(corpus / "audio_ar")
    notes = [decode_audio(str(corpus / "audio_ar" / clip.file)) for clip in clips]
    pause = np.zeros(SAMPLE_RATE // 2, dtype=np.float32)
    one_pass = np.concatenate([piece for note in notes for piece in (note, pause)])
    repeats = max(1, int(long_minutes * 60 * SAMPLE_RATE // len(one_pass)))
    np.savez(
        target / "speech.npz",
        long=_int16(np.concatenate([one_pass] * repeats)),
        notes=_int16(np.concatenate(notes)),
        note_lengths=np.array([len(note) for note in notes]),
    )
    references = [clip.reference for clip in clips]
    (target / "speech.json").write_text(
        json.dumps({"references": references, "long_repeats": repeats}, ensure_ascii=False)
    )
    parts = whisper.split_into_parts(
        whisper.assemble_base(models_dir).path, target / "whisper-base", PART_BYTES
    )
    return {"notes": len(notes), "long_s": len(one_pass) * repeats / SAMPLE_RATE,
            "clips": len(cuts), "parts": [part["name"] for part in parts["parts"]]}  # fmt: skip


def _int16(samples: np.ndarray) -> np.ndarray:
    return np.clip(samples * 32768.0, -32768, 32767).astype(np.int16)


def stash(bundle_dir: Path, stash_dir: Path = STASH) -> list[str]:
    """Keep what this call carried of the bundle for a later call (parts travel apart). A
    file already kept at its size is not copied again (the tree may still hold an earlier
    call's files); `join_parts` checks every byte by SHA-256 in the end."""
    kept = []
    for path in sorted(bundle_dir.rglob("*")):
        into = stash_dir / path.relative_to(bundle_dir)
        if path.is_file() and not (into.is_file() and into.stat().st_size == path.stat().st_size):
            into.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, into)
            kept.append(str(path.relative_to(bundle_dir)))
    return kept


def check(bundle_dir: Path, out: Path, rehearse: bool) -> int:
    """Measure and write `gpu-check.json`; the exit status says whether every step ran."""
    gpu = gpu_name()
    if gpu is None and not rehearse:
        print(
            "gpu-check: no CUDA device is visible to PyTorch here, so there is nothing to "
            "measure; run it on a lent GPU machine (or --rehearse to try the steps on the CPU)",
            file=sys.stderr,
        )
        return NO_GPU
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"machine": _machine(gpu), "rehearsal": rehearse, "steps": {}}
    _nvidia_smi(out)
    report["installed"] = install_carried_wheels(bundle_dir)
    with tempfile.TemporaryDirectory(prefix="qarina-gpu-") as scratch:
        try:
            model = whisper.join_parts(bundle_dir / "whisper-base", Path(scratch) / "whisper-base")
        except (ModelMissing, OSError) as error:  # a part that did not travel: say which
            report["model"] = {"error": str(error), "stash": sorted(
                str(path.relative_to(bundle_dir)) for path in bundle_dir.rglob("*"))}  # fmt: skip
            _write(out, report)
            return NOT_JOINED
        report["model"] = {"name": model.name, "sha256": model.sha256,
                           "auto_device": dataclasses.asdict(whisper.choose_device(
                               "auto", "auto", model))}  # fmt: skip
        steps: dict[str, Callable[[], dict[str, Any]]] = {
            "pytest_gpu": lambda: _pytest_gpu(pytest_environment(model, bundle_dir, rehearse)),
            "transcription": lambda: _transcription(model, bundle_dir, gpu is not None, rehearse),
            "keyframes": lambda: _keyframes(bundle_dir, gpu is not None),
        }
        failed = False
        for name, step in steps.items():
            started = time.monotonic()
            try:
                report["steps"][name] = step()
            except Exception as error:  # every step reports, whatever one of them did
                report["steps"][name] = {"error": f"{type(error).__name__}: {error}"}
                failed = True
            report["steps"][name]["wall_s"] = round(time.monotonic() - started, 2)
    _write(out, report)
    print(json.dumps(report["steps"], indent=2, ensure_ascii=False))
    return 1 if failed or report["steps"]["pytest_gpu"].get("exit_status") else 0


def _write(out: Path, report: dict[str, Any]) -> None:
    (out / "gpu-check.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))


def install_carried_wheels(bundle_dir: Path) -> list[str]:
    """The carried wheels (`wheels-*/`) of packages the image lacks, installed into a folder
    of the stash that this process and the tests' put first on their path."""
    site = bundle_dir / "site"
    wanted = [wheel for folder in sorted(bundle_dir.glob("wheels-*"))
              if importlib.util.find_spec(folder.name.removeprefix("wheels-").replace("-", "_"))
              is None for wheel in sorted(folder.glob("*.whl"))]  # fmt: skip
    if wanted:
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
             "--target", str(site), *map(str, wanted)],
            check=True, timeout=300,
        )  # fmt: skip
    if site.is_dir() and str(site) not in sys.path:
        sys.path.insert(0, str(site))
        importlib.invalidate_caches()
    return [wheel.name for wheel in wanted]


def pytest_environment(
    model: whisper.WhisperModel, bundle_dir: Path, rehearse: bool
) -> dict[str, str]:
    """What tests/test_gpu.py reads: the joined weights, the speech, the installed wheels;
    on the GPU, QARINA_REQUIRE_GPU, so that a skip there is a failure."""
    site = str(bundle_dir / "site")
    environment = {
        **os.environ,
        "QARINA_WHISPER_MODEL": str(model.path),
        "QARINA_GPU_BUNDLE": str(bundle_dir),
        "PYTHONPATH": os.pathsep.join(filter(None, (site, os.environ.get("PYTHONPATH")))),
    }
    if not rehearse:
        environment["QARINA_REQUIRE_GPU"] = "1"
    return environment


def _machine(gpu: str | None) -> dict[str, Any]:
    import torch

    return {
        "gpu": gpu,
        "cuda": torch.version.cuda,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
    }


def _nvidia_smi(out: Path) -> None:
    program = shutil.which("nvidia-smi")
    if program is not None:
        summary = subprocess.run([program], check=False, capture_output=True, text=True, timeout=30)
        (out / "nvidia-smi.txt").write_text(summary.stdout + summary.stderr)


def _pytest_gpu(environment: dict[str, str]) -> dict[str, Any]:
    """tests/test_gpu.py alone, without the suite's conftest (it needs the store's packages,
    which the GPU image lacks)."""
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "--noconftest",
               "-p", "no:cacheprovider", "tests/test_gpu.py"]  # fmt: skip
    run = subprocess.run(
        command, check=False, capture_output=True, text=True, timeout=240, env=environment
    )
    return {"exit_status": run.returncode, "summary": run.stdout.strip().splitlines()[-1:]}


def _transcription(
    model: whisper.WhisperModel, bundle_dir: Path, on_gpu: bool, rehearse: bool
) -> dict[str, Any]:
    """Each engine on the long recording (batched) and on the notes one by one."""
    speech = np.load(bundle_dir / "speech.npz")
    references = json.loads((bundle_dir / "speech.json").read_text())["references"]
    ends = np.cumsum(speech["note_lengths"])
    notes = [piece.astype(np.float32) / 32768.0 for piece in np.split(speech["notes"], ends[:-1])]
    long = speech["long"].astype(np.float32) / 32768.0
    if rehearse:
        notes, references, long = notes[:2], references[:2], long[: 10 * SAMPLE_RATE]
    gpu = (
        whisper.Device("cuda", "float16", whisper.TORCH)
        if on_gpu
        else whisper.Device("cpu", "float32", whisper.TORCH)
    )
    figures = {"gpu_torch_float16" if on_gpu else "rehearsal_torch_float32":
               _engine_figures(model, gpu, long, notes, references, batch=16)}  # fmt: skip
    figures["cpu"] = _engine_figures(model, _cpu_device(), long, notes, references, batch=8)
    if on_gpu:
        fast, slow = figures["gpu_torch_float16"], figures["cpu"]
        figures["targets"] = {
            "long_real_time_at_least_300x": fast["long"]["real_time"] >= TARGET_REAL_TIME,
            "notes_cer_within_0.01_of_cpu": fast["notes"]["cer"]
            <= slow["notes"]["cer"] + TARGET_CER_MARGIN,
        }
    return figures


def _keyframes(bundle_dir: Path, on_gpu: bool) -> dict[str, Any]:
    """The keyframes stage on each clip, decoding with NVDEC (PyAV's FFmpeg, `cuda`) and on
    the CPU: the cuts each finds against those the clip was made with (within one frame),
    which decoder really ran, and the time each took, the NVDEC run after an untimed one."""
    _stages_without_registry()
    from workers.base import Kind, StageInput
    from workers.keyframes import KeyframesConfig, KeyframesStage

    made = json.loads((bundle_dir / "clips.json").read_text())
    paths = {"nvdec" if on_gpu else "rehearsal": "cuda" if on_gpu else "none", "cpu": "none"}
    figures: dict[str, Any] = {name: {"wall_s": 0.0, "decoders": []} for name in paths}
    clips: dict[str, dict[str, list[int]]] = {}
    with tempfile.TemporaryDirectory(prefix="qarina-keyframes-") as scratch:
        for name, mode in paths.items():
            stage = KeyframesStage(KeyframesConfig(hwaccel=mode))
            first = sorted(made)[0]
            stage.run(StageInput("0" * 64, bundle_dir / "clips" / first, Kind.VIDEO),
                      Path(tempfile.mkdtemp(dir=scratch)))  # fmt: skip
            for clip, expected in sorted(made.items()):
                started = time.monotonic()
                output = stage.run(StageInput("0" * 64, bundle_dir / "clips" / clip, Kind.VIDEO),
                                   Path(tempfile.mkdtemp(dir=scratch)))  # fmt: skip
                figures[name]["wall_s"] += time.monotonic() - started
                figures[name]["decoders"].append(output.result.decoder)
                found = [cut.frame_index for cut in output.result.cuts]
                clips.setdefault(clip, {"made": expected})[name] = found
    for name in paths:
        figures[name]["wall_s"] = round(figures[name]["wall_s"], 2)
    fast, slow = (figures[name]["wall_s"] for name in paths)
    figures["speedup"] = round(slow / fast, 2) if fast else None
    figures["clips"] = clips
    figures["same_cuts_within_one_frame"] = all(
        _within_one_frame(cuts[name], cuts["made"]) for cuts in clips.values() for name in paths
    )
    if on_gpu:
        figures["target_nvdec_at_least_5x"] = bool(figures["speedup"] and figures["speedup"] >= 5)
    return figures


def _within_one_frame(found: list[int], made: list[int]) -> bool:
    return len(found) == len(made) and all(
        abs(a - b) <= 1 for a, b in zip(found, made, strict=True)
    )


def _cpu_device() -> whisper.Device:
    """CTranslate2 int8, as CPU workers run, where its library loads; else PyTorch."""
    try:
        whisper.ctranslate2_cuda_devices()
    except (ImportError, OSError):
        return whisper.Device("cpu", "float32", whisper.TORCH)
    return whisper.Device("cpu", "int8")


def _engine_figures(
    model: whisper.WhisperModel,
    device: whisper.Device,
    long: np.ndarray,
    notes: list[np.ndarray],
    references: list[str],
    batch: int,
) -> dict[str, Any]:
    import jiwer
    from faster_whisper import BatchedInferencePipeline

    _stages_without_registry()
    from workers.arabic import normalise

    started = time.monotonic()
    loaded = whisper.load(model, device, cpu_threads=os.cpu_count() or 1)
    load_s = time.monotonic() - started
    options = {"language": "ar", "beam_size": 5, "vad_filter": True}
    loaded.transcribe(notes[0], **options)  # untimed: the first call sets the GPU's kernels up
    started = time.monotonic()
    segments, _ = BatchedInferencePipeline(loaded).transcribe(long, batch_size=batch, **options)
    long_text = " ".join(segment.text for segment in segments)
    long_s = time.monotonic() - started
    heard = []
    started = time.monotonic()
    for note in notes:
        segments, _ = loaded.transcribe(note, temperature=0.0, **options)
        heard.append(normalise(" ".join(segment.text for segment in segments)))
    notes_s = time.monotonic() - started
    audio_s = sum(len(note) for note in notes) / SAMPLE_RATE
    return {
        "engine": device.engine,
        "device": device.kind,
        "compute_type": device.compute_type,
        "load_s": round(load_s, 2),
        "long": {"audio_s": round(len(long) / SAMPLE_RATE, 1), "wall_s": round(long_s, 2),
                 "real_time": round(len(long) / SAMPLE_RATE / long_s, 1),
                 "characters": len(long_text)},
        "notes": {"count": len(notes), "audio_s": round(audio_s, 1), "wall_s": round(notes_s, 2),
                  "real_time": round(audio_s / notes_s, 2),
                  "cer": round(jiwer.cer([normalise(text) for text in references], heard), 4)},
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.gpu_check", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    made = commands.add_parser("bundle", help="prepare what the GPU machine reads (here)")
    made.add_argument("--corpus", type=Path, default=Path("../shared/corpus"))
    made.add_argument("--models", type=Path, default=Path("qarina-data/models"))
    made.add_argument("--to", type=Path, default=Path(".gpu-bundle"))
    made.add_argument("--long-minutes", type=float, default=10.0)
    kept = commands.add_parser("stash", help="keep this call's carried parts (GPU machine)")
    kept.add_argument("--bundle", type=Path, default=Path(".gpu-bundle"))
    measured = commands.add_parser("check", help="join the parts and measure (GPU machine)")
    measured.add_argument("--bundle", type=Path, default=STASH)
    measured.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu-check-out")))
    measured.add_argument("--rehearse", action="store_true", help="run the steps on the CPU")
    arguments = parser.parse_args(argv)
    if arguments.command == "bundle":
        print(json.dumps(bundle(arguments.corpus, arguments.models, arguments.to,
                                arguments.long_minutes)))  # fmt: skip
        return 0
    if arguments.command == "stash":
        print(json.dumps(stash(arguments.bundle)))
        return 0
    return check(arguments.bundle, arguments.out, arguments.rehearse)


if __name__ == "__main__":
    sys.exit(main())
