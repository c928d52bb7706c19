"""`qarina bench transcript` and `qarina eval transcript` at toy size, on the real corpus.

They check the reports' shape and that both sides really ran; the figures themselves belong
to full-size runs on the machine being sized.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.bench.keyframes import DEFAULT_CORPUS
from pipelines.bench.transcript import bench_transcript
from pipelines.config import QarinaConfig
from pipelines.transcript_eval import evaluate_transcripts

AUDIO_CORPUS = DEFAULT_CORPUS / "audio_ar"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not AUDIO_CORPUS.is_dir(), reason="../shared/corpus is not here"),
]


def test_bench_transcript_at_toy_size(sqlite_config: QarinaConfig, tmp_path: Path) -> None:
    output = tmp_path / "transcript.json"
    result = bench_transcript(
        sqlite_config, AUDIO_CORPUS, output, runs=1, minutes=0.1, memory_files=2
    )
    assert json.loads(output.read_text()) == result
    assert 5 < result["audio_s"] < 15
    for name in ("direct_sequential", "pipeline_sequential", "direct_batched", "pipeline_batched"):
        assert result["median_s"][name] > 0
        assert result["realtime_factor"][name] > 0
    assert result["pipeline_over_direct"]["sequential"] > 0
    assert result["segments"]["sequential"] > 0
    assert result["memory"]["files"] == 2 and result["memory"]["rss_max_mib"] > 100
    assert len(result["model"]["sha256"]) == 64


def test_eval_transcript_scores_pipeline_and_direct(models_dir: Path) -> None:
    evaluation = evaluate_transcripts(AUDIO_CORPUS, models_dir, limit=1).as_json()
    assert evaluation["clips"] == 1
    for clip in evaluation["per_clip"]:
        assert clip["reference"] and clip["pipeline"] and clip["direct"]
        assert min(clip["pipeline_cer"], clip["direct_cer"]) >= 0
    overall = evaluation["overall"]
    assert set(overall) == {"clips", "pipeline_wer", "pipeline_cer", "direct_wer", "direct_cer"}
    assert evaluation["deterministic_clips"] or evaluation["sampled_clips"]
    assert overall["pipeline_cer"] < 1.0, "real speech must be partly recognised"
