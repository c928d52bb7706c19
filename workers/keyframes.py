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
   taken as the cut without decoding. Phones place no keyframe at a cut, so theirs fall
   inside stretches: a stretch is left as soon as a hard cut in it is confirmed and the
   frame after it already looks like the keyframe that ends the stretch. Cuts that fall
   among skipped B-frames are placed on their exact frame by decoding that GOP once more,
   whole. All-intra streams (MJPEG, ProRes) have nothing to skip and are decoded once,
   fully, at signature size.
3. **Extract** only the chosen frames at full resolution, with rotation and aspect applied,
   in one more sequential demux pass.

On the 62 s 1080p clip of `qarina bench keyframes` (32 cuts; pans, zooms and handheld
shake over real photos) this takes, in CPU seconds, 0.41x `ffmpeg -threads 2 -i CLIP -f
null -` (0.29x PySceneDetect) encoded with x264's defaults, and 0.69x (0.46x PySceneDetect)
encoded as phones do (1 s GOP, no B-frames, no keyframes at cuts), where with a cut every
two seconds most stretches hold one (medians of 3 runs, 2 vCPU shared with other work;
version 2 measured 0.39x and 0.66x in the same session, version 1 took 1.00x of ffmpeg).
Decoding runs on one thread: a stage that stops early on frame threads would find its
result depending on the node's core count, and its actor has one CPU.

The shot detector itself (hard cuts, flashes, fades and dissolves) lives in `workers.shots`;
this module decides what to decode, feeds it the signatures, and chooses the frames. Memory
stays small for any length: the detector keeps signatures for a bounded window, and this
module per frame only a few numbers, and the signature of each keyframe that differs from
the one before it (3.4 KB; about 13 MB for an hour with a keyframe every second).
"""

from __future__ import annotations

import hashlib
import itertools
import math
from array import array
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
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
    Step,
    difference,
    flash_frames,
    flash_steps,
    is_hard_cut,
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
    `calm_packets`: a keyframe the encoder placed early is taken as a cut without decoding
    only when the median packet before it is at most this share of the keyframe's size.
    Fast motion, flicker and flashes also make x264 place keyframes early, and they make
    its P-frames nearly as large as keyframes (medians 0.64-0.75 of the keyframe on the
    tune half of `pipelines.samples.motion_clips`), where a shot before a cut is coded in
    small ones (at most 0.29 on the phone-like clip's early keyframes at cuts).

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
    calm_packets: float = 0.45
    cut_ratio: float = CutRules.cut_ratio
    cut_window: int = CutRules.cut_window
    min_cut_score: float = CutRules.min_cut_score
    flash_s: float = CutRules.flash_s
    flash_ratio: float = CutRules.flash_ratio
    gradual_score: float = CutRules.gradual_score
    gradual_s: float = CutRules.gradual_s
    gradual_contrast: float = CutRules.gradual_contrast
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
            flash_s=self.flash_s,
            flash_ratio=self.flash_ratio,
            gradual_score=self.gradual_score,
            gradual_s=self.gradual_s,
            gradual_contrast=self.gradual_contrast,
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
    """Each cell's mean of its `_SIG_SUB` x `_SIG_SUB` samples, rounded down.

    This runs on every decoded frame, so it is written for speed: rows are gathered first
    (whole lines, a plain copy), then columns, and the cells summed as strided slices in
    16 bits. On 1080p luma that is 0.18 ms against 0.46 ms for fancy indexing and a mean over
    reshaped axes (2 vCPU), with the very same result.
    """
    rows, cols = _grid(plane.shape[0], cells_h), _grid(plane.shape[1], cells_w)
    sub = plane.take(rows, axis=0).take(cols, axis=1).astype(np.uint16)
    across = sum(sub[:, offset::_SIG_SUB] for offset in range(1, _SIG_SUB)) + sub[:, ::_SIG_SUB]
    cells = sum(across[offset::_SIG_SUB] for offset in range(1, _SIG_SUB)) + across[::_SIG_SUB]
    pooled: U8 = (cells // (_SIG_SUB * _SIG_SUB)).astype(np.uint8)
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


def _describe(frame: av.VideoFrame) -> tuple[Signature, U8]:
    """A frame's signature (Y 64x36, U and V 32x18), and the luma it was sampled from, for
    `_sharpness`.

    8-bit 4:2:0 frames are sampled straight from their planes (no scaling pass over the full
    picture); anything else (10-bit, 4:2:2, NV12 from NVDEC, RGB) goes through swscale once.
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
    return signature, luma


