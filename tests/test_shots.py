"""The shot detector's streaming interface, on signatures fed by hand (no video, no decoder)."""

from __future__ import annotations

import numpy as np

from workers.keyframes import KeyframesConfig
from workers.shots import (
    LUMA_BLOCKS,
    Cut,
    CutRules,
    ShotDetector,
    Signature,
    is_hard_cut,
    merge_cuts,
)

#: Luma blocks and two chroma planes of a quarter of that each.
_LENGTH = LUMA_BLOCKS * 3 // 2
FPS = 25.0
#: Timestamp ticks per frame: a 1/12,800 s time base at 25 fps, as FFmpeg writes MP4.
TICKS = 512


def _picture(seed: int) -> Signature:
    """A textured picture of mid brightness (not black)."""
    return np.random.default_rng(seed).integers(60, 200, _LENGTH, dtype=np.uint8)


def _shot(picture: Signature, frames: int, seed: int) -> list[Signature]:
    """A still shot with a little sensor noise on every frame, as real frames have."""
    noise = np.random.default_rng(seed).integers(-2, 3, (frames, _LENGTH))
    return list(np.clip(picture.astype(np.int16) + noise, 0, 255).astype(np.uint8))


def _detector() -> ShotDetector:
    return ShotDetector(CutRules(), FPS, TICKS)


def _feed(detector: ShotDetector, frames: list[Signature], first: int = 0) -> None:
    for number, signature in enumerate(frames, start=first):
        detector.add(number * TICKS, signature)


def test_a_hard_cut_is_found_on_its_frame() -> None:
    detector = _detector()
    _feed(detector, _shot(_picture(1), 30, 10) + _shot(_picture(2), 30, 11))
    assert detector.cuts == [], "nothing is analysed before the run ends"
    detector.end_run()
    [cut] = detector.cuts
    assert cut.kind == "hard"
    assert (cut.first, cut.index, cut.last) == (29 * TICKS, 30 * TICKS, 30 * TICKS)
    assert cut.score > 30


def test_the_hard_cut_rule_weighs_a_change_against_its_neighbours() -> None:
    rules = CutRules()
    assert is_hard_cut((30.0, 1.0), [(1.0, 1.0), (2.0, 1.0), (1.0, 1.0), (2.0, 1.0)], rules)
    # Camera motion: every frame changes a lot, so a large change is no cut.
    assert not is_hard_cut((30.0, 1.0), [(12.0, 1.0), (14.0, 1.0), (11.0, 1.0)], rules)
    # Too small to be a cut whatever its neighbours; a lone large change is one.
    assert not is_hard_cut((rules.min_cut_score - 1, 1.0), [(0.0, 1.0), (0.0, 1.0)], rules)
    assert is_hard_cut((rules.min_cut_score, 1.0), [], rules)


def test_the_hard_cut_rule_weighs_neighbours_by_the_frames_each_spans() -> None:
    """B-frames skipped, a short fade decodes as one step over four frames between steps over
    one: four times a neighbour's change is what the fade does over as many frames."""
    rules = CutRules()
    fade = [(11.0, 1.0), (12.0, 1.0), (12.0, 1.0), (11.0, 1.0)]
    assert not is_hard_cut((46.0, 4.0), fade, rules)
    assert is_hard_cut((46.0, 1.0), fade, rules)


def test_a_linear_fade_to_black_is_one_gradual_cut_in_its_middle() -> None:
    picture = _picture(3).astype(np.float32)
    fade = [(picture * (1 - step / 20)).round().astype(np.uint8) for step in range(1, 21)]
    black = [np.zeros(_LENGTH, dtype=np.uint8)] * 30
    detector = _detector()
    _feed(detector, _shot(_picture(3), 30, 12) + fade + black)
    detector.end_run()
    [cut] = detector.cuts
    assert cut.kind == "gradual"
    assert (cut.to_flat, cut.from_flat) == (True, False)
    # Each step of the fade is too small for a hard cut; the fade runs over frames 30-49,
    # and from frame 47 on is as good as black (a fade's end: its frames are flat).
    assert abs(cut.index - 40 * TICKS) <= 2 * TICKS
    assert cut.first <= 31 * TICKS and cut.last >= 47 * TICKS


def test_a_run_ended_between_two_pictures_gives_no_cut() -> None:
    """Frames the keyframes showed unchanged lie between runs: the change is not a cut."""
    detector = _detector()
    _feed(detector, _shot(_picture(4), 20, 13))
    detector.end_run()
    _feed(detector, _shot(_picture(5), 20, 14), first=500)
    detector.end_run()
    assert detector.cuts == []


