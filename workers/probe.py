"""The probe stage: what an item really is, decided from its bytes.

Evidence arrives under names that lie (a WhatsApp export renames everything, a web page saved
as `clip.mp4`, a JPEG called `.png`), and the store keeps no extension at all. So the probe
reads magic bytes, never a name, and then asks the decoder that will later do the work
(Pillow for photos, ffprobe for audio and video) whether it can read the header. Its `kind`
decides which stages follow, so a wrong answer here silently skips work downstream.
"""

from __future__ import annotations

import math
import os
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import PIL
import pillow_heif
from PIL import Image

from workers.archives import archive_format, document_container
from workers.base import (
    FailureReason,
    JsonRecord,
    Kind,
    Resources,
    Stage,
    StageConfig,
    StageEnvironment,
    StageError,
    StageInput,
    StageOutput,
)
from workers.containers import structure_flags
from workers.images import DEFAULT_MAX_PIXELS, UNREADABLE, check_pixel_limit, quiet_bomb_warning
from workers.tools import ToolLimits, ffprobe_json, tool_version

#: Bytes read for signature detection: enough for three MPEG-TS packets (3 x 188) and for the
#: ftyp box's compatible brands, small enough to cost nothing next to a decode.
_HEAD_BYTES = 4096

#: The fewest bytes a second of real audio or video takes in any container we read: below
#: every speech codec's lowest rate (AMR-NB 4.75 kbit/s, Opus 6 kbit/s), and below a still
#: screen's video. A claimed duration the bytes cannot hold at this rate is a lie, and it must
#: not become a stage's time budget (a 1,000-hour claim would grant ffmpeg two days).
MIN_BYTES_PER_MEDIA_S = 32


@dataclass(frozen=True)
class Family:
    """A container family recognised from magic bytes: how to name it and who decides its kind.

    `route` is "photo" (Pillow reads it), "av" (ffprobe's streams decide video or audio),
    "audio" (an audio-only container; ffprobe must still find a decodable audio stream) or
    "archive" (a zip or tar the expand stage opens; the probe only recognises it).
    """

    name: str
    mime: str
    route: str


_PHOTO = "photo"
_AV = "av"
_AUDIO = "audio"
_ARCHIVE = "archive"

