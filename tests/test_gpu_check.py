"""`make gpu-check` before any device time is spent on it: without a GPU it stops at once,
and a rehearsal runs every step on the CPU from a bundle made as `make gpu-bundle` makes it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from models import whisper
from pipelines import gpu_check
from pipelines.bench.keyframes import DEFAULT_CORPUS

pytest.importorskip("torch")


@pytest.mark.skipif(whisper.torch_cuda_available(), reason="this machine has a GPU")
def test_without_a_gpu_the_check_stops_at_once_and_says_why(tmp_path: Path) -> None:
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, "-m", "pipelines.gpu_check", "check", "--bundle", str(tmp_path),
         "--out", str(out)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert run.returncode == gpu_check.NO_GPU
    assert "no CUDA device" in run.stderr
    assert not out.exists(), "nothing is measured, so nothing is written"


def test_a_rehearsal_runs_every_step_on_the_cpu(models_dir: Path, tmp_path: Path) -> None:
    if not (DEFAULT_CORPUS / "audio_ar").is_dir():
        pytest.skip("the shared corpus is not beside the repository")
    made = gpu_check.bundle(DEFAULT_CORPUS, models_dir, tmp_path / "bundle", long_minutes=0.2,
                            clip_size="320x180", clip_shots=((20, 15, 25),))  # fmt: skip
    assert len(made["parts"]) == 4, "145 MB of weights in parts of 40 MiB"
    stashed = tmp_path / "stash"
    for part in made["parts"]:  # as separate calls carry them
        one = tmp_path / part
        (one / "whisper-base").mkdir(parents=True)
        (tmp_path / "bundle" / "whisper-base" / part).rename(one / "whisper-base" / part)
        assert gpu_check.stash(one, stashed) == [f"whisper-base/{part}"]
    gpu_check.stash(tmp_path / "bundle", stashed)
    (stashed / "whisper-base" / made["parts"][2]).rename(tmp_path / "aside")
    assert gpu_check.check(stashed, tmp_path / "unjoined", rehearse=True) == gpu_check.NOT_JOINED
    unjoined = json.loads((tmp_path / "unjoined" / "gpu-check.json").read_text())
    assert "part3 is missing" in unjoined["model"]["error"]
    (tmp_path / "aside").rename(stashed / "whisper-base" / made["parts"][2])
    out = tmp_path / "out"
    assert gpu_check.check(stashed, out, rehearse=True) == 0
    report = json.loads((out / "gpu-check.json").read_text())
    assert (
        report["rehearsal"]
        and report["model"]["sha256"] == whisper.assemble_base(models_dir).sha256
    )
    assert report["steps"]["pytest_gpu"]["exit_status"] == 0
    assert "2 skipped" in report["steps"]["pytest_gpu"]["summary"][0], "no GPU, nothing failed"
    assert report["model"]["auto_device"]["engine"] == whisper.CTRANSLATE2
    joined = whisper.WhisperModel("joined", tmp_path / "joined", "0" * 64)
    environment = gpu_check.pytest_environment(joined, stashed, rehearse=False)
    assert environment["QARINA_WHISPER_MODEL"] == str(tmp_path / "joined")
    assert Path(environment["QARINA_GPU_BUNDLE"], "speech.npz").is_file()
    assert environment["QARINA_REQUIRE_GPU"] == "1"
    figures = report["steps"]["transcription"]
    assert {"rehearsal_torch_float32", "cpu"} <= figures.keys()
    for engine in ("rehearsal_torch_float32", "cpu"):
        assert figures[engine]["long"]["real_time"] > 0
        assert figures[engine]["long"]["characters"] > 0
        assert 0 <= figures[engine]["notes"]["cer"] <= 1.5
    assert figures["cpu"]["engine"] == whisper.CTRANSLATE2
    keyframes = report["steps"]["keyframes"]
    assert keyframes["same_cuts_within_one_frame"], keyframes["clips"]
    assert keyframes["clips"]["clip0.mp4"]["made"] == [20, 35]
    assert keyframes["rehearsal"]["decoders"] == keyframes["cpu"]["decoders"] == ["cpu"]
