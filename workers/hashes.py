"""The hashes stage: perceptual hashes of photos, of a video's keyframes, and of its frames
sampled once a second, so that copies made by other hands can be linked.

Copies of evidence arrive recompressed, resized, flipped, letterboxed and cropped. PDQ (256
bits, with a quality score) survives recompression and resizing; what it does not survive is
handled here, before hashing, because matching can only compare what was hashed:

- Uniform borders (letterbox and pillarbox bars, mats of any colour) are trimmed first, so a
  copy with bars hashes like the copy without.
- Flips and quarter turns: the eight dihedral PDQ hashes of each picture are kept (PDQ gives
  them in one pass), so a mirrored copy is found by querying with them.
- Mild crops move PDQ far (4% per side moved it 58-80 bits on real photos). A 5% centre crop
  of each picture is stored beside the whole, and a photo also carries "crop probes": PDQ of
  its crops on a grid of 0, 2.5 and 5% per side (80 of them, on a 192-pixel copy). A copy
  cropped by c on a side is the original's 5% crop further cropped by 5% - c there, within
  1.25% of a grid point, so one probe of the copy lands near the original's stored crop.
  Probes are searched, never stored in the index, and a link they find is confirmed with
  keypoints before it is made. On the corpus (`qarina eval dupes`) this links 79 of 96
  copies cropped by up to 5% per side to their originals (79 of the 88 whose pictures are
  not flat), with no wrong link; the probes cost 80-90 ms of the 180-200 ms the stage
  spends on a 12 MP photo (`qarina bench hashes`).
- Clips cut out of a longer video: frames sampled at a fixed interval carry their times, and
  matching looks for many frames agreeing on one time offset.

pHash (64 bits, `imagehash`) is kept beside PDQ for tools that speak it. Hashes are hex in
ThreatExchange's layout (the first bit of PDQ's vector is the most significant).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, ClassVar, Self

import av
import imagehash
import numpy as np
import numpy.typing as npt
import pdqhash
import PIL
import pillow_heif
from PIL import Image

from workers import pdq_crops
from workers.base import (
    CPU_NODE,
    FailureReason,
    JsonRecord,
    Kind,
    Resources,
    Stage,
    StageConfig,
    StageError,
    StageInput,
    StageOutput,
    StageSkipped,
)
from workers.images import DEFAULT_MAX_PIXELS, decode_for_analysis, pixels
from workers.keyframes import KeyframesResult
from workers.probe import ProbeResult, duration_of
from workers.tools import package_version
from workers.video import (
    DecodeCounts,
    budgeted_counts,
    decoder_versions,
    display_thumbnail,
    frames_of,
    open_container,
    rotation_of,
    video_stream,
)

#: Mean grey-level step from a bar's colour to the first line of content: bars end at a hard
#: edge (79 on ThreatExchange's letterboxed sample), dark photo backgrounds fade out. With 24
#: and a tolerance of 10, of the 175 decodable corpus pictures the letterboxed one loses its
#: bars, 8 lose thin edge lines of 1-11 px (scanner mats, a grey fill), and the rest nothing.
_BAR_EDGE = 24.0

#: Order of pdqhash.compute_dihedral's hashes, named as ThreatExchange names them.
DIHEDRAL = ("r0", "r90", "r180", "r270", "flipv", "fliph", "r90flipv", "r90fliph")


@dataclass(frozen=True)
class HashesConfig(StageConfig):
    """Options of the hashes stage.

    `analysis_side`: the shorter side pictures are decoded at. PDQ reduces every picture to
    64x64 and pHash to 32x32, so more pixels only cost time; 512 keeps PDQ within a few bits
    of the full-resolution hash (the benchmark measures it).
    `crop_fractions`: centre crops (fraction cut from each side) hashed besides the whole.
    `probe_steps`: per-side crop fractions whose every combination is hashed as a crop probe
    of a photo, on a copy whose shorter side is `probe_side` (PDQ sees 64x64 anyway).
    `border_tolerance`: a line is part of a border when nearly all of it lies within this many
    grey levels of the border's colour; `border_max_fraction` caps what one side may lose, so
    a dark night photo is not trimmed to nothing.
    `sample_interval_s`: video frames sampled for video-to-video matching; `max_samples`
    widens the interval for very long videos so a result stays small.
    """

    analysis_side: int = 512
    crop_fractions: tuple[float, ...] = (0.05,)
    probe_steps: tuple[float, ...] = (0.0, 0.025, 0.05)
    probe_side: int = 192
    border_tolerance: int = 10
    border_max_fraction: float = 0.4
    max_pixels: int = DEFAULT_MAX_PIXELS
    sample_interval_s: float = 1.0
    max_samples: int = 3600
    #: Video decoding budget, as in the keyframes stage: at least `min_budget_s`, else
    #: `budget_per_media_s` seconds per second of video.
    min_budget_s: float = 120.0
    budget_per_media_s: float = 0.5


@dataclass(frozen=True)
class HashEntry(JsonRecord):
    """One hash of one picture: which picture, which variant of it, and its hashes.

    `source` (photo | keyframe | sample), `variant` (`full`, or `crop5` for a centre crop of
    5% per side), `pdq` (64 hex digits), `quality` (0-100; under 50 the hash says little and
    is never matched). `t`: seconds into the video (None for a photo); `artifact`: the
    keyframe's SHA-256 (keyframes only). `full` entries of photos and keyframes also carry
    `phash` (16 hex digits), `dihedral` (the other seven PDQ orientations, in DIHEDRAL order
    after r0) and `border` (fractions trimmed from left, top, right, bottom); those of photos
    also `probes`: the crop probes' PDQ hashes, concatenated.

    What does not apply is None here and absent from the JSON (not null): stored results are
    hashed into the custody chain, and a sample's entry must stay as small as it is, since a
    video has thousands.
    """

    source: str
    variant: str
    pdq: str
    quality: int
    t: float | None = None
    artifact: str | None = None
    phash: str | None = None
    dihedral: tuple[str, ...] | None = None
    border: tuple[float, float, float, float] | None = None
    probes: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The entry as stored: keys in the order the stage first wrote them, None left out."""
        optional = {
            "phash": self.phash,
            "dihedral": None if self.dihedral is None else list(self.dihedral),
            "border": None if self.border is None else list(self.border),
            "probes": self.probes,
            "t": self.t,
            "artifact": self.artifact,
        }
        data: dict[str, Any] = {
            "source": self.source,
            "variant": self.variant,
            "pdq": self.pdq,
            "quality": self.quality,
        }
        data.update((key, value) for key, value in optional.items() if value is not None)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        lists = {key: tuple(data[key]) for key in ("dihedral", "border") if key in data}
        return cls(**{**data, **lists})


