"""The shot detector: hard cuts and gradual transitions in a stream of frame signatures.

It knows nothing of containers or decoders. Like PySceneDetect's detectors it is fed frames
in presentation order, here as small signatures (see `SIGNATURE_W`) keyed by timestamp, and
told where a run of consecutive frames ends; it then holds the cuts it found. The keyframes
stage decides which frames to decode and feeds them in; a test can feed signatures by hand.

Hard cuts are found like PySceneDetect's adaptive detector (a frame-to-frame difference far
above the mean of its neighbours); gradual transitions (fades, dissolves) as a large change
over half a second whose intermediate frames are a linear mix of its two ends, which camera
motion is not. Memory stays bounded for any length: signatures are kept for a bounded window.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

#: A frame's signature: luma blocks of `SIGNATURE_W` x `SIGNATURE_H` (row by row), then the
#: two chroma planes at half that size each, all 0-255.
Signature = npt.NDArray[np.uint8]
_F32 = npt.NDArray[np.float32]

#: Signature size: 64x36 luma (16:9 blocks) plus 32x18 per chroma plane. Large enough that a
#: cut between two shots of similar brightness still differs, small enough (3,456 bytes) to
#: keep thousands in memory and to compare in microseconds.
SIGNATURE_W, SIGNATURE_H = 64, 36
#: The luma blocks at the start of a signature: what the black test looks at.
LUMA_BLOCKS = SIGNATURE_W * SIGNATURE_H
#: Luma level (0-255 signature scale) under which a frame counts as black, for fades.
_BLACK_LUMA = 32.0
#: Signatures kept before a run is analysed in pieces (about 14 MB), and the context kept on
#: both sides of a piece so that transitions across its edges are whole.
_CHUNK_FRAMES = 4096
_CONTEXT_FRAMES = 150


@dataclass(frozen=True)
class CutRules:
    """What counts as a cut; scores are mean absolute differences of 0-255 signatures.

    `cut_ratio`, `cut_window`, `min_cut_score`: the adaptive hard-cut rule (PySceneDetect's
    adaptive defaults are 3.0, 2 and 15 on its HSV scale). `gradual_score`, `gradual_s`,
    `gradual_residual`: a gradual transition changes the picture by at least `gradual_score`
    over `gradual_s` seconds with intermediate frames within `gradual_residual` (relative) of
    a linear mix of the ends. `min_shot_s`: cuts closer than this keep only the stronger one.
    """

    cut_ratio: float = 3.0
    cut_window: int = 2
    min_cut_score: float = 8.0
    gradual_score: float = 12.0
    gradual_s: float = 0.5
    gradual_residual: float = 0.3
    min_shot_s: float = 0.4


@dataclass(frozen=True)
class Cut:
    """A cut at a frame (by timestamp in the detector, by frame index after); fades note
    black ends."""

    index: int
    kind: str
    score: float
    to_black: bool = False
    from_black: bool = False
    #: A gradual transition's first and last frame; for a hard cut, the decoded frame before
    #: it (pass 2 skips B-frames, so the cut may lie anywhere after it) and the cut frame.
    first: int = 0
    last: int = 0


def difference(first: Signature, second: Signature) -> float:
    """How much two signatures differ: the mean absolute difference of their blocks."""
    return float(np.abs(first.astype(np.int16) - second.astype(np.int16)).mean())


def is_hard_cut(score: float, neighbours: Sequence[float], rules: CutRules) -> bool:
    """The adaptive hard-cut rule for one frame-to-frame change: at least `min_cut_score`, and
    `cut_ratio` times the mean change of its neighbours (up to `cut_window` on each side).

    Shared with the keyframes stage, which applies it while decoding to know that a stretch
    it decodes holds a cut before the run reaches the detector.
    """
    if score < rules.min_cut_score:
        return False
    if not neighbours:
        return True
    return score >= rules.cut_ratio * max(sum(neighbours) / len(neighbours), 1e-3)


def _is_black(signature: Signature | _F32) -> bool:
    return float(signature[:LUMA_BLOCKS].mean()) < _BLACK_LUMA


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
                        cut.to_black,
                        cut.from_black,
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
        """Cuts by position in `signatures`: hard cuts first, then gradual ones between them."""
        steps = np.zeros(len(signatures), dtype=np.float32)
        if len(signatures) > 1:
            steps[1:] = np.abs(np.diff(signatures, axis=0)).mean(axis=1)
        hard = self._hard_cuts(steps)
        # Frames between neighbours, to measure a gradual change per frame, not per step.
        pts = np.asarray(self._indices, dtype=np.float64)
        gaps = np.ones(len(signatures), dtype=np.float32)
        gaps[1:] = np.maximum(np.diff(pts) / self.frame_ticks, 1.0)
        return hard + self._gradual_cuts(signatures, steps, gaps, {cut.index for cut in hard})

    def _hard_cuts(self, steps: _F32) -> list[Cut]:
        rules, cuts = self.rules, []
        window = rules.cut_window
        for position in range(1, len(steps)):
            score = float(steps[position])
            if score < rules.min_cut_score:
                continue
            neighbours = [
                float(steps[other])
                for other in range(
                    max(1, position - window), min(len(steps), position + window + 1)
                )
                if other != position
            ]
            if is_hard_cut(score, neighbours, rules):
                cuts.append(Cut(position, "hard", score, first=position - 1, last=position))
        return cuts

    def _gradual_cuts(self, signatures: _F32, steps: _F32, gaps: _F32, hard: set[int]) -> list[Cut]:
        """Fades and dissolves: a big change over `span` frames that is a linear mix.

        For each candidate end `b` with start `a = b - span`, the frames between are projected
        onto the line from `a` to `b`: a dissolve or fade moves along it (position rising from
        0 to 1, small residual), camera motion and action leave it. The transition is placed
        where the mix crosses half way.
        """
        rules = self.rules
        ticks = (self._indices[-1] - self._indices[0]) / max(len(self._indices) - 1, 1)
        span = max(3, round(rules.gradual_s / max(ticks / self.frame_ticks, 1.0) * self.fps))
        if len(signatures) <= span:
            return []
        change = np.abs(signatures[span:] - signatures[:-span]).mean(axis=1)
        hard_prefix = np.concatenate([[0], np.cumsum([i in hard for i in range(len(steps))])])
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
            if not self._linear_mix(signatures[start : end + 1]):
                continue
            start, end = _extent(steps / gaps, start, end, span, hard)
            # Only the inside is taken: a fade in may start on the frame a fade out ended on.
            taken[start + 1 : end] = True
            cuts.append(
                Cut(
                    start + _half_way(signatures[start : end + 1]),
                    "gradual",
                    score,
                    to_black=_is_black(signatures[end]),
                    from_black=_is_black(signatures[start]),
                    first=start,
                    last=end,
                )
            )
        return cuts

    def _linear_mix(self, frames: _F32) -> bool:
        """Whether the frames move steadily along the line from the first to the last."""
        first, last = frames[0], frames[-1]
        direction = last - first
        norm = float(direction @ direction)
        if norm <= 0:
            return False
        offsets = frames - first
        alpha = offsets @ direction / norm
        residual = np.linalg.norm(offsets - np.outer(alpha, direction), axis=1) / math.sqrt(norm)
        rising = bool(np.all(np.diff(alpha) > -0.15))
        return rising and float(np.median(residual[1:-1])) <= self.rules.gradual_residual


def _half_way(frames: _F32) -> int:
    """The first frame at least half way from the first frame to the last (the mix's middle)."""
    direction = frames[-1] - frames[0]
    alpha = (frames - frames[0]) @ direction / max(float(direction @ direction), 1e-6)
    return int(np.argmax(alpha >= 0.5))


def _extent(steps: _F32, start: int, end: int, span: int, hard: set[int]) -> tuple[int, int]:
    """A transition window grown to where the picture stops changing (at most 4 spans).

    The window that changed most is any stretch inside a longer dissolve; growing it while
    frames still change at half its pace finds the whole transition, whose middle is the cut.
    """
    pace = float(steps[start + 1 : end + 1].mean()) / 2
    limit = 4 * span
    while start > 0 and end - start < limit and steps[start] > pace and start not in hard:
        start -= 1
    while (
        end + 1 < len(steps)
        and end - start < limit
        and steps[end + 1] > pace
        and end + 1 not in hard
    ):
        end += 1
    return start, end


def merge_cuts(cuts: list[Cut], seconds: Callable[[int], float], rules: CutRules) -> list[Cut]:
    """Sorted cuts with near neighbours merged: a fade out and back in is one transition.

    `seconds` gives a cut's time from its `index`. Two cuts closer than `min_shot_s` keep the
    stronger, except that a gradual pair around a stretch of black (fade to black, then from
    black) becomes one gradual cut in the middle.
    """
    merged: list[Cut] = []
    for cut in sorted(cuts, key=lambda c: c.index):
        if merged:
            previous = merged[-1]
            gap_s = seconds(cut.index) - seconds(previous.index)
            if previous.to_black and cut.from_black and gap_s <= rules.gradual_s * 6:
                middle = (previous.first + cut.last) // 2
                merged[-1] = Cut(
                    middle,
                    "gradual",
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
