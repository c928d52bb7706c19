"""The shot detector: hard cuts and gradual transitions in a stream of frame signatures.

It knows nothing of containers or decoders. Like PySceneDetect's detectors it is fed frames
in presentation order, here as small signatures (see `SIGNATURE_W`) keyed by timestamp, and
told where a run of consecutive frames ends; it then holds the cuts it found. The keyframes
stage decides which frames to decode and feeds them in; a test can feed signatures by hand.

Flashes are told apart first: a large step that the picture comes back across within a few
frames (a muzzle flash, an explosion lighting the scene, a dark or dropped frame, a jolt of
the camera) is no cut, since the picture after it is the shot before it. Hard cuts are then
found like PySceneDetect's adaptive detector (a frame-to-frame difference far above the mean
of its neighbours); gradual transitions (fades, dissolves) as a half second whose change
stands out from the half seconds around it and whose middle frames are a linear mix of its
two ends, which camera motion is not. Memory stays bounded for any length: signatures are
kept for a bounded window.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt

#: A frame's signature: luma blocks of `SIGNATURE_W` x `SIGNATURE_H` (row by row), then the
#: two chroma planes at half that size each, all 0-255.
Signature = npt.NDArray[np.uint8]
#: A change between two decoded frames and how many video frames apart they are.
Step = tuple[float, float]
_F32 = npt.NDArray[np.float32]

#: Signature size: 64x36 luma (16:9 blocks) plus 32x18 per chroma plane. Large enough that a
#: cut between two shots of similar brightness still differs, small enough (3,456 bytes) to
#: keep thousands in memory and to compare in microseconds.
SIGNATURE_W, SIGNATURE_H = 64, 36
#: The luma blocks at the start of a signature: what the black test looks at.
LUMA_BLOCKS = SIGNATURE_W * SIGNATURE_H
#: Luma level (0-255 signature scale) under which a frame counts as black, and the spread of
#: its luma blocks under which it counts as one flat colour (white, grey): a fade's far end.
_BLACK_LUMA = 32.0
_FLAT_SPREAD = 6.0
#: A gradual transition's middle, by its position on the line between its ends: the frames
#: whose residual says whether it is a mix (its ends are close to the ends by definition).
_MIDDLE = (0.2, 0.8)
#: Signatures kept before a run is analysed in pieces (about 14 MB), and the context kept on
#: both sides of a piece so that transitions across its edges are whole.
_CHUNK_FRAMES = 4096
_CONTEXT_FRAMES = 150


@dataclass(frozen=True)
class CutRules:
    """What counts as a cut; scores are mean absolute differences of 0-255 signatures.

    `cut_ratio`, `cut_window`, `min_cut_score`: the adaptive hard-cut rule (PySceneDetect's
    adaptive defaults are 3.0, 2 and 15 on its HSV scale). `flash_s`, `flash_ratio`: a large
    step is a flash's when a frame before it and a frame after it, at most `flash_s` apart,
    differ by at most `flash_ratio` times the step (the flashes of the tune half of
    `pipelines.samples.motion_clips` come back within 0.3 of their step, in shaky footage).
    `gradual_score`, `gradual_s`: a gradual transition changes the picture by at least
    `gradual_score` over `gradual_s` seconds; `gradual_contrast`: by at least this many times
    what the windows as long just before and after it change (camera motion keeps changing
    the picture as much); `gradual_residual`: its middle frames lie within this (relative)
    of a linear mix of its ends. Both were chosen on that tune half: every pair from 1.3-1.7
    and 0.25-0.35 finds all its cuts and nothing else, and the middle was taken.
    `min_shot_s`: cuts closer than this keep only the stronger one.
    """

    cut_ratio: float = 3.0
    cut_window: int = 2
    min_cut_score: float = 8.0
    flash_s: float = 0.12
    flash_ratio: float = 0.5
    gradual_score: float = 12.0
    gradual_s: float = 0.5
    gradual_contrast: float = 1.5
    gradual_residual: float = 0.3
    min_shot_s: float = 0.4


@dataclass(frozen=True)
class Cut:
    """A cut at a frame (by timestamp in the detector, by frame index after); fades note
    flat ends (black, white, one colour)."""

    index: int
    kind: str
    score: float
    to_flat: bool = False
    from_flat: bool = False
    #: A gradual transition's first and last frame; for a hard cut, the decoded frame before
    #: it (pass 2 skips B-frames, so the cut may lie anywhere after it) and the cut frame.
    first: int = 0
    last: int = 0


def difference(first: Signature, second: Signature) -> float:
    """How much two signatures differ: the mean absolute difference of their blocks."""
    return float(np.abs(first.astype(np.int16) - second.astype(np.int16)).mean())


def is_hard_cut(step: Step, neighbours: Sequence[Step], rules: CutRules) -> bool:
    """The adaptive hard-cut rule for one change between decoded frames: at least
    `min_cut_score`, and `cut_ratio` times the mean change of its neighbours (up to
    `cut_window` on each side), each scaled to as many video frames as this one spans.

    Where B-frames are skipped, decoded frames are one to four frames apart, and camera
    motion or a fade changes the picture more over four frames than over one: unscaled, a
    short fade decoded as one long step and three short ones looks like a cut. Shared with
    the keyframes stage, which applies it while decoding to know that a stretch it decodes
    holds a cut before the run reaches the detector.
    """
    score, frames = step
    if score < rules.min_cut_score:
        return False
    if not neighbours:
        return True
    scaled = [change * frames / max(other, 1.0) for change, other in neighbours]
    return score >= rules.cut_ratio * max(sum(scaled) / len(scaled), 1e-3)


def _distance(first: _F32, second: _F32) -> float:
    return float(np.abs(first - second).mean())


def _steps(signatures: _F32) -> _F32:
    """The change into each frame from the one before (0 for the first)."""
    steps = np.zeros(len(signatures), dtype=np.float32)
    if len(signatures) > 1:
        steps[1:] = np.abs(np.diff(signatures, axis=0)).mean(axis=1)
    return steps


@dataclass
class ShotDetector:
    """Finds cuts in runs of consecutive frames, in bounded memory.

    Frames arrive in presentation order with their timestamp (`add`); `end_run()` says the
    next frame does not follow on (a stretch the keyframes showed to be unchanged lies
    between), so no cut is ever placed across it. `cuts` holds what the runs ended so far
    found, by timestamp. A run is analysed in pieces of `_CHUNK_FRAMES` with
    `_CONTEXT_FRAMES` of overlap, so a 10-hour stretch of fast motion needs no more memory
    than a minute of it.
    """

    rules: CutRules
    fps: float
    #: Timestamp ticks per frame: with B-frames skipped, decoded frames are sparser than the
    #: video's, and the gradual window must still span `gradual_s`.
    frame_ticks: float
    cuts: list[Cut] = field(default_factory=list, init=False)
    _indices: list[int] = field(default_factory=list, init=False)
    _signatures: list[Signature] = field(default_factory=list, init=False)
    _accept_from: int = field(default=0, init=False)

    def add(self, pts: int, signature: Signature) -> None:
        """The next frame of the current run; a full window is analysed at once, keeping
        context on both sides so no transition is cut in two."""
        self._indices.append(pts)
        self._signatures.append(signature)
        if len(self._indices) >= _CHUNK_FRAMES + _CONTEXT_FRAMES:
            self._analyse(final=False)

    def end_run(self) -> None:
        """The run ended: analyse what is left of it; the next frame starts a new run."""
        if self._indices:
            self._analyse(final=True)
        self._indices, self._signatures, self._accept_from = [], [], 0

    def _analyse(self, *, final: bool) -> None:
        count = len(self._indices)
        accept_to = count if final else count - _CONTEXT_FRAMES
        signatures = np.stack(self._signatures).astype(np.float32)
        for cut in self._find(signatures):
            if self._accept_from <= cut.index < accept_to:
                self.cuts.append(
                    Cut(
                        self._indices[cut.index],
                        cut.kind,
                        cut.score,
                        cut.to_flat,
                        cut.from_flat,
                        self._indices[cut.first],
                        self._indices[cut.last],
                    )
                )
        if not final:
            keep_from = accept_to - _CONTEXT_FRAMES
            self._indices = self._indices[keep_from:]
            self._signatures = self._signatures[keep_from:]
            self._accept_from = _CONTEXT_FRAMES

    def _find(self, signatures: _F32) -> list[Cut]:
        """Cuts by position in `signatures`: hard cuts, then gradual ones between them.

        The steps into and out of a flash are no hard cut (`_bridges`), and the frames a
        flash bridges over are left out when looking for gradual transitions, so that no
        window starts or ends on one. In a strobe that is every frame of it: B-frames skipped,
        half the decoded frames may be flashes, and no rule tells which half. The hard-cut
        rule still weighs each step against the real steps around it: a jolt of handheld
        shake that comes back counts as a flash, and the shake around it must not look calm.
        """
        # Positions in video frames, and the frames between decoded neighbours, which the
        # hard-cut rule weighs steps by.
        frames = np.asarray(self._indices, dtype=np.float64) / self.frame_ticks
        gaps = np.ones(len(signatures), dtype=np.float32)
        gaps[1:] = np.maximum(np.diff(frames), 1.0)
        steps = _steps(signatures)
        bridges = _bridges(signatures, steps, flash_frames(self.rules, self.fps), self.rules)
        luma = signatures[:, :LUMA_BLOCKS]
        flat = (luma.mean(axis=1) < _BLACK_LUMA) | (luma.std(axis=1) < _FLAT_SPREAD)
        hard = [cut for cut in self._hard_cuts(steps, gaps, flat) if cut.index not in bridges]
        if not bridges:
            hard_at = {cut.index for cut in hard}
            return hard + self._gradual_cuts(signatures, frames, flat, hard_at)
        kept = np.ones(len(signatures), dtype=bool)
        for before, after in bridges.values():
            kept[before + 1 : after] = False
        at = np.flatnonzero(kept)
        # A hard cut next to a flash is kept at the first frame kept after it.
        hard_at = {int(np.searchsorted(at, cut.index)) for cut in hard}
        gradual = self._gradual_cuts(signatures[at], frames[at], flat[at], hard_at)
        return hard + [
            replace(cut, index=int(at[cut.index]), first=int(at[cut.first]), last=int(at[cut.last]))
            for cut in gradual
        ]

    def _hard_cuts(self, steps: _F32, gaps: _F32, flat: npt.NDArray[np.bool_]) -> list[Cut]:
        rules, cuts = self.rules, []
        window = rules.cut_window
        for position in np.flatnonzero(steps >= rules.min_cut_score).tolist():
            neighbours = [
                (float(steps[other]), float(gaps[other]))
                for other in range(
                    max(1, position - window), min(len(steps), position + window + 1)
                )
                if other != position
            ]
            score = float(steps[position])
            if is_hard_cut((score, float(gaps[position])), neighbours, rules):
                cuts.append(
                    Cut(
                        position,
                        "hard",
                        score,
                        # Where B-frames are skipped, a short fade may be one step to a
                        # frame not quite flat yet, the flat one coming a frame or two on.
                        to_flat=bool(flat[position : position + window + 1].any()),
                        from_flat=bool(flat[max(position - 1 - window, 0) : position].any()),
                        first=position - 1,
                        last=position,
                    )
                )
        return cuts

    def _gradual_cuts(
        self,
        signatures: _F32,
        frames: npt.NDArray[np.float64],
        flat: npt.NDArray[np.bool_],
        hard: set[int],
    ) -> list[Cut]:
        """Fades and dissolves: a big change over `span` frames that is a transition.

        Windows are tried from the largest change down and kept when `_is_transition` says
        so; each is then grown to where the picture stops changing (`_extent`), and the
        transition placed where the mix crosses half way.
        """
        rules = self.rules
        ticks = (self._indices[-1] - self._indices[0]) / max(len(self._indices) - 1, 1)
        span = max(3, round(rules.gradual_s / max(ticks / self.frame_ticks, 1.0) * self.fps))
        if len(signatures) <= span:
            return []
        change = np.abs(signatures[span:] - signatures[:-span]).mean(axis=1)
        hard_prefix = np.concatenate([[0], np.cumsum([i in hard for i in range(len(signatures))])])
        cuts: list[Cut] = []
        order = np.argsort(-change)
        taken = np.zeros(len(signatures), dtype=bool)
        for offset in order:
            score = float(change[offset])
            if score < rules.gradual_score:
                break
            start, end = int(offset), int(offset) + span
            if taken[start + 1 : end].any() or hard_prefix[end + 1] - hard_prefix[start + 1]:
                continue
            if flat[start] and flat[end]:
                continue  # from a flat picture to another: the end of a fade, not a new shot
            # The windows a span before and after, where no cut lies in them and the
            # window's end there is no flat picture (beyond it lies the next fade or a cut).
            around = [
                float(change[side])
                for side, ok in ((start - span, not flat[start]), (end, not flat[end]))
                if ok
                and 0 <= side < len(change)
                and hard_prefix[side + span + 1] == hard_prefix[side + 1]
            ]
            if not self._is_transition(signatures[start : end + 1], score, around):
                continue
            start, end = _extent(signatures, frames, (start, end), span, hard, flat)
            # Only the inside is taken: a fade in may start on the frame a fade out ended on.
            taken[start + 1 : end] = True
            cuts.append(
                Cut(
                    start + _half_way(signatures[start : end + 1]),
                    "gradual",
                    score,
                    to_flat=bool(flat[end]),
                    from_flat=bool(flat[start]),
                    first=start,
                    last=end,
                )
            )
        return cuts

    def _is_transition(self, frames: _F32, change: float, around: list[float]) -> bool:
        """Whether `frames` (a window of `gradual_s`, changing by `change` end to end) are a
        fade or dissolve, not camera motion; `around` holds the changes of the windows just
        before and after it.

        Two tests, the cheap one first. The change must be `gradual_contrast` times that of
        the windows around it: a zoom, pan or shake keeps changing the picture as much in
        every half second, while a transition stands out from the shots it joins, moving or
        not (their own motion slows down inside a dissolve, as each fades, so the pace frame
        by frame does not show it). Then the middle frames must be a linear mix of the two
        ends, which a whip pan's blur or a sudden jolt is not; the frames near the ends are
        close to the line because they are close to the ends, so only the middle is judged.
        """
        rules = self.rules
        if around and change < rules.gradual_contrast * max(around):
            return False
        direction = frames[-1] - frames[0]
        norm = float(direction @ direction)
        if norm <= 0:
            return False
        offsets = frames - frames[0]
        alpha = offsets @ direction / norm
        middle = (alpha > _MIDDLE[0]) & (alpha < _MIDDLE[1])
        if not middle.any() or not bool(np.all(np.diff(alpha) > -0.15)):
            return False
        residual = np.linalg.norm(offsets[middle] - np.outer(alpha[middle], direction), axis=1)
        return float(np.median(residual)) / math.sqrt(norm) <= rules.gradual_residual


def _half_way(frames: _F32) -> int:
    """The first frame at least half way from the first frame to the last (the mix's middle)."""
    direction = frames[-1] - frames[0]
    alpha = (frames - frames[0]) @ direction / max(float(direction @ direction), 1e-6)
    return int(np.argmax(alpha >= 0.5))


def _extent(
    signatures: _F32,
    frames: npt.NDArray[np.float64],
    window: tuple[int, int],
    span: int,
    hard: set[int],
    flat: npt.NDArray[np.bool_],
) -> tuple[int, int]:
    """A transition window grown to the whole transition (at most 4 spans); `frames` gives
    each signature's position in video frames.

    The window that changed most is any stretch inside a longer dissolve: the frames beyond
    it carry on along the line from its first frame to its last, at least half as fast
    (per video frame) as inside it, while the shots around it, moving or not, do not. Growing
    while they do finds the whole transition, whose middle is the cut. A hard cut or a flat
    frame (black, white) ends it: growing past a flat frame would join the fade in that
    follows.
    """
    start, end = window
    origin = signatures[start]
    direction = signatures[end] - origin
    norm = float(direction @ direction)
    if norm <= 0:
        return window
    # Half the window's progress per video frame.
    rate = 0.5 / max(float(frames[end] - frames[start]), 1.0)
    limit = 4 * span
    low, high = 0.0, 1.0
    while start > 0 and end - start < limit and start not in hard and not flat[start]:
        before = float((signatures[start - 1] - origin) @ direction) / norm
        if before > low - rate * float(frames[start] - frames[start - 1]):
            break
        start, low = start - 1, before
    while end + 1 < len(signatures) and end - start < limit and end + 1 not in hard:
        after = float((signatures[end + 1] - origin) @ direction) / norm
        if flat[end] or after < high + rate * float(frames[end + 1] - frames[end]):
            break
        end, high = end + 1, after
    return start, end


def merge_cuts(cuts: list[Cut], seconds: Callable[[int], float], rules: CutRules) -> list[Cut]:
    """Sorted cuts with near neighbours merged: a fade out and back in is one transition.

    `seconds` gives a cut's time from its `index`. Two cuts closer than `min_shot_s` keep the
    stronger, except that a pair around a flat stretch (to black or white, then from it)
    becomes one cut in the middle: a flat picture is no shot. It is gradual unless both were
    hard (a cut to black frames and a cut from them).
    """
    merged: list[Cut] = []
    for cut in sorted(cuts, key=lambda c: c.index):
        if merged:
            previous = merged[-1]
            gap_s = seconds(cut.index) - seconds(previous.index)
            if previous.to_flat and cut.from_flat and gap_s <= rules.gradual_s * 6:
                merged[-1] = Cut(
                    (previous.first + cut.last) // 2,
                    "hard" if previous.kind == cut.kind == "hard" else "gradual",
                    max(previous.score, cut.score),
                    first=previous.first,
                    last=cut.last,
                )
                continue
            if gap_s < rules.min_shot_s:
                if cut.score > previous.score:
                    merged[-1] = cut
                continue
        merged.append(cut)
    return merged


def flash_frames(rules: CutRules, fps: float) -> int:
    """The most consecutive decoded frames a flash may be: `flash_s` at `fps`.

    Counted in decoded frames, not video frames: where B-frames are skipped, a flash of a
    few frames may be two or three decoded ones apart, and a longer blip that comes back to
    the same picture is no cut either.
    """
    return max(1, math.ceil(rules.flash_s * fps))


def flash_steps(signatures: Sequence[Signature] | _F32, rules: CutRules, longest: int) -> set[int]:
    """Positions (into `signatures`) whose step in is the step into or out of a flash.

    Shared with the keyframes stage, which must not take a flash for the cut that lets it
    stop decoding a stretch early; see `_bridges`.
    """
    frames = np.asarray(signatures, dtype=np.float32)
    return set(_bridges(frames, _steps(frames), longest, rules))


def _bridges(
    signatures: _F32, steps: _F32, longest: int, rules: CutRules
) -> dict[int, tuple[int, int]]:
    """The flash steps, each with a pair of frames on either side of it that look alike.

    A large step is a flash's when the picture comes back across it: some frame before it
    and some frame after it, at most `longest` frames apart in between, differ by at most
    `flash_ratio` times the step. A cut has no way back to the old picture; a flash (a muzzle
    flash, an explosion lighting the scene, a dark or dropped frame) or a jolt of the camera
    does. Both the step into a flash and the step out of it are found so, and every step of
    a strobe, whichever of its frames are the flashes. Only steps that could be a cut are
    looked at, so a calm video costs almost nothing here.
    """
    found: dict[int, tuple[int, int]] = {}
    for step in np.flatnonzero(steps >= rules.min_cut_score).tolist():
        limit = rules.flash_ratio * float(steps[step])
        pairs = (
            (before, after)
            for before in range(step - 1, max(step - 2 - longest, -1), -1)
            for after in range(step, min(before + longest + 1, len(signatures) - 1) + 1)
            if (before, after) != (step - 1, step)
        )
        bridge = next(
            (
                (one, other)
                for one, other in pairs
                if _distance(signatures[one], signatures[other]) <= limit
            ),
            None,
        )
        if bridge is not None:
            found[step] = bridge
    return found