@dataclass(frozen=True)
class HashesResult(JsonRecord):
    """Every hash of the item, each with where it came from (see `HashEntry`)."""

    hashes: list[HashEntry]
    keyframes: int
    samples: int
    corrupt_frames: int
    flags: list[str]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        return cls(**{**data, "hashes": [HashEntry.from_json(entry) for entry in data["hashes"]]})


def pdq_hex(bits: npt.NDArray[Any]) -> str:
    """A hash bit vector as hex, the first bit most significant (ThreatExchange's layout)."""
    return np.packbits(np.asarray(bits, dtype=np.uint8)).tobytes().hex()


def hex_distance(first: str, second: str) -> int:
    """Hamming distance between two hashes written in hex."""
    return (int(first, 16) ^ int(second, 16)).bit_count()


def _border_run(grey: npt.NDArray[np.int16], tolerance: int, limit: int) -> int:
    """How many leading rows of `grey` form a bar: one flat colour (that of row 0), ending
    at a sharp edge. A dark or white background in a photo fades into its subject instead,
    and trimming it would make a copy cropped by a few percent trim differently."""
    colour = int(np.median(grey[0]))
    deviation = np.abs(grey[: limit + 1] - colour)
    flat = (deviation <= tolerance).mean(axis=1) >= 0.99
    run = len(flat) if flat.all() else int(np.argmin(flat))
    if run == 0 or run > limit:
        return 0
    # The line right after a bar may be a blend of bar and content after scaling: look at two.
    step = max(float(deviation[line].mean()) for line in range(run, min(run + 2, len(deviation))))
    return run if step >= _BAR_EDGE else 0


def border_box(
    image: Image.Image, tolerance: int, max_fraction: float
) -> tuple[int, int, int, int]:
    """The box (left, top, right, bottom) inside uniform bars on any side; the whole image
    when it is uniform through and through (a flat picture has no border, only content)."""
    grey = np.asarray(image.convert("L"), dtype=np.int16)
    height, width = grey.shape
    limit_h, limit_w = int(height * max_fraction), int(width * max_fraction)
    if limit_h < 1 or limit_w < 1:
        return 0, 0, width, height
    top = _border_run(grey, tolerance, limit_h)
    bottom = _border_run(grey[::-1], tolerance, limit_h)
    left = _border_run(grey.T, tolerance, limit_w)
    right = _border_run(grey.T[::-1], tolerance, limit_w)
    return left, top, width - right, height - bottom


