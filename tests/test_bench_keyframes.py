"""Smoke test of `qarina bench keyframes` at toy size, plus the cut matching it scores with.

The smoke test checks the report's shape and that accuracy is actually computed for both
detectors, not the speed: speed belongs to the full-size run on the machine being sized.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.bench.keyframes import DEFAULT_CORPUS, MOTION_KINDS, bench_keyframes, match_cuts
from pipelines.config import QarinaConfig
from pipelines.samples import motion_clips, phone_clips


def test_match_cuts_is_one_to_one_within_tolerance() -> None:
    truth = [
        phone_clips.TrueCut(30, "hard", (30, 30)),
        phone_clips.TrueCut(100, "dissolve", (93, 107)),
    ]
    # 32 is within 2 frames of the hard cut, 34 is not; 92 and 106 both lie in the dissolve's
    # span +- 2, but only one of them may claim it.
    scores = match_cuts([32, 34, 92, 106], truth)
    assert scores["hits"] == 2
    assert scores["precision"] == 0.5
    assert scores["recall"] == 1.0
    assert scores["f1"] == pytest.approx(0.667)
    assert scores["false_alarms"] == [34, 92]
    assert match_cuts([], truth)["f1"] == 0.0


def test_plan_has_hard_and_gradual_cuts_and_is_long_enough() -> None:
    shots = phone_clips.plan_shots(60)
    transitions = [shot.transition for shot in shots[1:]]
    assert 30 <= len(shots) <= 40
    assert {"hard", "dissolve", "fade"} == set(transitions)
    assert transitions.count("hard") > 4 * (len(transitions) - transitions.count("hard"))
    assert phone_clips.plan_shots(60) == shots


@pytest.mark.slow
@pytest.mark.skipif(not DEFAULT_CORPUS.is_dir(), reason="../shared/corpus is not here")
def test_bench_keyframes_at_toy_size(sqlite_config: QarinaConfig, tmp_path: Path) -> None:
    output = tmp_path / "results" / "keyframes.json"
    # One motion clip of each half: a flash clip chosen on, a zoom one held out.
    recipes = [
        next(r for r in motion_clips.recipes("tune") if r.kind == "flash"),
        next(r for r in motion_clips.recipes("check") if r.kind == "zoom"),
    ]
    result = bench_keyframes(
        sqlite_config,
        output,
        runs=1,
        seconds=6,
        size=(320, 180),
        motion_size=(320, 180),
        motion_recipes=recipes,
    )
    assert json.loads(output.read_text()) == result
    assert result["machine"]["cpu_model"]
    assert not list(sqlite_config.data_dir.glob("bench-*"))
    cuts = result["test_clip"]["cuts"]
    assert len(cuts) >= 2
    assert result["test_clip"]["frames"] >= 6 * 30
    assert set(result["clips"]) == {"bframes", "nobframes", "fixedgop"}
    for clip in result["clips"].values():
        assert len(clip["runs"]) == 1
        for name in ("ours", "pyscenedetect", "ffmpeg_decode"):
            assert clip["median"][name]["seconds"] > 0
        assert clip["ratios"]["ours_to_pyscenedetect"] > 0
        assert clip["ratios"]["ours_to_ffmpeg_decode"] > 0
        for detector in ("ours", "pyscenedetect_adaptive"):
            scores = clip["accuracy"][detector]
            assert scores["true_cuts"] == len(cuts)
            assert 0.0 <= scores["f1"] <= 1.0
            assert {"precision", "recall", "recall_by_kind"} <= set(scores)
    assert result["memory"]["peak_mib"] > 0
    assert set(result["target"]) >= {"met_f1", "met_memory", "met_speed_vs_ffmpeg_decode"}
    motion = result["motion_set"]
    assert len(motion["clips"]) == 2 * len(motion_clips.ENCODES)
    for clip in motion["clips"].values():
        for detector in ("ours", "pyscenedetect_adaptive"):
            assert clip[detector]["true_cuts"] == len(clip["cuts"]) == 1
    assert set(motion["by_kind"]) == {"tune", "check"}
    assert set(motion["by_kind"]["tune"]) == {"flash"}
    for half in ("tune", "check"):
        pooled = motion["motion_kinds"]["by_half"][half]["ours"]
        assert pooled["true_cuts"] == len(motion_clips.ENCODES)
        assert pooled["precision"] is not None and pooled["recall"] is not None
    assert motion["motion_kinds"]["kinds"] == list(MOTION_KINDS)
    assert "met_motion_precision" in result["target"]
