"""The keyframes stage on fast motion, flashes and transitions made with ffmpeg (issue 14).

Each clip is a recipe of the `tune` half of `pipelines.samples.motion_clips`, the half the
detector's settings were chosen on, rendered small and encoded both as x264 does by default
(B-frames, keyframes where it sees a change, which fast motion and flashes trigger) and as
a phone does (fixed GOP): the stage takes different paths through the two. The `check` half
is left to `qarina bench keyframes`, so that its figures stay figures on unseen material.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.samples import motion_clips
from workers.base import Kind, StageInput
from workers.keyframes import KeyframesResult, KeyframesStage

_SIZE = (320, 180)
#: Frames a found cut may lie from a hard cut, or outside a transition's frames.
_TOLERANCE = 2
_TUNE = {recipe.name: recipe for recipe in motion_clips.recipes("tune")}


def _run(path: Path, tmp_path: Path) -> KeyframesResult:
    workdir = tmp_path / f"work-{path.stem}"
    workdir.mkdir()
    return KeyframesStage().run(StageInput("0" * 64, path, Kind.VIDEO), workdir).result


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("zoom-mandelbrot", id="fast-zoom-colours-turning"),
        pytest.param("whip-scenes", id="whip-pans"),
        pytest.param("shake-running", id="handheld-running"),
        pytest.param("flash-single-and-short", id="flashes-white-bright-dark-black"),
        pytest.param("strobe-bursts", id="strobes"),
        pytest.param("fade-black-white", id="fades-through-black-and-white"),
        pytest.param("dissolve-blends", id="dissolves"),
        pytest.param("hard-cuts", id="hard-cuts-between-moving-shots"),
    ],
)
def test_every_true_cut_is_found_and_nothing_else(tmp_path: Path, name: str) -> None:
    clip = motion_clips.make_clip(_TUNE[name], tmp_path, _SIZE)
    for encode, path in clip.paths.items():
        result = _run(path, tmp_path)
        found = [cut.frame_index for cut in result.cuts]
        assert len(found) == len(clip.cuts), (encode, found, clip.cuts)
        for frame, cut in zip(found, clip.cuts, strict=True):
            assert cut.span[0] - _TOLERANCE <= frame <= cut.span[1] + _TOLERANCE, (encode, found)
        kinds = ["hard" if cut.kind == "hard" else "gradual" for cut in clip.cuts]
        assert [cut.kind for cut in result.cuts] == kinds, encode


def test_the_recipes_halves_are_disjoint_and_hold_every_kind() -> None:
    halves = {half: motion_clips.recipes(half) for half in motion_clips.HALVES}
    kinds = {half: {recipe.kind for recipe in recipes} for half, recipes in halves.items()}
    assert kinds["tune"] == kinds["check"] >= {"zoom", "whip", "shake", "flash", "fade"}
    sources = {
        half: {segment.source for recipe in recipes for segment in recipe.segments}
        for half, recipes in halves.items()
    }
    pictures = [{s for s in found if s.startswith("scene:")} for found in sources.values()]
    assert not pictures[0] & pictures[1]
    # Every motion clip holds a cut, so that a detector's precision on it is defined.
    assert all(motion_clips.timeline(recipe.segments)[0] for recipe in motion_clips.RECIPES)
