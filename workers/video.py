"""Reading video with PyAV, shared by the stages that decode frames (keyframes, hashes).

PyAV decodes inside the worker process, so these helpers carry what a subprocess tool would
get from `run_tool`: local files only, a wall-clock budget checked per packet, and damaged
packets counted instead of raised, since one bad packet must cost one frame, never the video.
Frames are handed out as the viewer sees them (rotation and sample aspect applied) because
hashes and keyframes must describe the picture, not the storage layout.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import av.codec.hwaccel
from PIL import Image

from workers.base import FailureReason, StageError, StageSkipped
from workers.probe import ProbeResult
from workers.tools import ffmpeg_input


@dataclass
class DecodeCounts:
    """What a decode saw: frames decoded, corrupt packets or frames, a cut-off end, and the
    deadline after which it stops."""

    decoded: int = 0
    #: Set by a caller that keeps a partial result after the deadline passed.
    out_of_time: bool = False
    corrupt: int = 0
    truncated: bool = False
    #: time.monotonic() after which decoding stops: PyAV runs in-process, so this wall-clock
    #: budget is the stage's own timeout (checked per packet, in the one demux loop).
    deadline: float = math.inf


def decoder_versions() -> dict[str, str]:
    """PyAV and the FFmpeg it carries: they decide every decoded pixel (for provenance)."""
    ffmpeg = av.ffmpeg_version_info
    return {
        "pyav": av.__version__,
        "ffmpeg": ".".join(str(part) for part in ffmpeg)
        if isinstance(ffmpeg, tuple)
        else str(ffmpeg),
    }


def budgeted_counts(duration_s: float, min_budget_s: float, per_media_s: float) -> DecodeCounts:
    """Counts for a decode that may take at least `min_budget_s`, else `per_media_s` seconds
    per second of video: PyAV runs in-process, so this budget is the stage's own timeout."""
    return DecodeCounts(deadline=time.monotonic() + max(min_budget_s, duration_s * per_media_s))


def hwaccel_for(mode: str) -> av.codec.hwaccel.HWAccel | None:
    """NVDEC settings when asked for and possible, else None (CPU decoding).

    FFmpeg builds list "cuda" whether or not a GPU exists, so "auto" also wants the device
    node; "cuda" trusts FFmpeg alone (for containers that expose the GPU differently). Either
    way FFmpeg falls back to software per stream, and `decoder` records what really ran.
    """
    if mode == "none" or "cuda" not in av.codec.hwaccel.hwdevices_available():
        return None
    if mode == "auto" and not Path("/dev/nvidia0").exists():
        return None
    return av.codec.hwaccel.HWAccel("cuda", allow_software_fallback=True)


def open_container(
    path: Path, hwaccel: av.codec.hwaccel.HWAccel | None
) -> av.container.InputContainer:
    """The container, reading local files only (a playlist must not reach the network).

    Raises:
        StageError: corrupt_media when FFmpeg cannot read the container at all.
    """
    try:
        return av.open(
            ffmpeg_input(path),
            container_options={"protocol_whitelist": "file"},
            hwaccel=hwaccel,
        )
    except (av.FFmpegError, UnicodeDecodeError) as error:
        raise StageError(
            FailureReason.CORRUPT_MEDIA, f"cannot open the container: {type(error).__name__}"
        ) from None


def video_stream(
    container: av.container.InputContainer, *, one_thread: bool = False
) -> av.VideoStream:
    """The container's first video stream that is not cover art.

    `one_thread` decodes on the calling thread only. A stage that stops decoding early must:
    frame threads hand frames back late, so how many a stage had decoded when it stopped
    would depend on the node's core count, and with it the result. It is also what a 1-CPU
    actor is given: frame threads on a busy node cost CPU time without adding any.
    """
    streams = [
        s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic
    ]
    if not streams:
        raise StageSkipped("no_video")
    stream = streams[0]
    if one_thread:
        stream.codec_context.thread_count = 1
    else:
        stream.thread_type = "AUTO"
    return stream


def packet_pts(packet: av.Packet[Any]) -> int | None:
    return packet.pts if packet.pts is not None else packet.dts


def decode_packet(packet: av.Packet[Any], counts: DecodeCounts) -> list[av.VideoFrame]:
    """A packet's frames; a packet the decoder rejects, or a frame it marks corrupt, is counted.

    Damaged evidence is common (broken transfers, bad sectors): one bad packet must cost one
    frame, never the video.
    """
    try:
        frames = packet.decode()
    except av.FFmpegError:
        counts.corrupt += 1
        return []
    good = []
    for frame in frames:
        if not isinstance(frame, av.VideoFrame):
            continue
        if frame.is_corrupt:
            counts.corrupt += 1
            continue
        counts.decoded += 1
        good.append(frame)
    return good


def demux(
    container: av.container.InputContainer, stream: av.VideoStream, counts: DecodeCounts
) -> Iterator[av.Packet[Any]]:
    """The stream's packets; a demuxer error (a cut-off file) ends the stream as truncated.

    Raises:
        StageError: tool_timeout once the run's time budget is spent.
    """
    packets = container.demux(stream)
    while True:
        if time.monotonic() > counts.deadline:
            raise StageError(FailureReason.TOOL_TIMEOUT, "decoding exceeded its time budget")
        try:
            packet = next(packets)
        except StopIteration:
            return
        except (av.FFmpegError, EOFError):
            counts.truncated = True
            return
        yield packet