#: ISO-BMFF major brands of still images (HEIF/HEIC/AVIF); any other brand is audio or video.
_PHOTO_BRANDS = frozenset(
    {"heic", "heix", "hevc", "heim", "heis", "hevm", "hevs", "mif1", "msf1", "avif"}
)
_AUDIO_BRANDS = frozenset({"M4A ", "M4B ", "M4P "})
#: QuickTime files from before ftyp existed start directly with one of these atoms.
_QUICKTIME_ATOMS = frozenset({b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"})
_ASF_GUID = bytes.fromhex("3026B2758E66CF11A6D900AA0062CE6C")
_BMP_HEADER_SIZES = frozenset({12, 40, 52, 56, 64, 108, 124})


def _ftyp_family(head: bytes) -> Family:
    brand = head[8:12].decode("latin-1")
    if brand.lower() in _PHOTO_BRANDS:
        name = {"avif": "avif", "mif1": "heif", "msf1": "heif"}.get(brand.lower(), "heic")
        return Family(name, f"image/{name}", _PHOTO)
    if brand in _AUDIO_BRANDS:
        return Family("m4a", "audio/mp4", _AUDIO)
    if brand.startswith("3g"):
        return Family("3gp", "video/3gpp", _AV)
    if brand == "qt  ":
        return Family("quicktime", "video/quicktime", _AV)
    return Family("mp4", "video/mp4", _AV)


def _is_mpeg_ts(head: bytes) -> bool:
    # 188-byte packets each start with the sync byte 0x47; M2TS (AVCHD) prefixes 4 bytes.
    for start, step in ((0, 188), (4, 192)):
        if len(head) >= start + 2 * step + 1 and all(
            head[start + i * step] == 0x47 for i in range(3)
        ):
            return True
    return False


def _is_adts(head: bytes) -> bool:
    # 12 sync bits, then layer == 00: AAC in ADTS framing.
    return len(head) >= 2 and head[0] == 0xFF and (head[1] & 0xF6) == 0xF0


def _is_mp3_frame(head: bytes) -> bool:
    # 11 sync bits, a version that is not "reserved" (01) and a layer that is not 00.
    if len(head) < 2 or head[0] != 0xFF or (head[1] & 0xE0) != 0xE0:
        return False
    return (head[1] >> 3) & 0x03 != 0x01 and (head[1] >> 1) & 0x03 != 0x00


_PREFIXES: tuple[tuple[bytes, Family], ...] = (
    (b"\xff\xd8\xff", Family("jpeg", "image/jpeg", _PHOTO)),
    (b"\x89PNG\r\n\x1a\n", Family("png", "image/png", _PHOTO)),
    (b"GIF87a", Family("gif", "image/gif", _PHOTO)),
    (b"GIF89a", Family("gif", "image/gif", _PHOTO)),
    (b"II*\x00", Family("tiff", "image/tiff", _PHOTO)),
    (b"MM\x00*", Family("tiff", "image/tiff", _PHOTO)),
    (b"\x1a\x45\xdf\xa3", Family("matroska", "video/x-matroska", _AV)),
    (b"FLV\x01", Family("flv", "video/x-flv", _AV)),
    (b"\x00\x00\x01\xba", Family("mpeg-ps", "video/mpeg", _AV)),
    (b"\x00\x00\x01\xb3", Family("mpeg-video", "video/mpeg", _AV)),
    (_ASF_GUID, Family("asf", "video/x-ms-asf", _AV)),
    (b"OggS", Family("ogg", "audio/ogg", _AV)),
    (b"fLaC", Family("flac", "audio/flac", _AUDIO)),
    (b"#!AMR", Family("amr", "audio/amr", _AUDIO)),
    (b"ID3", Family("mp3", "audio/mpeg", _AUDIO)),
    (b"caff", Family("caf", "audio/x-caf", _AUDIO)),
)

_RIFF_TYPES = {
    b"WEBP": Family("webp", "image/webp", _PHOTO),
    b"WAVE": Family("wav", "audio/wav", _AUDIO),
    b"AVI ": Family("avi", "video/x-msvideo", _AV),
}


def _by_archive(head: bytes) -> Family | None:
    found = archive_format(head)
    return None if found is None else Family(found.name, found.mime, _ARCHIVE)


def _by_prefix(head: bytes) -> Family | None:
    for magic, family in _PREFIXES:
        if head.startswith(magic):
            if family.name == "matroska" and b"webm" in head[:64]:
                return Family("webm", "video/webm", _AV)
            return family
    return None


def _by_container_header(head: bytes) -> Family | None:
    # Containers whose type sits a few bytes in: RIFF and FORM chunks, ISO-BMFF boxes, BMP.
    if head.startswith(b"RIFF") and len(head) >= 12:
        return _RIFF_TYPES.get(head[8:12])
    if head.startswith(b"FORM") and head[8:12] in {b"AIFF", b"AIFC"}:
        return Family("aiff", "audio/aiff", _AUDIO)
    if head.startswith(b"BM") and len(head) >= 18:
        (dib_size,) = struct.unpack_from("<I", head, 14)
        return Family("bmp", "image/bmp", _PHOTO) if dib_size in _BMP_HEADER_SIZES else None
    if len(head) >= 12 and head[4:8] == b"ftyp":
        return _ftyp_family(head)
    if len(head) >= 8 and head[4:8] in _QUICKTIME_ATOMS:
        return Family("quicktime", "video/quicktime", _AV)
    return None


def _by_frame_sync(head: bytes) -> Family | None:
    # Headerless streams, recognised by their packet or frame sync patterns.
    if _is_mpeg_ts(head):
        return Family("mpeg-ts", "video/mp2t", _AV)
    if _is_adts(head):
        return Family("aac", "audio/aac", _AUDIO)
    if _is_mp3_frame(head):
        return Family("mp3", "audio/mpeg", _AUDIO)
    return None


def detect_family(head: bytes) -> Family | None:
    """The container family of a file from its first bytes, or None when nothing we process.

    Order matters only where signatures nest: a tar starts with its first member's name,
    which may begin like any signature (`ID3 tags/`), so archives come first; RIFF and ftyp
    carry their real type a few bytes in, and frame sync (0xFF...) is tried after every
    signature that starts with 0xFF.
    """
    for detector in (_by_archive, _by_prefix, _by_container_header, _by_frame_sync):
        family = detector(head)
        if family is not None:
            return family
    return None


def describe_unsupported(head: bytes) -> str:
    """A short name for content we do not process, for the operator; never the file's name."""
    if not head:
        return "empty file"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    labelled: tuple[tuple[bytes, str], ...] = (
        (b"%pdf-", "pdf document"),
        (b"rar!\x1a\x07", "rar archive"),
        (b"7z\xbc\xaf\x27\x1c", "7z archive"),
        # A gzip or xz stream that holds no tar is compressed data of unknown content.
        (b"\x1f\x8b", "gzip data"),
        (b"\xfd7zxz\x00", "xz data"),
        (b"\x7felf", "elf executable"),
        (b"mz", "windows executable"),
        (b"<!doctype html", "html document"),
        (b"<html", "html document"),
        (b"<head", "html document"),
        (b"<svg", "svg document"),
        (b"<?xml", "xml document"),
        (b"\x00\x00\x01\x00", "icon image"),
    )
    for magic, label in labelled:
        if text.startswith(magic):
            if label == "xml document" and b"<svg" in text:
                return "svg document"
            if label == "xml document" and b"<html" in text:
                return "html document"
            return label
    return document_container(head) or _text_or_binary(head)


def _text_or_binary(head: bytes) -> str:
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return "unrecognised binary data"
    return "text document"


@dataclass(frozen=True)
class ProbeConfig(StageConfig):
    """Limits of the probe. The pixel limit follows Pillow's own bomb threshold.

    Pillow's MAX_IMAGE_PIXELS (a 1024 MiB 24-bit image divided by 4 and 3): real phone and
    camera photos stay far below it, decompression bombs far above.

    ffprobe reads headers only (its probe size and analysis window are bounded), and took at
    most 0.3 s on every file of the shared corpus under load; every second past that is a
    hanging file's, paid on each attempt by a worker and by the batch waiting with it. Ten
    seconds (was 120) keeps a margin of 30 and makes a hang cost little more than a video.
    """

    tool: ToolLimits = field(default_factory=lambda: ToolLimits(timeout_s=10.0))
    max_image_pixels: int = DEFAULT_MAX_PIXELS


@dataclass(frozen=True)
class ProbeResult(JsonRecord):
    """What the item is. `kind` is read by the pipeline to decide which stages follow.

    `ffprobe` keeps ffprobe's own description (minus the store path) because analysts and
    later stages want stream details we do not normalise; it is None for photos.
    `rotation` is the clockwise rotation, in degrees, a player applies to the video stream.
    """

    kind: str
    mime: str
    format: str
    size_bytes: int
    width: int | None
    height: int | None
    duration_s: float | None
    has_video: bool
    has_audio: bool
    rotation: int | None
    flags: list[str]
    ffprobe: dict[str, Any] | None


def duration_of(probe: ProbeResult | None) -> float:
    """Seconds of audio or video the probe measured; 0 when it could not tell, or when a stage
    runs without a probe result (at a prompt): time budgets then grant their minimum."""
    return float(probe.duration_s or 0.0) if probe is not None else 0.0


def _open_regular(path: Path) -> int:
    """The size of a regular file; anything else is refused (a FIFO would block a reader)."""
    try:
        info = os.stat(path)
    except OSError as error:
        detail = f"cannot stat the item: {error.strerror}"
        raise StageError(FailureReason.CORRUPT_MEDIA, detail) from None
    if not stat.S_ISREG(info.st_mode):
        raise StageError(FailureReason.UNSUPPORTED_TYPE, "not a regular file")
    return info.st_size


def _read_head(path: Path) -> bytes:
    with path.open("rb") as handle:
        return handle.read(_HEAD_BYTES)


def _pillow_header(path: Path, max_pixels: int) -> tuple[int, int, str]:
    """Width, height and Pillow's format name, from the header only (no pixel decode).

    Raises:
        StageError: resource_limit for a decompression bomb, corrupt_media for an unreadable
            header.
    """
    try:
        with quiet_bomb_warning(), Image.open(path) as image:
            width, height = image.size
            image_format = image.format or "unknown"
    except Image.DecompressionBombError as error:
        raise StageError(
            FailureReason.RESOURCE_LIMIT, f"decompression bomb: {error}", retryable=False
        ) from None
    except UNREADABLE as error:
        raise StageError(
            FailureReason.CORRUPT_MEDIA, f"image header unreadable: {type(error).__name__}"
        ) from None
    check_pixel_limit(width, height, max_pixels, image_format)
    return width, height, image_format


def _stream_rotation(stream: dict[str, Any]) -> int | None:
    """Clockwise display rotation of a video stream, 0/90/180/270, from its display matrix.

    ffprobe reports the matrix angle counter-clockwise (-90 for a phone held upright), the
    legacy `rotate` tag and exiftool report it clockwise (90); we store the clockwise one.
    The tag is text the file chose (a Matroska SimpleTag named `rotate` reaches ffprobe's
    stream tags as written), so "inf" rounds to OverflowError and "nan" to ValueError: no
    rotation, like any other value that is not a number.
    """
    for side_data in stream.get("side_data_list", []):
        if isinstance(side_data, dict) and "rotation" in side_data:
            try:
                return round(-float(side_data["rotation"])) % 360
            except (TypeError, ValueError, OverflowError):
                return None
    rotate = stream.get("tags", {}).get("rotate")
    if rotate is not None:
        try:
            return round(float(rotate)) % 360
        except (TypeError, ValueError, OverflowError):
            return None
    return None


def _decodable(stream: dict[str, Any]) -> bool:
    # ffprobe leaves codec_name out when no decoder knows the stream.
    return bool(stream.get("codec_name")) and stream.get("codec_name") != "none"


def _float_or_none(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number >= 0 else None


def _without_streams(
    kind: Kind,
    family: Family,
    size: int,
    dimensions: tuple[int | None, int | None] = (None, None),
    flags: list[str] | None = None,
) -> ProbeResult:
    """The result for content ffprobe is not asked about: a photo, whose header Pillow read,
    or an archive, known by its first bytes alone (whether it opens is the expand stage's
    question, since answering it means reading the whole archive)."""
    return ProbeResult(
        kind=kind.value,
        mime=family.mime,
        format=family.name,
        size_bytes=size,
        width=dimensions[0],
        height=dimensions[1],
        duration_s=None,
        has_video=False,
        has_audio=False,
        rotation=None,
        flags=flags or [],
        ffprobe=None,
    )


class ProbeStage(Stage[ProbeConfig, ProbeResult]):
    """Decides an item's kind from its content and describes its container and streams."""

    name: ClassVar[str] = "probe"
    #: 2: zip and tar (plain, gzip, xz) are archives, checked before media signatures, where 1
    #: refused them as unsupported (and could take a tar starting `ID3` for an MP3).
    #: 3: containers whose structure runs past their bytes are flagged `truncated` (2 flagged
    #: JPEG only, by its tail), appended content `trailing_data`/`appended_archive`, and a
    #: duration the bytes cannot hold `duration_implausible`, bounded by the bytes.
    version: ClassVar[str] = "3"
    kinds: ClassVar[frozenset[Kind]] = frozenset(Kind)
    requires: ClassVar[tuple[str, ...]] = ()
    decides_kind: ClassVar[bool] = True
    resources: ClassVar[Resources] = Resources(num_cpus=0.25, memory_mb=512)
    #: ffprobe costs ~160 ms and a Pillow header read ~1 ms: 16 items amortise a Ray call.
    batch_size: ClassVar[int] = 16

    def __init__(self, config: ProbeConfig | None = None) -> None:
        super().__init__(config or ProbeConfig())

    def setup(self, env: StageEnvironment | None = None) -> None:
        """Teach Pillow to read HEIC/HEIF headers (it reads AVIF natively)."""
        del env  # nothing outside the item is needed
        pillow_heif.register_heif_opener()

    def tool_versions(self) -> dict[str, str]:
        """ffprobe, Pillow and pillow-heif versions: each can change what a header says."""
        return {
            "ffprobe": tool_version("ffprobe"),
            "pillow": PIL.__version__,
            "pillow_heif": pillow_heif.__version__,
        }

    def run(self, item: StageInput, workdir: Path) -> StageOutput[ProbeResult]:
        """Probe one item.

        Raises:
            StageError: unsupported_type for content we do not process (naming what it looks
                like), resource_limit for decompression bombs, corrupt_media for headers no
                decoder can read or media without a decodable stream, and ffprobe's
                tool_timeout / tool_crash.
        """
        del workdir  # the probe writes nothing
        size = _open_regular(item.path)
        head = _read_head(item.path)
        family = detect_family(head)
        if family is None:
            raise StageError(FailureReason.UNSUPPORTED_TYPE, describe_unsupported(head))
        if family.route == _PHOTO:
            return StageOutput(self._probe_photo(item.path, family, size))
        if family.route == _ARCHIVE:
            return StageOutput(_without_streams(Kind.ARCHIVE, family, size))
        return StageOutput(self._probe_av(item.path, family, size))

    def _probe_photo(self, path: Path, family: Family, size: int) -> ProbeResult:
        # Registering is idempotent and cheap; it makes run() work without setup() at a prompt.
        pillow_heif.register_heif_opener()
        width, height, _ = _pillow_header(path, self.config.max_image_pixels)
        flags = structure_flags(family.name, path)
        return _without_streams(Kind.PHOTO, family, size, (width, height), flags)

    def _probe_av(self, path: Path, family: Family, size: int) -> ProbeResult:
        flags = structure_flags(family.name, path)
        try:
            described = ffprobe_json(path, self.config.tool)
        except StageError as error:
            if "truncated" not in flags or error.reason is not FailureReason.CORRUPT_MEDIA:
                raise
            # Say why: the part that would have described the media is missing.
            raise StageError(
                error.reason, f"truncated: the {family.name} structure runs past the end of the"
                f" file; {error.detail}", retryable=error.retryable,
            ) from None  # fmt: skip
        fmt = described.get("format")
        if isinstance(fmt, dict):
            # The store path says nothing about the evidence and must not leak into results.
            fmt.pop("filename", None)
        streams = [s for s in described.get("streams", []) if isinstance(s, dict)]
        video = [
            s
            for s in streams
            if s.get("codec_type") == "video"
            and _decodable(s)
            and not s.get("disposition", {}).get("attached_pic")
        ]
        audio = [s for s in streams if s.get("codec_type") == "audio" and _decodable(s)]
        has_video = bool(video) and family.route == _AV
        has_audio = bool(audio)
        if not has_video and not has_audio:
            raise StageError(
                FailureReason.CORRUPT_MEDIA, f"{family.name}: no decodable audio or video stream"
            )
        kind = Kind.VIDEO if has_video else Kind.AUDIO
        mime = family.mime
        if kind is Kind.AUDIO and mime.startswith("video/"):
            mime = "audio/" + mime.removeprefix("video/")
        elif kind is Kind.VIDEO and mime.startswith("audio/"):
            mime = "video/" + mime.removeprefix("audio/")
        duration = _float_or_none(fmt.get("duration")) if isinstance(fmt, dict) else None
        if duration is None:
            durations = [d for s in streams if (d := _float_or_none(s.get("duration"))) is not None]
            duration = max(durations, default=None)
        if duration is not None and duration * MIN_BYTES_PER_MEDIA_S > size:
            # ffprobe's own output keeps the claim; the result holds what the bytes can hold.
            flags.append("duration_implausible")
            duration = size / MIN_BYTES_PER_MEDIA_S
        first_video = video[0] if video else {}
        width = first_video.get("width")
        height = first_video.get("height")
        return ProbeResult(
            kind=kind.value,
            mime=mime,
            format=family.name,
            size_bytes=size,
            width=width if isinstance(width, int) else None,
            height=height if isinstance(height, int) else None,
            duration_s=duration,
            has_video=has_video,
            has_audio=has_audio,
            rotation=_stream_rotation(first_video) if video else None,
            flags=flags,
            ffprobe=described,
        )
