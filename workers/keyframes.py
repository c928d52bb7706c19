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

The shot detector itself (hard cuts, fades and dissolves) lives in `workers.shots`; this
module decides what to decode, feeds it the signatures, and chooses the frames. Memory stays
bounded for any length: the detector keeps signatures for a bounded window, and this module
per frame only a few numbers.
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
from typing import Any, ClassVar, Self

import av
import av.codec.hwaccel
import numpy as np
import numpy.typing as npt

from workers.base import (
    CPU_NODE,
    ArtifactFile,
    FailureReason,
    JsonRecord,
    Kind,
    Resources,
    Stage,
    StageConfig,
    StageError,
    StageInput,
    StageOutput,
)
from workers.probe import ProbeResult, duration_of
from workers.shots import (
    SIGNATURE_H,
    SIGNATURE_W,
    Cut,
    CutRules,
    ShotDetector,
    Signature,
    difference,
    merge_cuts,
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

#: Samples per signature block side: 4x4 = 16 samples averaged per block, which divides
#: sensor and compression noise by 4 at almost no cost (no full-plane scaling).
_SIG_SUB = 4
#: Width of the grey image sharpness is measured on; full 4K would cost 40x more and rank
#: frames the same way.
_SHARP_W = 320
#: Extracting a frame that is no keyframe means decoding its GOP up to it again; it must be
#: this much sharper than the shot's sharpest keyframe to be worth that.
_NON_KEY_PENALTY = 1.5


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

    `cut_ratio` to `min_shot_s`: the shot detector's rules, explained at `CutRules`. They
    are fields of this config, not one nested `CutRules`, because the config's fields are
    hashed into every result's storage key.
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
    cut_ratio: float = CutRules.cut_ratio
    cut_window: int = CutRules.cut_window
    min_cut_score: float = CutRules.min_cut_score
    gradual_score: float = CutRules.gradual_score
    gradual_s: float = CutRules.gradual_s
    gradual_residual: float = CutRules.gradual_residual
    min_shot_s: float = CutRules.min_shot_s
    #: Time budget: at least `min_budget_s`, else `budget_per_media_s` seconds per second of
    #: video. Measured at about 11x real time on 1080p here, so 0.5 leaves a 5x margin.
    min_budget_s: float = 120.0
    budget_per_media_s: float = 0.5

    def cut_rules(self) -> CutRules:
        """The detector's share of these options."""
        return CutRules(
            cut_ratio=self.cut_ratio,
            cut_window=self.cut_window,
            min_cut_score=self.min_cut_score,
            gradual_score=self.gradual_score,
            gradual_s=self.gradual_s,
            gradual_residual=self.gradual_residual,
            min_shot_s=self.min_shot_s,
        )


@dataclass(frozen=True)
class Shot(JsonRecord):
    """A shot's start and end, in seconds."""

    start: float
    end: float


@dataclass(frozen=True)
class Keyframe(JsonRecord):
    """A shot's representative frame: its time, frame index and shot (index into `shots`),
    `artifact` (the SHA-256 of its JPEG, the key the store files it under), the sharpness it
    won with, and its size as a viewer sees it (rotation and aspect applied)."""

    t: float
    frame_index: int
    shot: int
    artifact: str
    sharpness: float
    width: int
    height: int


@dataclass(frozen=True)
class CutPoint(JsonRecord):
    """A cut between two shots: its time, its first frame of the new shot, and `kind`
    (`hard`, or `gradual` for a fade or dissolve, placed at its middle)."""

    t: float
    frame_index: int
    kind: str


@dataclass(frozen=True)
class KeyframesResult(JsonRecord):
    """Shots, their representative frames, and the cuts between them; times in seconds.

    Times are presentation times from the first frame of the video stream (what a player's
    timeline shows), so they are right for variable frame rate. `frames_decoded` against
    `frames_total` shows how much decoding the keyframe-first passes saved.
    """

    shots: list[Shot]
    frames: list[Keyframe]
    cuts: list[CutPoint]
    duration_s: float
    frames_decoded: int
    frames_total: int
    corrupt_frames: int
    flags: list[str]
    decoder: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        return cls(
            **{
                **data,
                "shots": [Shot.from_json(shot) for shot in data["shots"]],
                "frames": [Keyframe.from_json(frame) for frame in data["frames"]],
                "cuts": [CutPoint.from_json(cut) for cut in data["cuts"]],
            }
        )


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


def _describe(frame: av.VideoFrame) -> tuple[Signature, float]:
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
            _pool(luma, SIGNATURE_W, SIGNATURE_H).ravel(),
            _pool(u, SIGNATURE_W // 2, SIGNATURE_H // 2).ravel(),
            _pool(v, SIGNATURE_W // 2, SIGNATURE_H // 2).ravel(),
        ]
    )
    step = max(1, luma.shape[1] // _SHARP_W)
    return signature, _laplacian_variance(luma[::step, ::step])


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
        probe = item.upstream_result("probe", ProbeResult)
        duration = duration_of(probe)
        counts = budgeted_counts(duration, config.min_budget_s, config.budget_per_media_s)
        decoded = _Decoded()
        with open_container(item.path, hwaccel) as container:
            stream = video_stream(container)
            intra = stream.codec_context.codec.intra_only
            fps = float(stream.guessed_rate or stream.average_rate or 25)
            time_base = stream.time_base or Fraction(1, 90000)
            detector = ShotDetector(config.cut_rules(), fps, float(1 / (fps * time_base)))
            index, key_changes = self._scan(container, stream, counts, decoded, detector, intra)
            decoder = "nvdec" if stream.codec_context.is_hwaccel else "cpu"
        trusted: list[Cut] = []
        if not intra:
            spans, trusted = self._spans(index, key_changes)
            if spans:
                with open_container(item.path, hwaccel) as container:
                    stream = video_stream(container)
                    self._refine(container, stream, spans, counts, decoded, detector)
        if counts.decoded == 0:
            raise StageError(FailureReason.DECODE_ERROR, "not one video frame decodes")
        found = [
            Cut(
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
        cuts = merge_cuts(found, index.seconds, config.cut_rules())
        boundaries = [0, *[cut.index for cut in cuts], len(index.pts)]
        choices, limited = self._choose(index, boundaries, decoded)
        with open_container(item.path, hwaccel) as container:
            stream = video_stream(container)
            rotation = rotation_of(probe)
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
                    Shot(round(index.seconds(start), 6), round(_end(index, end), 6))
                    for start, end in itertools.pairwise(boundaries)
                ],
                frames=frames,
                cuts=[
                    CutPoint(round(index.seconds(cut.index), 6), cut.index, cut.kind)
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
        detector: ShotDetector,
        intra: bool,
    ) -> tuple[_Index, dict[int, float]]:
        """Pass 1: every packet's pts and size, and keyframes decoded to signatures.

        Returns the index and, per decoded keyframe's pts, its difference from the keyframe
        before it. All-intra streams are decoded whole here and fed to the detector.
        """
        builder = _IndexBuilder(intra)
        changes: dict[int, float] = {}
        previous: Signature | None = None
        for pts, frame in frames_of(container, stream, counts, builder.take):
            signature, sharpness = _describe(frame)
            decoded.add(pts, sharpness)
            if intra:
                detector.add(pts, signature)
            elif previous is not None:
                changes[pts] = difference(previous, signature)
            previous = signature
        detector.end_run()
        index = builder.build(stream.time_base or Fraction(1, 90000))
        if stream.frames and stream.frames > len(index.pts):
            counts.truncated = True
        return index, changes

    def _spans(
        self, index: _Index, changes: Mapping[int, float]
    ) -> tuple[list[tuple[int, int]], list[Cut]]:
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
        trusted: list[Cut] = []
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
                    trusted.append(Cut(end, "hard", change or 0.0, first=end - 1, last=end))
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
        detector: ShotDetector,
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
        cuts: list[Cut],
        counts: DecodeCounts,
    ) -> list[Cut]:
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
            signatures: dict[int, Signature] = {}
            for position, frame in _positioned_frames(container, stream, index, counts):
                if position >= cut.first:
                    signatures[position] = _describe(frame)[0]
                if position >= cut.index:
                    break
            steps = [
                (difference(signatures[position - 1], signatures[position]), position)
                for position in range(cut.first + 1, cut.index + 1)
                if position in signatures and position - 1 in signatures
            ]
            exact = max(steps)[1] if steps else cut.index
            placed.append(Cut(exact, "hard", cut.score, first=exact - 1, last=exact))
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
    ) -> tuple[list[Keyframe], list[ArtifactFile]]:
        """Pass 3: decode each chosen frame at full resolution and write it as a JPEG.

        Each frame is reached by seeking to the keyframe before it and decoding forward;
        frames of one stretch share the decoding. Frames that no longer decode are left out.
        """
        frames: list[Keyframe] = []
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
                Keyframe(
                    t=t,
                    frame_index=choice.index,
                    shot=choice.shot,
                    artifact=digest,
                    sharpness=round(choice.sharpness, 3),
                    width=image.width,
                    height=image.height,
                )
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