def frames_of(
    container: av.container.InputContainer,
    stream: av.VideoStream,
    counts: DecodeCounts,
    wanted: Callable[[av.Packet[Any]], bool] | None = None,
) -> Iterator[tuple[int, av.VideoFrame]]:
    """(pts, frame) of the packets `wanted` accepts (all without it), in output order; frames
    without pts are of no use (no time, no index) and left out.

    On a cut-off file the decoder is drained, so the frames it still holds are not lost.
    """
    for packet in demux(container, stream, counts):
        if packet.size and wanted is not None and not wanted(packet):
            continue
        for frame in decode_packet(packet, counts):
            if frame.pts is not None:
                yield frame.pts, frame
    if counts.truncated:
        for frame in flush(stream, counts):
            if frame.pts is not None:
                yield frame.pts, frame


def flush(stream: av.VideoStream, counts: DecodeCounts) -> list[av.VideoFrame]:
    """Frames still inside the decoder when the demuxer stopped early."""
    try:
        frames = stream.codec_context.decode(None)
    except (av.FFmpegError, EOFError):
        return []
    good = [f for f in frames if isinstance(f, av.VideoFrame) and not f.is_corrupt]
    counts.decoded += len(good)
    return good


def rotation_of(probe: ProbeResult | None) -> int:
    """The clockwise rotation a player applies to the video, 0 when the probe found none or
    a stage runs without a probe result (at a prompt)."""
    rotation = probe.rotation if probe is not None else None
    return rotation % 360 if rotation is not None else 0


#: Clockwise display rotation -> the PIL transpose that applies it (PIL turns anticlockwise).
_TRANSPOSE = {
    90: Image.Transpose.ROTATE_270,
    180: Image.Transpose.ROTATE_180,
    270: Image.Transpose.ROTATE_90,
}


def display_image(frame: av.VideoFrame, sar: Fraction | None, rotation: int) -> Image.Image:
    """The frame as a viewer sees it: RGB (any bit depth), square pixels, upright.

    Anamorphic video stores wide pixels; they are stretched (never squeezed) to keep detail.
    """
    image = Image.fromarray(frame.to_ndarray(format="rgb24"))
    if sar and sar > 0 and sar != 1:
        if sar > 1:
            size = (round(image.width * sar), image.height)
        else:
            size = (image.width, round(image.height / sar))
        image = image.resize(size, Image.Resampling.BICUBIC)
    if rotation in _TRANSPOSE:
        image = image.transpose(_TRANSPOSE[rotation])
    return image


def display_thumbnail(
    frame: av.VideoFrame, sar: Fraction | None, rotation: int, side: int
) -> Image.Image:
    """The frame as a viewer sees it, scaled in one libswscale pass so that its shorter side
    is at most `side`: for analysis at small size, converting full-resolution RGB first would
    cost more than the analysis."""
    width, height = frame.width, frame.height
    if sar and sar > 0:
        width = round(width * sar)
    scale = min(1.0, side / max(1, min(width, height)))
    small = frame.reformat(
        width=max(2, round(width * scale)), height=max(2, round(height * scale)), format="rgb24"
    )
    image = Image.fromarray(small.to_ndarray())
    if rotation in _TRANSPOSE:
        image = image.transpose(_TRANSPOSE[rotation])
    return image


def frames_between(
    path: Path,
    rotation: int,
    span_s: tuple[float, float],
    side: int,
    counts: DecodeCounts,
) -> Iterator[tuple[float, Image.Image]]:
    """Every frame shown within `span_s` (seconds, both ends included), B-frames too, as a
    viewer sees it at most `side` on its shorter side, with its time.

    Times count from the first frame that is not a B-frame, as the hashes stage counts its
    samples, so a time found here and a time stored there name the same frame. This decodes
    one short stretch on demand (from the keyframe before it), where storing a picture per
    sampled frame would cost more than any one look.

    Raises:
        StageError: corrupt_media when the container cannot be read; tool_timeout when the
            decode outlasts `counts.deadline`.
        StageSkipped: no_video when the file has no video stream.
    """
    start_s, stop_s = span_s
    with open_container(path, None) as container:
        stream = video_stream(container, one_thread=True)
        time_base = stream.time_base or Fraction(1, 90000)
        stream.codec_context.skip_frame = "BIDIR"
        origin = next((pts for pts, _ in frames_of(container, stream, counts)), None)
        if origin is None:
            return
        stream.codec_context.skip_frame = "DEFAULT"
        container.seek(
            origin + max(0, math.floor(start_s / time_base)), stream=stream, backward=True
        )
        for pts, frame in frames_of(container, stream, counts):
            t = float((pts - origin) * time_base)
            if t > stop_s + 1e-6:
                return
            if t >= start_s - 1e-6:
                yield t, display_thumbnail(frame, stream.sample_aspect_ratio, rotation, side)
