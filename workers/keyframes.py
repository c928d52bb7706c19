"""The keyframes stage: a video's shots, and one sharp representative frame per shot.

Analysts scan keyframes instead of watching millions of videos, so this stage must never be
the bottleneck of a backlog. Decoding every frame at full resolution is what makes shot
detectors slow; this one decodes as little as it can:

1. **Index and keyframes** (one demux pass): every packet's timestamp and size is read
   without decoding (exact frame count and presentation times, right for variable frame
   rate), and only keyframes are decoded, each shrunk to a tiny YUV signature.
2. **Refine** (a second demux pass): only where two neighbouring keyframes differ more than
   their neighbours do, or a packet between them is suspiciously large (an encoder coding a
   cut as a big P-frame), is that stretch decoded, B-frames and loop filter skipped, still
   at signature size. A keyframe the encoder placed early because the scene changed is
   taken as the cut without decoding. Cuts that fall among skipped B-frames are placed on
   their exact frame by decoding that GOP once more, whole. All-intra streams (MJPEG,
   ProRes) have nothing to skip and are decoded once, fully, at signature size.
3. **Extract** only the chosen frames at full resolution, with rotation and aspect applied.

On 60 s of 1080p H.264 (lavfi shots, 11 cuts; 2 vCPU, loaded) this took 0.42-0.47x the
time of `ffmpeg -threads 2 -i CLIP -f null -` both for x264 defaults and for a phone-like
encoding (1 s GOP, no B-frames, no scene-cut keyframes), with every cut on its exact frame.

Hard cuts are found like PySceneDetect's adaptive detector (a frame-to-frame difference far
above the mean of its neighbours); gradual transitions (fades, dissolves) as a large change
over half a second whose intermediate frames are a linear mix of its two ends, which camera
motion is not. Memory stays bounded for any length: signatures are kept for a bounded
window, and per frame only a few numbers.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from array import array
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from functools import cache
from pathlib import Path
from typing import Any, ClassVar

import av
import av.codec.hwaccel
import numpy as np
import numpy.typing as npt

from workers.base import (
    CPU_NODE,
    ArtifactFile,
    FailureReason,
    Kind,
    Resources,
    Stage,
    StageConfig,
    StageError,
    StageInput,
    StageOutput,
)
from workers.video import (
    DecodeCounts,
    budgeted_counts,
    decoder_versions,
    display_image,
    frames_of,
    hwaccel_for,
    open_container,
    packet_pts,
    rotation_of,
    video_stream,
)

U8 = npt.NDArray[np.uint8]
F32 = npt.NDArray[np.float32]

#: Signature size: 64x36 luma (16:9 blocks) plus 32x18 per chroma plane. Large enough that a
#: cut between two shots of similar brightness still differs, small enough (3,456 bytes) to
#: keep thousands in memory and to compare in microseconds.
_SIG_W, _SIG_H = 64, 36
#: Samples per signature block side: 4x4 = 16 samples averaged per block, which divides
#: sensor and compression noise by 4 at almost no cost (no full-plane scaling).
_SIG_SUB = 4
#: Width of the grey image sharpness is measured on; full 4K would cost 40x more and rank
#: frames the same way.
_SHARP_W = 320
#: Signatures kept before a refined stretch is analysed in pieces (about 14 MB), and the
#: context kept on both sides of a piece so that transitions across its edges are whole.
_CHUNK_FRAMES = 4096
_CONTEXT_FRAMES = 150
#: Extracting a frame that is no keyframe means decoding its GOP up to it again; it must be
#: this much sharper than the shot's sharpest keyframe to be worth that.
_NON_KEY_PENALTY = 1.5
#: Luma level (0-255 signature scale) under which a frame counts as black, for fades.
_BLACK_LUMA = 32.0


@dataclass(frozen=True)
class KeyframesConfig(StageConfig):
    """Options of the keyframes stage; scores are mean absolute differences of 0-255 signatures.

    `interval_s`: a long shot gets one frame per interval. `max_frames`: the cap per video, so
    a 10-hour recording does not become 20,000 images. `hwaccel`: "auto" decodes with NVDEC
    where FFmpeg has CUDA and a GPU exists, "cuda" asks for it, "none" never uses it.

    `keyframe_diff`: neighbouring keyframes differing more than this have their stretch
    decoded fully; low on purpose, a miss here is a missed cut while a false alarm only costs
    decode time. `packet_spike`: a non-key packet this many times the median of its stretch
    (and at least a third of its keyframe) is treated like a differing keyframe pair.
    `keyframe_ratio`: ...and at least this many times the median change of the two
    keyframe pairs on each side: in a moving shot every pair of keyframes a second apart
    differs, while a cut still stands out from its neighbours (measured on 1 s GOPs: pairs
    across cuts 31-83, within moving shots up to 23, never above 1.2x their neighbours).
    `keyframe_cut`: a change this large is doubtful whatever its neighbours, for videos cut
    so often that the neighbours of a cut are cuts too.
    `max_blind_gap_s`: stretches longer than this are always decoded.

    `cut_ratio`, `cut_window`, `min_cut_score`: the adaptive hard-cut rule (PySceneDetect's
    adaptive defaults are 3.0, 2 and 15 on its HSV scale). `gradual_score`, `gradual_s`,
    `gradual_residual`: a gradual transition changes the picture by at least `gradual_score`
    over `gradual_s` seconds with intermediate frames within `gradual_residual` (relative) of
    a linear mix of the ends. `min_shot_s`: cuts closer than this keep only the stronger one.
    """

    interval_s: float = 30.0
    max_frames: int = 200
    jpeg_quality: int = 90
    hwaccel: str = "auto"
    keyframe_diff: float = 3.0
    keyframe_ratio: float = 1.5
    keyframe_cut: float = 25.0
    packet_spike: float = 4.0
    max_blind_gap_s: float = 20.0
    cut_ratio: float = 3.0
    cut_window: int = 2
    min_cut_score: float = 8.0
    gradual_score: float = 12.0
    gradual_s: float = 0.5
    gradual_residual: float = 0.3
    min_shot_s: float = 0.4
    #: Time budget: at least `min_budget_s`, else `budget_per_media_s` seconds per second of
    #: video. Measured at about 11x real time on 1080p here, so 0.5 leaves a 5x margin.
    min_budget_s: float = 120.0
    budget_per_media_s: float = 0.5


@dataclass(frozen=True)
class KeyframesResult:
    """Shots, their representative frames, and the cuts between them; times in seconds.

    Times are presentation times from the first frame of the video stream (what a player's
    timeline shows), so they are right for variable frame rate. Each frame's `artifact` is the
    SHA-256 of its JPEG, the key the store files it under. `frames_decoded` against
    `frames_total` shows how much decoding the keyframe-first passes saved.
    """

    shots: list[dict[str, float]]
    frames: list[dict[str, Any]]
    cuts: list[dict[str, Any]]
    duration_s: float
    frames_decoded: int
    frames_total: int
    corrupt_frames: int
    flags: list[str]
    decoder: str


@dataclass
class _Index:
    """Every frame's presentation timestamp in order, and each packet's size; no pixels.

    `pts` is sorted, so a frame's index is its position. Keyframes are kept by index.
    """

    pts: npt.NDArray[np.int64]
    sizes: npt.NDArray[np.int64]
    keys: npt.NDArray[np.int64]
    time_base: Fraction
    end_pts: int

    def seconds(self, index: int) -> float:
        return float((int(self.pts[index]) - int(self.pts[0])) * self.time_base)

    def position(self, pts: int) -> int:
        """The frame index of a decoded frame's pts, or -1 when the index has no such frame."""
        at = int(np.searchsorted(self.pts, pts))
        return at if at < len(self.pts) and int(self.pts[at]) == pts else -1