def _variant_name(fraction: float) -> str:
    return f"crop{round(fraction * 100)}"


def _crop_box(width: int, height: int, sides: tuple[float, ...]) -> tuple[int, int, int, int]:
    """The box (left, top, right, bottom) left when fractions (left, top, right, bottom) of a
    picture's size are cut away."""
    left, top, right, bottom = sides
    return (
        round(width * left), round(height * top),
        width - round(width * right), height - round(height * bottom),
    )  # fmt: skip


def crop_sides(image: Image.Image, sides: tuple[float, ...]) -> Image.Image:
    """The picture with fractions (left, top, right, bottom) of its size cut away."""
    return image.crop(_crop_box(*image.size, sides))


def crop_probes(image: Image.Image, config: HashesConfig) -> str:
    """PDQ of every grid crop of the picture except the whole, as one hex string.

    All crops are hashed together by `workers.pdq_crops` (one product of linear operators
    instead of a pdqhash call per crop): 80 crops cost about 1 ms instead of 27 on a
    64-320 px photo, where they were four fifths of the stage. The bits are pdqhash's except
    where a coefficient lies within rounding of the median, which on the shared corpus
    happened only on flat pictures of quality under 50, never matched anyway.
    """
    scale = config.probe_side / max(1, min(image.size))
    small = image
    if scale < 1:
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        small = image.resize(size, Image.Resampling.BILINEAR)
    array = pixels(small)
    height, width = array.shape[:2]
    boxes = [
        _crop_box(width, height, sides)
        for sides in itertools.product(config.probe_steps, repeat=4)
        if any(sides)
    ]
    return "".join(map(pdq_hex, pdq_crops.crop_hashes(pdq_crops.luma(array), boxes)))


def hash_picture(
    image: Image.Image, config: HashesConfig, *, source: str, full: bool, probes: bool = False
) -> list[HashEntry]:
    """PDQ of a picture after trimming its borders, and of its centre crops.

    `full` adds pHash, the dihedral PDQ hashes and the crops; sampled video frames, which
    are many, get the plain PDQ hash only. `probes` adds the crop probes (photos).
    """
    box = border_box(image, config.border_tolerance, config.border_max_fraction)
    content = image.crop(box) if box != (0, 0, *image.size) else image
    if not full:
        vector, quality = pdqhash.compute(pixels(content))
        return [HashEntry(source, "full", pdq_hex(vector), int(quality))]
    vectors, quality = pdqhash.compute_dihedral(pixels(content))
    width, height = image.size
    entries = [
        HashEntry(
            source,
            "full",
            pdq_hex(vectors[0]),
            int(quality),
            phash=str(imagehash.phash(content)),
            dihedral=tuple(pdq_hex(vector) for vector in vectors[1:]),
            border=(
                round(box[0] / width, 4),
                round(box[1] / height, 4),
                round(1 - box[2] / width, 4),
                round(1 - box[3] / height, 4),
            ),
            probes=crop_probes(content, config) if probes else None,
        )
    ]
    for fraction in config.crop_fractions:
        vector, crop_quality = pdqhash.compute(pixels(crop_sides(content, (fraction,) * 4)))
        entries.append(
            HashEntry(source, _variant_name(fraction), pdq_hex(vector), int(crop_quality))
        )
    return entries


