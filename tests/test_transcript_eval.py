"""`qarina eval transcript`: the split settings are chosen and judged on, and the choosing.

No model runs here: the pipeline's texts are stood in for, so these tests cost milliseconds;
the eval itself on real clips is in test_bench_transcript.py.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from pipelines.bench.keyframes import DEFAULT_CORPUS
from pipelines.config import QarinaConfig
from pipelines.transcript_eval import (
    HALVES,
    TIE_CHARACTERS,
    TUNING_GRID,
    ClipScore,
    CorpusClip,
    Transcribed,
    TranscriptEvaluation,
    Trial,
    _plan,
    _Runner,
    candidates,
    choose,
    corpus_clips,
    departures,
    faster_whisper_defaults,
    split_halves,
)
from workers.transcript import TranscriptConfig

AUDIO_CORPUS = DEFAULT_CORPUS / "audio_ar"


def test_a_speakers_clips_stay_in_one_half_and_groups_alternate_per_folder() -> None:
    halves = split_halves(
        {
            "words/yes/s2_01.wav": "s2",
            "words/yes/s1_01.wav": "s1",
            "words/no/s1_01.wav": "s1",
            "words/no/s2_01.wav": "s2",
            "words/no/s3_01.wav": "s3",
            "read/c.mp3": None,
            "read/a.mp3": None,
            "read/b.mp3": None,
        }
    )
    assert halves == {
        "words/yes/s1_01.wav": "choosing",
        "words/no/s1_01.wav": "choosing",
        "words/yes/s2_01.wav": "held_out",
        "words/no/s2_01.wav": "held_out",
        "words/no/s3_01.wav": "choosing",
        "read/a.mp3": "choosing",
        "read/b.mp3": "held_out",
        "read/c.mp3": "choosing",
    }


@pytest.mark.skipif(not AUDIO_CORPUS.is_dir(), reason="../shared/corpus is not here")
def test_the_shared_corpus_splits_by_speaker_as_the_module_says() -> None:
    clips = corpus_clips(AUDIO_CORPUS)
    assert corpus_clips(AUDIO_CORPUS) == clips, "the split must not change between runs"
    by_half = {half: [clip.file for clip in clips if clip.half == half] for half in HALVES}
    for files in by_half.values():
        assert sum(file.startswith("common_voice/") for file in files) >= 2
        assert sum(file.startswith("speech_commands/") for file in files) == 40
    speakers = [
        {Path(file).name.split("_")[0] for file in files if file.startswith("speech_commands/")}
        for files in by_half.values()
    ]
    assert speakers == [{"00000014"}, {"00000026"}]
    assert not set(by_half["choosing"]) & set(by_half["held_out"])


def _trial(errors: int, departures: int, pad: int = 400) -> Trial:
    return Trial({"vad_speech_pad_ms": pad}, 40, errors, errors / 250, 0.5, departures)


def test_the_fewest_errors_win_unless_by_noise_then_the_librarys_defaults_do() -> None:
    clear_win = [_trial(30, 0, 400), _trial(30 - TIE_CHARACTERS - 1, 1, 1000)]
    assert choose(clear_win).settings == {"vad_speech_pad_ms": 1000}
    by_noise = [_trial(30, 0, 400), _trial(30 - TIE_CHARACTERS, 1, 1000)]
    assert choose(by_noise).settings == {"vad_speech_pad_ms": 400}
    tied_departures = [_trial(20, 1, 200), _trial(20, 1, 1000), _trial(40, 0, 400)]
    assert choose(tied_departures).settings == {"vad_speech_pad_ms": 200}, "then grid order"
    with pytest.raises(ValueError):
        choose([])


def test_candidates_cover_the_grid_and_departures_count_against_the_library() -> None:
    grid = {"vad_speech_pad_ms": (400, 1000), "vad_threshold": (0.5, 0.35)}
    assert candidates(grid) == [
        {"vad_speech_pad_ms": 400, "vad_threshold": 0.5},
        {"vad_speech_pad_ms": 400, "vad_threshold": 0.35},
        {"vad_speech_pad_ms": 1000, "vad_threshold": 0.5},
        {"vad_speech_pad_ms": 1000, "vad_threshold": 0.35},
    ]
    defaults = faster_whisper_defaults()
    assert departures({"vad_speech_pad_ms": 1000, "vad_threshold": 0.5}, defaults) == 1
    assert departures({"vad_speech_pad_ms": defaults["vad_speech_pad_ms"]}, defaults) == 0


def test_a_candidates_settings_reach_the_stage_and_its_result_key(
    sqlite_config: QarinaConfig,
) -> None:
    plan = _plan(sqlite_config, {"vad_speech_pad_ms": 123})
    assert plan.stage("transcript").config.vad_speech_pad_ms == 123
    assert plan.key("transcript") != _plan(sqlite_config, {}).key("transcript")
    assert _plan(sqlite_config, {}).stage("transcript").config == TranscriptConfig()


def test_tuning_runs_every_candidate_on_the_choosing_half_only(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    clips = [
        CorpusClip("a.wav", "نعم", "choosing"),
        CorpusClip("b.wav", "لا", "choosing"),
        CorpusClip("c.wav", "ربما", "held_out"),
    ]
    heard: list[tuple[list[str], dict[str, Any]]] = []

    def pipeline(
        chosen: Sequence[CorpusClip], settings: Mapping[str, Any]
    ) -> dict[str, Transcribed]:
        heard.append(([clip.file for clip in chosen], dict(settings)))
        # Only the laxest threshold hears the second word right.
        second = "لا" if settings["vad_threshold"] == 0.35 else "لالالا"
        return {"a.wav": Transcribed("نعم", False), "b.wav": Transcribed(second, False)}

    runner = _Runner(tmp_path, tmp_path, None)
    monkeypatch.setattr(runner, "pipeline", pipeline)
    grid = {"vad_speech_pad_ms": (400, 1000), "vad_threshold": (0.5, 0.35)}
    tuning = runner.tune(clips, grid)
    assert [files for files, _ in heard] == [["a.wav", "b.wav"]] * 4
    assert [trial.char_errors for trial in tuning.trials] == [4, 0, 4, 0]
    assert tuning.chosen.settings == {"vad_speech_pad_ms": 400, "vad_threshold": 0.35}
    report = tuning.as_json()
    assert report["chosen"] == tuning.chosen.settings and len(report["tried"]) == 4


def test_the_report_scores_each_half_apart_and_keeps_the_overall_figures() -> None:
    evaluation = TranscriptEvaluation({"name": "base", "sha256": "0" * 64}, {})
    evaluation.clips += [
        ClipScore("a", "choosing", "نعم", "نعم", "لا", "نعم", False),
        ClipScore("b", "held_out", "لا", "نعم", "لا", "لا", True),
    ]
    report = evaluation.as_json()
    assert report["halves"]["choosing"]["overall"]["pipeline_cer"] == 0.0
    assert report["halves"]["choosing"]["overall"]["direct_cer"] == 1.0
    assert report["halves"]["held_out"]["sampled_clips"]["clips"] == 1
    assert report["halves"]["held_out"]["deterministic_clips"] == {}
    assert report["overall"]["clips"] == 2
    assert report["deterministic_clips"]["clips"] == report["sampled_clips"]["clips"] == 1
    assert report["direct_no_vad"]["overall"]["direct_no_vad_cer"] == 0.0
    assert [clip["half"] for clip in report["per_clip"]] == ["choosing", "held_out"]
    assert "tuning" not in report


def test_the_stage_defaults_were_tried_or_are_faster_whispers_own() -> None:
    """A default no run of the eval tried is a value no data tested."""
    config, library = TranscriptConfig(), faster_whisper_defaults()
    for name, values in TUNING_GRID.items():
        assert getattr(config, name) in values, name
    for name in ("beam_size", "condition_on_previous_text"):
        assert getattr(config, name) == library[name], name