@cache
def _grid(size: int, cells: int) -> npt.NDArray[np.intp]:
    """Sample positions spread evenly over `size`, `_SIG_SUB` per cell (cached per shape)."""
    samples = cells * _SIG_SUB
    return ((np.arange(samples) * 2 + 1) * size // (2 * samples)).astype(np.intp)


def _plane(frame: av.VideoFrame, index: int, width: int, height: int) -> U8:
    """A plane as a 2-D view of its bytes, without the padding at each line's end."""
    plane = frame.planes[index]
    rows: U8 = np.frombuffer(memoryview(plane), np.uint8).reshape(plane.height, plane.line_size)
    return rows[:height, :width]


def _pool(plane: U8, cells_w: int, cells_h: int) -> U8:
    sub = plane[np.ix_(_grid(plane.shape[0], cells_h), _grid(plane.shape[1], cells_w))]
    blocks = sub.reshape(cells_h, _SIG_SUB, cells_w, _SIG_SUB).mean(axis=(1, 3))
    pooled: U8 = blocks.astype(np.uint8)
    return pooled


def _laplacian_variance(grey: U8) -> float:
    image = grey.astype(np.float32)
    laplacian = (
        4 * image[1:-1, 1:-1]
        - image[:-2, 1:-1]
        - image[2:, 1:-1]
        - image[1:-1, :-2]
        - image[1:-1, 2:]
    )
    return float(laplacian.var()) if laplacian.size else 0.0


def _describe(frame: av.VideoFrame) -> tuple[U8, float]:
    """A frame's signature (Y 64x36, U and V 32x18) and its sharpness.

    8-bit 4:2:0 frames are sampled straight from their planes (no scaling pass over the full
    picture); anything else (10-bit, 4:2:2, NV12 from NVDEC, RGB) goes through swscale once.
    Sharpness is the variance of the Laplacian of a ~320 px wide grey sample: blur and motion
    blur remove exactly the high frequencies it measures.
    """
    if frame.format.name in {"yuv420p", "yuvj420p"} and frame.width >= 2 and frame.height >= 2:
        luma = _plane(frame, 0, frame.width, frame.height)
        chroma_w, chroma_h = (frame.width + 1) // 2, (frame.height + 1) // 2
        u = _plane(frame, 1, chroma_w, chroma_h)
        v = _plane(frame, 2, chroma_w, chroma_h)
    else:
        width = min(frame.width, _SHARP_W)
        height = max(2, round(frame.height * width / max(frame.width, 1)) // 2 * 2)
        small = frame.reformat(width=width, height=height, format="yuv420p")
        luma = _plane(small, 0, width, height)
        u = _plane(small, 1, width // 2, height // 2)
        v = _plane(small, 2, width // 2, height // 2)
    signature = np.concatenate(
        [
            _pool(luma, _SIG_W, _SIG_H).ravel(),
            _pool(u, _SIG_W // 2, _SIG_H // 2).ravel(),
            _pool(v, _SIG_W // 2, _SIG_H // 2).ravel(),
        ]
    )
    step = max(1, luma.shape[1] // _SHARP_W)
    return signature, _laplacian_variance(luma[::step, ::step])


def _difference(first: U8, second: U8) -> float:
    return float(np.abs(first.astype(np.int16) - second.astype(np.int16)).mean())


def _is_black(signature: U8 | F32) -> bool:
    return float(signature[: _SIG_W * _SIG_H].mean()) < _BLACK_LUMA


@dataclass(frozen=True)
class _Cut:
    """A cut at a frame (by pts in the detector, by index after); fades note black ends."""

    index: int
    kind: str
    score: float
    to_black: bool = False
    from_black: bool = False
    #: A gradual transition's first and last frame; for a hard cut, the decoded frame before
    #: it (pass 2 skips B-frames, so the cut may lie anywhere after it) and the cut frame.
    first: int = 0
    last: int = 0


@dataclass
class _Detector:
    """Finds cuts in runs of consecutive decoded frames, in bounded memory.

    Frames arrive in presentation order with their index; `end_run()` says the next frame does
    not follow on (a stretch the keyframes showed to be unchanged lies between). A run is
    analysed in pieces of `_CHUNK_FRAMES` with `_CONTEXT_FRAMES` of overlap, so a 10-hour
    stretch of fast motion needs no more memory than a minute of it.
    """

    config: KeyframesConfig
    fps: float
    #: Timestamp ticks per frame: with B-frames skipped, decoded frames are sparser than the
    #: video's, and the gradual window must still span `gradual_s`.
    frame_ticks: float
    cuts: list[_Cut] = field(default_factory=list)
    _indices: list[int] = field(default_factory=list)
    _signatures: list[U8] = field(default_factory=list)
    _accept_from: int = 0

    def add(self, pts: int, signature: U8) -> None:
        self._indices.append(pts)
        self._signatures.append(signature)
        if len(self._indices) >= _CHUNK_FRAMES + _CONTEXT_FRAMES:
            self._analyse(final=False)

    def end_run(self) -> None:
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
                    _Cut(
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

    def _find(self, signatures: F32) -> list[_Cut]:
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

    def _hard_cuts(self, steps: F32) -> list[_Cut]:
        config, cuts = self.config, []
        window = config.cut_window
        for position in range(1, len(steps)):
            score = float(steps[position])
            if score < config.min_cut_score:
                continue
            neighbours = [
                float(steps[other])
                for other in range(
                    max(1, position - window), min(len(steps), position + window + 1)
                )
                if other != position
            ]
            mean = sum(neighbours) / len(neighbours) if neighbours else 0.0
            if not neighbours or score >= config.cut_ratio * max(mean, 1e-3):
                cuts.append(_Cut(position, "hard", score, first=position - 1, last=position))
        return cuts

    def _gradual_cuts(self, signatures: F32, steps: F32, gaps: F32, hard: set[int]) -> list[_Cut]:
        """Fades and dissolves: a big change over `span` frames that is a linear mix.

        For each candidate end `b` with start `a = b - span`, the frames between are projected
        onto the line from `a` to `b`: a dissolve or fade moves along it (position rising from
        0 to 1, small residual), camera motion and action leave it. The transition is placed
        where the mix crosses half way.
        """
        config = self.config
        ticks = (self._indices[-1] - self._indices[0]) / max(len(self._indices) - 1, 1)
        span = max(3, round(config.gradual_s / max(ticks / self.frame_ticks, 1.0) * self.fps))
        if len(signatures) <= span:
            return []
        change = np.abs(signatures[span:] - signatures[:-span]).mean(axis=1)
        hard_prefix = np.concatenate([[0], np.cumsum([i in hard for i in range(len(steps))])])
        cuts: list[_Cut] = []
        order = np.argsort(-change)
        taken = np.zeros(len(signatures), dtype=bool)
        for offset in order:
            score = float(change[offset])
            if score < config.gradual_score:
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
                _Cut(
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

    def _linear_mix(self, frames: F32) -> bool:
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
        return rising and float(np.median(residual[1:-1])) <= self.config.gradual_residual


def _half_way(frames: F32) -> int:
    """The first frame at least half way from the first frame to the last (the mix's middle)."""
    direction = frames[-1] - frames[0]
    alpha = (frames - frames[0]) @ direction / max(float(direction @ direction), 1e-6)
    return int(np.argmax(alpha >= 0.5))


def _extent(steps: F32, start: int, end: int, span: int, hard: set[int]) -> tuple[int, int]:
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


def _merge_cuts(cuts: list[_Cut], index: _Index, config: KeyframesConfig) -> list[_Cut]:
    """Sorted cuts with near neighbours merged: a fade out and back in is one transition.

    Two cuts closer than `min_shot_s` keep the stronger, except that a gradual pair around a
    stretch of black (fade to black, then from black) becomes one gradual cut in the middle.
    """
    merged: list[_Cut] = []
    for cut in sorted(cuts, key=lambda c: c.index):
        if merged:
            previous = merged[-1]
            gap_s = index.seconds(cut.index) - index.seconds(previous.index)
            if previous.to_black and cut.from_black and gap_s <= config.gradual_s * 6:
                middle = (previous.first + cut.last) // 2
                merged[-1] = _Cut(
                    middle,
                    "gradual",
                    max(previous.score, cut.score),
                    first=previous.first,
                    last=cut.last,
                )
                continue
            if gap_s < config.min_shot_s:
                if cut.score > previous.score:
                    merged[-1] = cut
                continue
        merged.append(cut)
    return merged


@dataclass
class _IndexBuilder:
    """Collects every packet's pts, size and key flag while pass 1 demuxes (no pixels).

    `take` answers whether a packet is decoded in pass 1: keyframes, or all of an
    all-intra stream.
    """

    intra: bool
    pts: array[int] = field(default_factory=lambda: array("q"))
    sizes: array[int] = field(default_factory=lambda: array("q"))
    keys: array[int] = field(default_factory=lambda: array("b"))
    end_pts: int | None = None

    def take(self, packet: av.Packet[Any]) -> bool:
        pts = packet_pts(packet)
        if pts is not None and not packet.is_discard:
            self.pts.append(pts)
            self.sizes.append(packet.size)
            self.keys.append(1 if packet.is_keyframe else 0)
            end = pts + (packet.duration or 0)
            self.end_pts = end if self.end_pts is None else max(self.end_pts, end)
        return self.intra or packet.is_keyframe

    def build(self, time_base: Fraction) -> _Index:
        """The index in presentation order.

        Raises:
            StageError: corrupt_media when the stream held no frame at all.
        """
        if not self.pts:
            raise StageError(FailureReason.CORRUPT_MEDIA, "the video stream holds no frames")
        order = np.argsort(np.asarray(self.pts), kind="stable")
        return _Index(
            pts=np.asarray(self.pts)[order],
            sizes=np.asarray(self.sizes)[order],
            keys=np.flatnonzero(np.asarray(self.keys)[order]).astype(np.int64),
            time_base=time_base,
            end_pts=int(self.end_pts if self.end_pts is not None else self.pts[-1]),
        )


@dataclass
class _Decoded:
    """Per decoded frame, its pts and sharpness: 12 bytes a frame, whatever the length."""

    pts: array[int] = field(default_factory=lambda: array("q"))
    sharpness: array[float] = field(default_factory=lambda: array("f"))

    def add(self, pts: int, sharpness: float) -> None:
        self.pts.append(pts)
        self.sharpness.append(sharpness)


@dataclass(frozen=True)
class _Choice:
    index: int
    shot: int
    sharpness: float


class KeyframesStage(Stage[KeyframesConfig, KeyframesResult]):
    """Shot boundaries and sharp representative frames, decoding as little as possible."""

    name: ClassVar[str] = "keyframes"
    version: ClassVar[str] = "1"
    kinds: ClassVar[frozenset[Kind]] = frozenset({Kind.VIDEO})
    requires: ClassVar[tuple[str, ...]] = ("probe",)
    #: One decoding thread pool per actor; signatures and candidates stay far below 1 GiB.
    resources: ClassVar[Resources] = Resources(num_cpus=1.0, memory_mb=1024, prefers=CPU_NODE)
    batch_size: ClassVar[int] = 1

    def __init__(self, config: KeyframesConfig | None = None) -> None:
        super().__init__(config or KeyframesConfig())

    def tool_versions(self) -> dict[str, str]:
        """PyAV and the FFmpeg it carries decide every decoded pixel."""
        return decoder_versions()

    def run(self, item: StageInput, workdir: Path) -> StageOutput[KeyframesResult]:
        """Find the shots of one video and extract their representative frames as JPEGs.

        Raises:
            StageSkipped: no_video when the container has no video stream.
            StageError: corrupt_media when the container cannot be opened or holds no video
                packets, decode_error when not one frame decodes.
        """
        config = self.config
        hwaccel = hwaccel_for(config.hwaccel)
        duration = item.upstream.get("probe", {}).get("duration_s") or 0.0
        counts = budgeted_counts(float(duration), config.min_budget_s, config.budget_per_media_s)
        decoded = _Decoded()
        with open_container(item.path, hwaccel) as container:
            stream = video_stream(container)
            intra = stream.codec_context.codec.intra_only
            fps = float(stream.guessed_rate or stream.average_rate or 25)
            time_base = stream.time_base or Fraction(1, 90000)
            detector = _Detector(config, fps, float(1 / (fps * time_base)))
            index, key_changes = self._scan(container, stream, counts, decoded, detector, intra)
            decoder = "nvdec" if stream.codec_context.is_hwaccel else "cpu"
        trusted: list[_Cut] = []
        if not intra:
            spans, trusted = self._spans(index, key_changes)
            if spans:
                with open_container(item.path, hwaccel) as container:
                    stream = video_stream(container)
                    self._refine(container, stream, spans, counts, decoded, detector)
        if counts.decoded == 0:
            raise StageError(FailureReason.DECODE_ERROR, "not one video frame decodes")
        found = [
            _Cut(
                position,
                cut.kind,
                cut.score,
                cut.to_black,
                cut.from_black,
                index.position(cut.first),
                index.position(cut.last),
            )
            for cut in detector.cuts
            if (position := index.position(cut.index)) > 0
        ]
        found += trusted
        if any(cut.kind == "hard" and cut.index - cut.first > 1 for cut in found):
            with open_container(item.path, hwaccel) as container:
                stream = video_stream(container)
                found = self._place_exactly(container, stream, index, found, counts)
        cuts = _merge_cuts(found, index, config)
        boundaries = [0, *[cut.index for cut in cuts], len(index.pts)]
        choices, limited = self._choose(index, boundaries, decoded)
        with open_container(item.path, hwaccel) as container:
            stream = video_stream(container)
            rotation = rotation_of(item.upstream.get("probe", {}))
            frames, artifacts = self._extract(
                container, stream, index, choices, rotation, workdir, counts
            )
        flags = []
        if counts.truncated:
            flags.append("truncated")
        if limited:
            flags.append("frame_limit_reached")
        return StageOutput(
            KeyframesResult(
                shots=[
                    {"start": round(index.seconds(start), 6), "end": round(_end(index, end), 6)}
                    for start, end in itertools.pairwise(boundaries)
                ],
                frames=frames,
                cuts=[
                    {
                        "t": round(index.seconds(cut.index), 6),
                        "frame_index": cut.index,
                        "kind": cut.kind,
                    }
                    for cut in cuts
                ],
                duration_s=round(_end(index, len(index.pts)), 6),
                frames_decoded=counts.decoded,
                frames_total=len(index.pts),
                corrupt_frames=counts.corrupt,
                flags=flags,
                decoder=decoder,
            ),
            tuple(artifacts),
        )

    def _scan(
        self,
        container: av.container.InputContainer,
        stream: av.VideoStream,
        counts: DecodeCounts,
        decoded: _Decoded,
        detector: _Detector,
        intra: bool,
    ) -> tuple[_Index, dict[int, float]]:
        """Pass 1: every packet's pts and size, and keyframes decoded to signatures.

        Returns the index and, per decoded keyframe's pts, its difference from the keyframe
        before it. All-intra streams are decoded whole here and fed to the detector.
        """
        builder = _IndexBuilder(intra)
        changes: dict[int, float] = {}
        previous: U8 | None = None
        for pts, frame in frames_of(container, stream, counts, builder.take):
            signature, sharpness = _describe(frame)
            decoded.add(pts, sharpness)
            if intra:
                detector.add(pts, signature)
            elif previous is not None:
                changes[pts] = _difference(previous, signature)
            previous = signature
        detector.end_run()
        index = builder.build(stream.time_base or Fraction(1, 90000))
        if stream.frames and stream.frames > len(index.pts):
            counts.truncated = True
        return index, changes

    def _spans(
        self, index: _Index, changes: Mapping[int, float]
    ) -> tuple[list[tuple[int, int]], list[_Cut]]:
        """Pts ranges (inclusive) to decode, and cuts the keyframes alone establish.

        A stretch between keyframes is decoded when the keyframes differ, when one did not
        decode, when it is too long to trust, or when a packet inside it is as large as a
        keyframe would be (an encoder without scene-cut detection codes a cut that way).
        The stretch after the last keyframe has no later keyframe to compare with, so it is
        always decoded: one GOP, which is all of a short clip. Adjacent stretches become one
        range.

        One exception saves most of the decoding on encoder output with scene-cut detection
        (x264's default, most software encoders): a keyframe that comes early, before the
        stream's regular keyframe interval, was placed there by the encoder because the
        scene changed. When it also differs from the keyframe before like a cut does, and
        no packet between them looks like another cut, the cut is on that keyframe and the
        stretch is not decoded. Phones write keyframes on a fixed interval, so none of theirs
        is early and their stretches are always checked frame by frame.
        """
        config = self.config
        last = len(index.pts) - 1
        starts = [int(k) for k in index.keys]
        if not starts or starts[0] != 0:
            # Frames before the first keyframe (an edit list starting mid-GOP): no keyframe
            # of theirs decoded, so `changes` lacks them and they are decoded in pass 2.
            starts.insert(0, 0)
        scheduled = _scheduled_intervals([b - a for a, b in itertools.pairwise(starts)])
        spans: list[tuple[int, int]] = []
        trusted: list[_Cut] = []
        for number, start in enumerate(starts):
            end = starts[number + 1] if number + 1 < len(starts) else last
            if end <= start and number + 1 < len(starts):
                continue
            long_gap = index.seconds(end) - index.seconds(start) > config.max_blind_gap_s
            inner = index.sizes[start + 1 : end]
            spike = bool(
                len(inner) >= 3
                and inner.max() > config.packet_spike * float(np.median(inner))
                and inner.max() * 3 > index.sizes[start]
            )
            if number + 1 < len(starts):
                change = changes.get(int(index.pts[end]))
                doubt = change is None or (
                    change > config.keyframe_diff
                    and (
                        change >= config.keyframe_cut
                        or change >= config.keyframe_ratio * _neighbour_median(changes, index, end)
                    )
                )
                early = end - start not in scheduled
                sure = change is not None and change >= config.min_cut_score
                if early and sure and not (long_gap or spike):
                    trusted.append(_Cut(end, "hard", change or 0.0, first=end - 1, last=end))
                    continue
            else:
                doubt = end > start
            if not (doubt or long_gap or spike):
                continue
            first, final = int(index.pts[start]), int(index.pts[end])
            if spans and spans[-1][1] == first:
                spans[-1] = (spans[-1][0], final)
            else:
                spans.append((first, final))
        return spans, trusted

    def _refine(
        self,
        container: av.container.InputContainer,
        stream: av.VideoStream,
        spans: list[tuple[int, int]],
        counts: DecodeCounts,
        decoded: _Decoded,
        detector: _Detector,
    ) -> None:
        """Pass 2: decode the doubtful ranges fully, at signature size, into the detector.

        One sequential demux feeds the decoder only the packets of those ranges; each range
        starts at a keyframe, so the decoder needs nothing that was skipped. B-frames are
        skipped too (nothing references them in H.264 as x264 and phones write it, and they
        are half the decoding); `_place_exactly` revisits the few cuts that fall among them.
        Loop filtering is skipped: it smooths block edges a 64x36 signature cannot see.
        """
        stream.codec_context.options = {"skip_loop_filter": "all"}
        stream.codec_context.skip_frame = "BIDIR"
        starts = [start for start, _ in spans]

        def span_of(pts: int) -> int:
            at = int(np.searchsorted(starts, pts, side="right")) - 1
            return at if at >= 0 and pts <= spans[at][1] else -1

        def wanted(packet: av.Packet[Any]) -> bool:
            pts = packet_pts(packet)
            return pts is not None and span_of(pts) >= 0

        current = -1
        for pts, frame in frames_of(container, stream, counts, wanted):
            span = span_of(pts)
            if span < 0:
                continue
            if span != current:
                detector.end_run()
                current = span
            signature, sharpness = _describe(frame)
            detector.add(pts, signature)
            decoded.add(pts, sharpness)
        detector.end_run()

    def _place_exactly(
        self,
        container: av.container.InputContainer,
        stream: av.VideoStream,
        index: _Index,
        cuts: list[_Cut],
        counts: DecodeCounts,
    ) -> list[_Cut]:
        """Hard cuts found between two decoded frames with skipped B-frames between them,
        moved to the exact frame: their GOP is decoded again, this time whole, up to the cut.
        """
        stream.codec_context.options = {"skip_loop_filter": "all"}
        placed = []
        for cut in cuts:
            if cut.kind != "hard" or cut.index - cut.first <= 1:
                placed.append(cut)
                continue
            key_at = int(np.searchsorted(index.keys, cut.first, side="right")) - 1
            container.seek(int(index.pts[int(index.keys[max(key_at, 0)])]), stream=stream)
            signatures: dict[int, U8] = {}
            for position, frame in _positioned_frames(container, stream, index, counts):
                if position >= cut.first:
                    signatures[position] = _describe(frame)[0]
                if position >= cut.index:
                    break
            steps = [
                (_difference(signatures[position - 1], signatures[position]), position)
                for position in range(cut.first + 1, cut.index + 1)
                if position in signatures and position - 1 in signatures
            ]
            exact = max(steps)[1] if steps else cut.index
            placed.append(_Cut(exact, "hard", cut.score, first=exact - 1, last=exact))
        return placed

    def _choose(
        self, index: _Index, boundaries: list[int], decoded: _Decoded
    ) -> tuple[list[_Choice], bool]:
        """The frames to extract, and whether the cap cut any.

        Each shot is split into windows of `interval_s`; a window's candidates are the
        keyframes in it (decoded anyway, and cheap to extract again) plus the decoded frame
        nearest its middle, and the sharpest wins. Under the cap, every shot's best window
        comes first, longest shots first, then the further windows in turn.
        """
        config = self.config
        order = np.argsort(np.asarray(decoded.pts), kind="stable")
        pts = np.asarray(decoded.pts)[order]
        sharpness = np.asarray(decoded.sharpness)[order]
        at = np.searchsorted(index.pts, pts)
        known = (at < len(index.pts)) & (index.pts[np.minimum(at, len(index.pts) - 1)] == pts)
        positions, sharpness = at[known], sharpness[known]

        def sharpness_at(position: int) -> float | None:
            found = int(np.searchsorted(positions, position))
            if found < len(positions) and int(positions[found]) == position:
                return float(sharpness[found])
            return None

        firsts: list[tuple[float, _Choice]] = []
        extras: list[tuple[int, float, _Choice]] = []
        for shot, (start, end) in enumerate(itertools.pairwise(boundaries)):
            length = _end(index, end) - index.seconds(start)
            windows = max(1, math.ceil(length / config.interval_s - 1e-9))
            picks: list[_Choice] = []
            edges = [start]
            edges += [
                _position_at(index, index.seconds(start) + number * length / windows)
                for number in range(1, windows)
            ]
            edges.append(end)
            for low, high in itertools.pairwise(edges):
                keys = index.keys[
                    np.searchsorted(index.keys, low) : np.searchsorted(index.keys, high)
                ]
                candidates = [int(key) for key in keys]
                middle = int(np.searchsorted(positions, (low + high) // 2))
                for near in (middle - 1, middle):
                    if 0 <= near < len(positions) and low <= int(positions[near]) < high:
                        candidates.append(int(positions[near]))
                keyset = set(candidates[: len(keys)])
                scored = [
                    (value if c in keyset else value / _NON_KEY_PENALTY, value, c)
                    for c in candidates
                    if (value := sharpness_at(c)) is not None
                ]
                if scored:
                    _, value, best = max(scored)
                    picks.append(_Choice(best, shot, value))
            if not picks:
                continue
            top = max(picks, key=lambda choice: choice.sharpness)
            firsts.append((length, top))
            extras.extend(
                (rank, -length, choice)
                for rank, choice in enumerate(c for c in picks if c is not top)
            )
        ranked = [choice for _, choice in sorted(firsts, key=lambda entry: -entry[0])]
        ranked += [choice for _, _, choice in sorted(extras, key=lambda entry: entry[:2])]
        chosen = sorted(ranked[: config.max_frames], key=lambda choice: choice.index)
        return chosen, len(ranked) > config.max_frames

    def _extract(
        self,
        container: av.container.InputContainer,
        stream: av.VideoStream,
        index: _Index,
        choices: list[_Choice],
        rotation: int,
        workdir: Path,
        counts: DecodeCounts,
    ) -> tuple[list[dict[str, Any]], list[ArtifactFile]]:
        """Pass 3: decode each chosen frame at full resolution and write it as a JPEG.

        Each frame is reached by seeking to the keyframe before it and decoding forward;
        frames of one stretch share the decoding. Frames that no longer decode are left out.
        """
        frames: list[dict[str, Any]] = []
        artifacts: list[ArtifactFile] = []
        sink = DecodeCounts()
        # Every candidate is a keyframe or was decoded with B-frames skipped, so no chosen
        # frame is a B-frame and skipping them again halves the way to it.
        stream.codec_context.skip_frame = "BIDIR"
        source: Iterator[tuple[int, av.VideoFrame]] | None = None
        current_key, last = -1, -1
        for choice in choices:
            key_at = int(np.searchsorted(index.keys, choice.index, side="right")) - 1
            key = int(index.keys[key_at]) if key_at >= 0 else 0
            if source is None or key != current_key or last >= choice.index:
                container.seek(int(index.pts[key]), stream=stream)
                source = _positioned_frames(container, stream, index, sink)
                current_key = key
            found = None
            for position, frame in source:
                last = position
                if position >= choice.index:
                    found = frame if position == choice.index else None
                    break
            if found is None:
                continue
            image = display_image(found, stream.sample_aspect_ratio, rotation)
            path = workdir / f"keyframe-{choice.index:08d}.jpg"
            image.save(path, "JPEG", quality=self.config.jpeg_quality)
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            t = round(index.seconds(choice.index), 6)
            frames.append(
                {
                    "t": t,
                    "frame_index": choice.index,
                    "shot": choice.shot,
                    "artifact": digest,
                    "sharpness": round(choice.sharpness, 3),
                    "width": image.width,
                    "height": image.height,
                }
            )
            artifacts.append(
                ArtifactFile(path, "image/jpeg", "keyframe", {"t": t, "frame_index": choice.index})
            )
        counts.decoded += sink.decoded
        return frames, artifacts


def _neighbour_median(changes: Mapping[int, float], index: _Index, key: int) -> float:
    """The median keyframe change of the two keyframes before `key` and the two after it."""
    at = int(np.searchsorted(index.keys, key))
    around = [
        changes.get(int(index.pts[int(index.keys[other])]))
        for other in (at - 2, at - 1, at + 1, at + 2)
        if 0 <= other < len(index.keys)
    ]
    known = [value for value in around if value is not None]
    return float(np.median(known)) if known else 0.0


def _scheduled_intervals(intervals: list[int]) -> set[int]:
    """Keyframe intervals (in frames) that look like the encoder's schedule, not a scene cut.

    A fixed-interval encoder repeats one interval (phones: every 30 or 60 frames); x264
    repeats its maximum (250) through long shots. So an interval seen twice or more that is
    the most common, and the longest interval, count as scheduled; any other keyframe came
    early, where the encoder saw the scene change.
    """
    if not intervals:
        return set()
    counts = Counter(intervals)
    common, seen = counts.most_common(1)[0]
    return {max(intervals)} | ({common} if seen >= 2 else set())


def _positioned_frames(
    container: av.container.InputContainer,
    stream: av.VideoStream,
    index: _Index,
    counts: DecodeCounts,
) -> Iterator[tuple[int, av.VideoFrame]]:
    for pts, frame in frames_of(container, stream, counts, lambda _: True):
        if (position := index.position(pts)) >= 0:
            yield position, frame


def _position_at(index: _Index, seconds: float) -> int:
    target = int(index.pts[0]) + int(seconds / index.time_base)
    return int(np.searchsorted(index.pts, target))


def _end(index: _Index, boundary: int) -> float:
    """Seconds at a shot boundary; the boundary after the last frame is the video's end."""
    if boundary < len(index.pts):
        return index.seconds(boundary)
    return float((index.end_pts - int(index.pts[0])) * index.time_base)