class HashesStage(Stage[HashesConfig, HashesResult]):
    """Perceptual hashes (PDQ, pHash) of photos and of videos' keyframes and sampled frames."""

    name: ClassVar[str] = "hashes"
    #: 2: crop probes hashed together by `workers.pdq_crops`, bit for bit pdqhash's except
    #: within rounding of the median (flat, low-quality pictures).
    version: ClassVar[str] = "2"
    kinds: ClassVar[frozenset[Kind]] = frozenset({Kind.PHOTO, Kind.VIDEO})
    requires: ClassVar[tuple[str, ...]] = ("probe", "keyframes")
    #: Photos decode in a few tens of milliseconds at analysis size: batch them like metadata.
    resources: ClassVar[Resources] = Resources(num_cpus=1.0, memory_mb=1024, prefers=CPU_NODE)
    batch_size: ClassVar[int] = 8

    def __init__(self, config: HashesConfig | None = None) -> None:
        super().__init__(config or HashesConfig())

    @classmethod
    def requires_for(cls, kind: Kind) -> tuple[str, ...]:
        """Photos need the probe only; videos also need their keyframes."""
        return ("probe",) if kind is Kind.PHOTO else cls.requires

    def tool_versions(self) -> dict[str, str]:
        """The hashing libraries and the decoders that feed them."""
        return {
            "pdqhash": package_version("pdqhash") or "unknown",
            "imagehash": package_version("imagehash") or "unknown",
            "pillow": PIL.__version__,
            "pillow_heif": pillow_heif.__version__,
            **decoder_versions(),
        }

    def run(self, item: StageInput, workdir: Path) -> StageOutput[HashesResult]:
        """Hash a photo, or a video's keyframes and sampled frames.

        Raises:
            StageSkipped: no_video for a video whose keyframes stage found no video stream.
            StageError: resource_limit for a decompression bomb; corrupt_media for a photo
                that does not decode; decode_error when not one video frame decodes.
        """
        if item.kind is Kind.PHOTO:
            decoded = decode_for_analysis(
                item.path, min_side=self.config.analysis_side, max_pixels=self.config.max_pixels
            )
            entries = hash_picture(
                decoded.image, self.config, source="photo", full=True, probes=True
            )
            return StageOutput(HashesResult(entries, 0, 0, 0, decoded.flags))
        keyframes = item.upstream_result("keyframes", KeyframesResult)
        if keyframes is None:
            raise StageSkipped("no_video")
        entries = self._keyframe_hashes(keyframes, item.artifacts)
        probe = item.upstream_result("probe", ProbeResult)
        duration = duration_of(probe)
        config = self.config
        counts = budgeted_counts(duration, config.min_budget_s, config.budget_per_media_s)
        samples = self._sample_hashes(item.path, rotation_of(probe), duration, counts)
        flags = ["truncated"] if counts.truncated else []
        if counts.out_of_time:
            flags.append("time_budget_reached")
        if not samples and not entries:
            raise StageError(FailureReason.DECODE_ERROR, "not one video frame decodes")
        return StageOutput(
            HashesResult(
                entries + samples,
                len(keyframes.frames),
                len(samples),
                counts.corrupt,
                flags,
            )
        )

    def _keyframe_hashes(
        self, keyframes: KeyframesResult, artifacts: Mapping[str, Path]
    ) -> list[HashEntry]:
        entries = []
        for frame in keyframes.frames:
            path = artifacts.get(frame.artifact)
            if path is None:
                raise StageError(
                    FailureReason.STORE_ERROR, f"keyframe {frame.artifact[:16]} is not stored"
                )
            decoded = decode_for_analysis(
                path, min_side=self.config.analysis_side, max_pixels=self.config.max_pixels
            )
            for entry in hash_picture(decoded.image, self.config, source="keyframe", full=True):
                entries.append(dataclasses.replace(entry, t=frame.t, artifact=frame.artifact))
        return entries

    def _sample_hashes(
        self, path: Path, rotation: int, duration: float, counts: DecodeCounts
    ) -> list[HashEntry]:
        """PDQ of one frame per interval, decoding B-frames and loop filter skipped (PDQ works
        at 64x64, where neither shows)."""
        config = self.config
        interval = max(config.sample_interval_s, duration / config.max_samples)
        entries = []
        with open_container(path, None) as container:
            stream = video_stream(container)
            stream.codec_context.options = {"skip_loop_filter": "all"}
            stream.codec_context.skip_frame = "BIDIR"
            try:
                for t, frame in _sampled(container, stream, counts, interval):
                    image = display_thumbnail(
                        frame, stream.sample_aspect_ratio, rotation, config.analysis_side
                    )
                    for entry in hash_picture(image, config, source="sample", full=False):
                        entries.append(dataclasses.replace(entry, t=round(t, 3)))
            except StageError as error:
                if error.reason is not FailureReason.TOOL_TIMEOUT or not entries:
                    raise
                counts.out_of_time = True  # keep what was sampled; the result says it stopped
        return entries


def _sampled(
    container: av.container.InputContainer,
    stream: av.VideoStream,
    counts: DecodeCounts,
    interval: float,
) -> Iterator[tuple[float, av.VideoFrame]]:
    """The first decoded frame at or after each multiple of `interval`, with its time."""
    time_base = stream.time_base or Fraction(1, 90000)
    start: int | None = None
    due = 0.0
    for pts, frame in frames_of(container, stream, counts, lambda _: True):
        start = pts if start is None else start
        t = float((pts - start) * time_base)
        if t + 1e-6 >= due:
            yield t, frame
            due = (math.floor(t / interval + 1e-6) + 1) * interval