def _sharpness(luma: U8) -> float:
    """The variance of the Laplacian of a ~320 px wide sample of a frame's luma: blur and
    motion blur remove exactly the high frequencies it measures."""
    step = max(1, luma.shape[1] // _SHARP_W)
    return _laplacian_variance(luma[::step, ::step])


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
class _Stretch:
    """Frames pass 2 decodes, by index: from the keyframe at `start` up to the next keyframe
    at `end` (for the last stretch, the last frame).

    `tail` is pass 1's signature of the keyframe at `end`, where it kept one; `neighbours`
    the median change between the keyframes around `end` (see `_settled`). `settled_from` is
    the first frame after which no packet up to `end` is as large as a cut, or None when the
    stretch is decoded whole in any case (one too long to judge from its ends).
    """

    start: int
    end: int
    tail: Signature | None
    neighbours: float
    settled_from: int | None


@dataclass(frozen=True)
class _Choice:
    index: int
    shot: int
    sharpness: float


class KeyframesStage(Stage[KeyframesConfig, KeyframesResult]):
    """Shot boundaries and sharp representative frames, decoding as little as possible."""

    name: ClassVar[str] = "keyframes"
    #: 2: pass 2 leaves a stretch after a confirmed cut, and keyframes are decoded without
    #: the loop filter in pass 1 too (their signatures and sharpness move a little).
    #: 3: flashes are no cuts, gradual transitions must stand out from the motion around
    #: them, hard cuts weigh neighbours by the frames they span, early keyframes after
    #: busy frames are decoded, not trusted (fewer false cuts in fast motion).
    version: ClassVar[str] = "3"
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
            stream = video_stream(container, one_thread=True)
            intra = stream.codec_context.codec.intra_only
            fps = float(stream.guessed_rate or stream.average_rate or 25)
            time_base = stream.time_base or Fraction(1, 90000)
            detector = ShotDetector(config.cut_rules(), fps, float(1 / (fps * time_base)))
            index, key_changes, tails = self._scan(
                container, stream, counts, decoded, detector, intra
            )
            decoder = "nvdec" if stream.codec_context.is_hwaccel else "cpu"
        trusted: list[Cut] = []
        if not intra:
            stretches, trusted = self._stretches(index, key_changes, tails)
            if stretches:
                with open_container(item.path, hwaccel) as container:
                    stream = video_stream(container, one_thread=True)
                    self._refine(container, stream, index, stretches, counts, decoded, detector)
        if counts.decoded == 0:
            raise StageError(FailureReason.DECODE_ERROR, "not one video frame decodes")
        found = [
            Cut(
                position,
                cut.kind,
                cut.score,
                cut.to_flat,
                cut.from_flat,
                index.position(cut.first),
                index.position(cut.last),
            )
            for cut in detector.cuts
            if (position := index.position(cut.index)) > 0
        ]
        found += trusted
        if any(cut.kind == "hard" and cut.index - cut.first > 1 for cut in found):
            with open_container(item.path, hwaccel) as container:
                stream = video_stream(container, one_thread=True)
                found = self._place_exactly(container, stream, index, found, counts)
        cuts = merge_cuts(found, index.seconds, config.cut_rules())
        boundaries = [0, *[cut.index for cut in cuts], len(index.pts)]
        choices, limited = self._choose(index, boundaries, decoded)
        with open_container(item.path, hwaccel) as container:
            stream = video_stream(container, one_thread=True)
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
    ) -> tuple[_Index, dict[int, float], dict[int, Signature]]:
        """Pass 1: every packet's pts and size, and keyframes decoded to signatures.

        Returns the index; per decoded keyframe's pts, its difference from the keyframe
        before it; and, by pts, the signatures of the keyframes that differ from the one
        before by more than `keyframe_diff`. Only those can end a doubtful stretch, and pass 2
        compares with them instead of decoding them again: 3,456 bytes each, at most about
        13 MB for an hour of video with a keyframe every second. All-intra streams are decoded
        whole here and fed to the detector.

        The loop filter is skipped as in pass 2, so that a keyframe's signature and sharpness
        are the same whichever pass decoded it.
        """
        stream.codec_context.options = {"skip_loop_filter": "all"}
        builder = _IndexBuilder(intra)
        changes: dict[int, float] = {}
        tails: dict[int, Signature] = {}
        previous: Signature | None = None
        for pts, frame in frames_of(container, stream, counts, builder.take):
            signature, luma = _describe(frame)
            decoded.add(pts, _sharpness(luma))
            if intra:
                detector.add(pts, signature)
            elif previous is not None:
                changes[pts] = difference(previous, signature)
                if changes[pts] > self.config.keyframe_diff:
                    tails[pts] = signature
            previous = signature
        detector.end_run()
        index = builder.build(stream.time_base or Fraction(1, 90000))
        if stream.frames and stream.frames > len(index.pts):
            counts.truncated = True
        return index, changes, tails

    def _stretches(
        self, index: _Index, changes: Mapping[int, float], tails: Mapping[int, Signature]
    ) -> tuple[list[_Stretch], list[Cut]]:
        """The stretches between keyframes to decode, and cuts the keyframes alone establish.

        A stretch is decoded when its keyframes differ, when one did not decode, when it is
        too long to trust, or when a packet inside it is as large as a keyframe would be (an
        encoder without scene-cut detection codes a cut that way). The stretch after the last
        keyframe has no later keyframe to compare with, so it is always decoded: one GOP,
        which is all of a short clip.

        One exception saves most of the decoding on encoder output with scene-cut detection
        (x264's default, most software encoders): a keyframe that comes early, before the
        stream's regular keyframe interval, was placed there by the encoder because the
        scene changed. When it also differs from the keyframe before like a cut does, the
        frames before it were calm (small packets: fast motion and flashes make early
        keyframes too), and no packet between them looks like another cut, the cut is on
        that keyframe and the stretch is not decoded. Phones write keyframes on a fixed
        interval, so none of theirs is early and their stretches are checked frame by frame
        (see `_refine`).
        """
        config = self.config
        last = len(index.pts) - 1
        starts = [int(k) for k in index.keys]
        if not starts or starts[0] != 0:
            # Frames before the first keyframe (an edit list starting mid-GOP): no keyframe
            # of theirs decoded, so `changes` lacks them and they are decoded in pass 2.
            starts.insert(0, 0)
        scheduled = _scheduled_intervals([b - a for a, b in itertools.pairwise(starts)])
        stretches: list[_Stretch] = []
        trusted: list[Cut] = []
        for number, start in enumerate(starts):
            end = starts[number + 1] if number + 1 < len(starts) else last
            if end <= start and number + 1 < len(starts):
                continue
            long_gap = index.seconds(end) - index.seconds(start) > config.max_blind_gap_s
            inner = index.sizes[start + 1 : end]
            spikes = (
                np.flatnonzero(
                    (inner > config.packet_spike * float(np.median(inner)))
                    & (inner * 3 > index.sizes[start])
                )
                if len(inner) >= 3
                else np.empty(0, dtype=np.intp)
            )
            spike = len(spikes) > 0
            tail: Signature | None = None
            neighbours = 0.0
            if number + 1 < len(starts):
                change = changes.get(int(index.pts[end]))
                neighbours = _neighbour_median(changes, index, end)
                doubt = change is None or not self._settled(change, neighbours)
                early = end - start not in scheduled
                sure = change is not None and change >= config.min_cut_score
                calm = not len(inner) or (
                    float(np.median(inner)) <= config.calm_packets * float(index.sizes[end])
                )
                if early and sure and calm and not (long_gap or spike):
                    trusted.append(Cut(end, "hard", change or 0.0, first=end - 1, last=end))
                    continue
                tail = tails.get(int(index.pts[end]))
            else:
                doubt = end > start
            if not (doubt or long_gap or spike):
                continue
            settled_from = None if long_gap else start + 1 + int(spikes[-1]) if spike else start
            stretches.append(_Stretch(start, end, tail, neighbours, settled_from))
        return stretches, trusted

    def _settled(self, change: float, neighbours: float) -> bool:
        """Whether two pictures a stretch apart differ too little to doubt what lies between:
        by at most `keyframe_diff`, or by less than `keyframe_cut` and than `keyframe_ratio`
        times `neighbours`, the change usual between keyframes around them (camera motion)."""
        config = self.config
        return change <= config.keyframe_diff or (
            change < config.keyframe_cut and change < config.keyframe_ratio * neighbours
        )

    def _refine(
        self,
        container: av.container.InputContainer,
        stream: av.VideoStream,
        index: _Index,
        stretches: list[_Stretch],
        counts: DecodeCounts,
        decoded: _Decoded,
        detector: ShotDetector,
    ) -> None:
        """Pass 2: decode the doubtful stretches at signature size into the detector.

        One sequential demux feeds the decoder only the packets of those stretches; each
        starts at a keyframe, so the decoder needs nothing that was skipped. B-frames are
        skipped too (nothing references them in H.264 as x264 and phones write it, and they
        are half the decoding); `_place_exactly` revisits the few cuts that fall among them.
        Loop filtering is skipped: it smooths block edges a 64x36 signature cannot see.

        A stretch is left early right after a hard cut in it is confirmed (`cut_window`
        frames on), when the frame then decoded already looks like the keyframe that ends
        the stretch by the rule that lets pass 1 leave two keyframes alone (`_settled`), and
        no packet after it looks like another cut: the rest is the new shot. With a keyframe
        every second or two and none placed at cuts, as phones encode, a cut falls inside a
        stretch and the frames after it are a good part of this pass. Decoding stops only
        right after a hard cut, never inside a fade or dissolve, whose middle would look like
        its end, nor after a flash, which would have it skip a cut later in the stretch when
        the keyframes around the cut differ no more than those of a moving shot do. The
        keyframe that ends such a stretch is compared through its pass-1 signature, not
        decoded again. A stretch left early ends the detector's run even when the next
        stretch starts at its end: what it skipped looks like that keyframe, as two keyframes
        pass 1 leaves alone do, so the next run starts as after such a pair.
        """
        stream.codec_context.options = {"skip_loop_filter": "all"}
        stream.codec_context.skip_frame = "BIDIR"
        rules, window = self.config.cut_rules(), self.config.cut_window
        starts = np.asarray([stretch.start for stretch in stretches])
        wanted = np.zeros(len(index.pts), dtype=bool)
        for stretch in stretches:
            wanted[stretch.start : stretch.end] = True
            wanted[stretch.end] |= stretch.tail is None

        current, stopped, tail_seen = -1, False, False
        longest = flash_frames(rules, detector.fps)
        # The frames decoded last: `cut_window` after the one the hard-cut rule judges next,
        # and before it enough for a flash it may end. Changes from one decoded frame to the
        # next (and the frames each spans) around the one judged, `cut_window` on each side.
        recent: deque[tuple[int, Signature]] = deque(maxlen=longest + 2 * window + 2)
        steps: deque[Step] = deque(maxlen=2 * window + 1)

        def finish(following: int) -> None:
            """Close the current stretch: its last keyframe from pass 1 where it was not
            decoded, and the run ended unless the stretch decoded next carries it on."""
            stretch = stretches[current]
            follows = following == current + 1 and stretches[following].start == stretch.end
            if not (stopped or tail_seen or follows) and stretch.tail is not None:
                detector.add(int(index.pts[stretch.end]), stretch.tail)
            if stopped or not follows:
                detector.end_run()
                recent.clear()
                steps.clear()

        for pts, frame in frames_of(container, stream, counts, _taking(index, wanted)):
            position = index.position(pts)
            number = int(np.searchsorted(starts, position, side="right")) - 1
            if position < 0 or number < 0 or position > stretches[number].end:
                continue
            if number != current:
                if current >= 0:
                    finish(number)
                current, stopped, tail_seen = number, False, False
            stretch = stretches[number]
            tail_seen = position == stretch.end
            signature, luma = _describe(frame)
            decoded.add(pts, _sharpness(luma))
            if stopped:
                # Frames the decoder still held when the stretch was left: the run ends with
                # the cut's window, not on a frame that could start a flash with none after.
                continue
            detector.add(pts, signature)
            if recent:
                last_pts, last = recent[-1]
                steps.append((difference(last, signature), (pts - last_pts) / detector.frame_ticks))
            recent.append((pts, signature))
            if (
                stretch.tail is not None
                and stretch.settled_from is not None
                and stretch.settled_from <= position < stretch.end
                and self._cut_behind(steps, recent, stretch, rules, longest)
            ):
                stopped = True
                wanted[position + 1 : stretch.end] = False
        if current >= 0:
            finish(-1)
        detector.end_run()

    def _cut_behind(
        self,
        steps: deque[Step],
        recent: deque[tuple[int, Signature]],
        stretch: _Stretch,
        rules: CutRules,
        longest: int,
    ) -> bool:
        """Whether `_refine` may leave `stretch` now: the step `cut_window` frames back is a
        hard cut and no flash, and the frame decoded last looks like the keyframe that ends
        the stretch (`_settled`)."""
        judged = len(steps) - 1 - rules.cut_window
        if judged < 0 or stretch.tail is None:
            return False
        around = [step for at, step in enumerate(steps) if at != judged]
        frames = [signature for _, signature in recent]
        return (
            is_hard_cut(steps[judged], around, rules)
            and self._settled(difference(frames[-1], stretch.tail), stretch.neighbours)
            and len(frames) - 1 - rules.cut_window not in flash_steps(frames, rules, longest)
        )

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
            placed.append(replace(cut, index=exact, first=exact - 1, last=exact))
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

        One sequential demux feeds the decoder, for each chosen frame, the packets from the
        keyframe before it up to it. Seeking to each instead (a seek flushes the decoder)
        took 2.9 s against 1.6 s for the same 32 frames of the bench's phone clip (1080p;
        medians of 5, 2 vCPU, loaded, measured while decoding still used frame threads).
        Frames that no longer decode are left out.
        """
        frames: list[Keyframe] = []
        artifacts: list[ArtifactFile] = []
        sink = DecodeCounts()
        # Every candidate is a keyframe or was decoded with B-frames skipped, so no chosen
        # frame is a B-frame and skipping them again halves the way to it.
        stream.codec_context.skip_frame = "BIDIR"
        wanted = np.zeros(len(index.pts), dtype=bool)
        for choice in choices:
            key_at = int(np.searchsorted(index.keys, choice.index, side="right")) - 1
            wanted[int(index.keys[key_at]) if key_at >= 0 else 0 : choice.index + 1] = True

        waiting = {choice.index: choice for choice in choices}
        for pts, found in frames_of(container, stream, sink, _taking(index, wanted)):
            if (position := index.position(pts)) not in waiting:
                continue
            chosen = waiting.pop(position)
            image = display_image(found, stream.sample_aspect_ratio, rotation)
            path = workdir / f"keyframe-{chosen.index:08d}.jpg"
            image.save(path, "JPEG", quality=self.config.jpeg_quality)
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            t = round(index.seconds(chosen.index), 6)
            frames.append(
                Keyframe(
                    t=t,
                    frame_index=chosen.index,
                    shot=chosen.shot,
                    artifact=digest,
                    sharpness=round(chosen.sharpness, 3),
                    width=image.width,
                    height=image.height,
                )
            )
            artifacts.append(
                ArtifactFile(path, "image/jpeg", "keyframe", {"t": t, "frame_index": chosen.index})
            )
            if not waiting:
                break
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


def _taking(index: _Index, wanted: npt.NDArray[np.bool_]) -> Callable[[av.Packet[Any]], bool]:
    """A packet filter for `frames_of`: the packets of the frames `wanted` marks by index,
    read as it is when each packet comes (pass 2 clears what it no longer needs). A packet
    missing from the index (discarded by the demuxer) goes with the frame before it."""

    def take(packet: av.Packet[Any]) -> bool:
        pts = packet_pts(packet)
        at = -1 if pts is None else int(np.searchsorted(index.pts, pts, side="right")) - 1
        return at >= 0 and bool(wanted[at])

    return take


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