def test_cuts_near_the_edge_of_an_analysed_piece_are_found_once() -> None:
    """A run longer than one piece (4,096 frames and 150 of context) is analysed in
    overlapping pieces, in bounded memory: 4000 falls in the first, 4100 in the overlap."""
    detector = _detector()
    frames = _shot(_picture(6), 4000, 15) + _shot(_picture(7), 100, 16)
    frames += _shot(_picture(8), 200, 17)
    _feed(detector, frames)
    detector.end_run()
    assert [(cut.index // TICKS, cut.kind) for cut in detector.cuts] == [
        (4000, "hard"),
        (4100, "hard"),
    ]


def test_merging_joins_a_fade_out_and_in_and_keeps_the_stronger_of_near_cuts() -> None:
    def seconds(index: int) -> float:
        return index / FPS

    out = Cut(40, "gradual", 30.0, to_flat=True, first=30, last=49)
    back = Cut(60, "gradual", 40.0, from_flat=True, first=52, last=70)
    weak, strong = Cut(100, "hard", 20.0, first=99, last=100), Cut(105, "hard", 50.0)
    merged = merge_cuts([strong, back, weak, out], seconds, CutRules())
    assert merged == [Cut(50, "gradual", 40.0, first=30, last=70), strong]


def test_the_keyframes_options_carry_the_rules_and_keep_their_storage_key() -> None:
    assert KeyframesConfig().cut_rules() == CutRules()
    assert KeyframesConfig(min_shot_s=1.0).cut_rules().min_shot_s == 1.0
    # The options' hash is part of every stored keyframes result's key: it must not move
    # unless the stage's version does (version 3 added the flash and contrast rules).
    assert KeyframesConfig().config_hash() == "222c6deffea8bd6c"


def _cuts(frames: list[Signature]) -> list[tuple[int, str]]:
    detector = _detector()
    _feed(detector, frames)
    detector.end_run()
    merged = merge_cuts(detector.cuts, lambda index: index / TICKS / FPS, CutRules())
    return [(cut.index // TICKS, cut.kind) for cut in merged]


def _lit(frames: list[Signature], shift: int) -> list[Signature]:
    """The frames brightened (or darkened) by `shift` levels, as a flash lights a scene."""
    return [np.clip(frame.astype(np.int16) + shift, 0, 255).astype(np.uint8) for frame in frames]


def test_flashes_are_no_cuts_and_a_cut_after_them_still_is() -> None:
    """A white frame, two bright ones and three dark ones in a shot: the picture after each
    is the shot before it. The cut at 100 is found, once."""
    frames = _shot(_picture(9), 100, 20) + _shot(_picture(10), 40, 21)
    frames[20] = np.full(_LENGTH, 250, dtype=np.uint8)
    frames[45:47] = _lit(frames[45:47], 90)
    frames[70:73] = _lit(frames[70:73], -120)
    assert _cuts(frames) == [(100, "hard")]


def test_a_strobe_is_no_cut() -> None:
    """Every other frame lit for a second: which frames are the flashes is not known, and
    neither reading is a cut."""
    frames = _shot(_picture(11), 80, 22)
    for at in range(20, 50, 2):
        frames[at] = _lit([frames[at]], 110)[0]
    assert _cuts(frames) == []


def test_steady_change_is_no_transition() -> None:
    """The generated zoom of issue 14, in signatures: the picture changes at one steady pace
    for five seconds (its colours turning), so every half second is a perfect linear mix of
    its ends. A transition must also stand out from the half seconds around it."""
    start, shift = _picture(12).astype(np.float32), np.random.default_rng(13).normal(0, 1, _LENGTH)
    frames = [
        np.clip(start + shift * 3 * step, 0, 255).round().astype(np.uint8) for step in range(125)
    ]
    assert _cuts(frames) == []


def test_a_dissolve_is_one_gradual_cut_in_its_middle() -> None:
    one, other = _picture(14).astype(np.float32), _picture(15).astype(np.float32)
    blend = [((1 - t / 21) * one + t / 21 * other).round().astype(np.uint8) for t in range(1, 21)]
    frames = _shot(_picture(14), 40, 23) + blend + _shot(_picture(15), 40, 24)
    [(index, kind)] = _cuts(frames)
    assert kind == "gradual" and abs(index - 50) <= 2


def test_a_fade_through_white_is_one_cut() -> None:
    """Out to white over ten frames (40-49), white for six, in from white over ten (56-65):
    one cut in the middle, not two."""
    white = np.full(_LENGTH, 235, dtype=np.float32)
    one, other = _picture(16).astype(np.float32), _picture(17).astype(np.float32)
    out = [((1 - t / 10) * one + t / 10 * white).round().astype(np.uint8) for t in range(1, 11)]
    back = [((1 - t / 10) * white + t / 10 * other).round().astype(np.uint8) for t in range(10)]
    frames = _shot(_picture(16), 40, 25) + out + [white.astype(np.uint8)] * 6 + back
    frames += _shot(_picture(17), 40, 26)
    [(index, kind)] = _cuts(frames)
    assert kind == "gradual" and abs(index - 53) <= 3
