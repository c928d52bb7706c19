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
- Captions, banners, logos and watermarks laid over up to 15% of a side leave the inner
  part of the picture untouched and in place, measured from the edges of the picture as it
  came (not the trimmed one: a flat bar laid over a side is trimmed as a border), so each
  photo and keyframe stores PDQ of that part (`inner15`) beside the whole. A strip added
  on a side (a caption: flat colour with text, which the trimmer leaves) is looked for on
  every side, and where one is found, the picture without it is stored too (`strip`):
  that hashes like the original, whichever of the two arrives first (one entry per strip
  found, and one without them all where there are several: a photo's own plain backdrop
  may pass for a strip in one copy and not in another). A `strip` entry meets another
  variant, so its link is confirmed with keypoints like a crop's. On the corpus (`qarina
  eval dupes`: 352 copies of 22 photos, each arriving before and after its original,
  settings chosen on half of the photos) every copy with a flat bar added, or a caption,
  bar, logo or watermark laid over it, links, and 84 of 88 with a caption strip added
  (missed: white text above a white picture, which is no strip to find, and a sky too plain
  for keypoints), none to another picture; the stage spends 8 ms more per photo (median,
  65 against 57) and stores 3.0 index entries per photo instead of 1.9.
- Clips cut out of a longer video, re-encoded at another frame rate or played faster or
  slower: frames sampled at a fixed interval carry their times, and matching looks for many
  of them agreeing on one speed and time offset.
- Stills taken from anywhere in a video: between samples, every frame whose picture moved
  on by more than a few bits is hashed too ("frame" entries, see `_MotionGate`), so a frame
  of a moving shot is never far from a hash; the match is then confirmed on the frame
  decoded again at that time (`pipelines.dedup.stills`), never on a stored picture.

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

#: A caption strip's first line and the line under its text (padding) are at least this
#: share of its colour; a line of text at least `_STRIP_TEXT` (less, and the strip has
#: ended); the picture's first lines under `_STRIP_PICTURE`. With `strip_tolerance`, chosen
#: on the choosing half of `qarina eval dupes`'s photos: of their 66 copies with a strip or
#: bar added, 63 hash like their originals with or without the strip (where the three others
#: fail, white text on white is no strip to find), against 58 with the first guess (0.9,
#: 0.15, 0.5 and 20 levels); no original there has a strip found. A photo's own flat sky or
#: wall ending at a sharp line may pass for a strip, which costs an index entry, no link.
_STRIP_PADDING = 0.85
_STRIP_TEXT = 0.15
_STRIP_PICTURE = 0.6

#: Names of the variants for overlays (`inner15`, with the percentage of `cover_fraction`)
#: and for added strips.
INNER = "inner"
STRIPPED = "strip"

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
    `cover_fraction`: how much of a side a caption, banner, logo or watermark laid over a
    picture may cover: the part further in from every edge is hashed as the `inner` variant.
    `strip_tolerance`: a caption strip's background lies within this many levels (in each
    colour channel) of its colour; `strip_max_fraction` caps the strip looked for on a side.
    `sample_interval_s`: video frames sampled for video-to-video matching; `max_samples`
    widens the interval for very long videos so a result stays small.
    """

    analysis_side: int = 512
    crop_fractions: tuple[float, ...] = (0.05,)
    probe_steps: tuple[float, ...] = (0.0, 0.025, 0.05)
    probe_side: int = 192
    border_tolerance: int = 10
    border_max_fraction: float = 0.4
    cover_fraction: float = 0.15
    strip_tolerance: int = 36
    strip_max_fraction: float = 0.2
    max_pixels: int = DEFAULT_MAX_PIXELS
    sample_interval_s: float = 1.0
    max_samples: int = 3600
    #: Video decoding budget, as in the keyframes stage: at least `min_budget_s`, else
    #: `budget_per_media_s` seconds per second of video.
    min_budget_s: float = 120.0
    budget_per_media_s: float = 0.5
    #: Between samples, a frame whose PDQ moved more than this from the last frame hashed is
    #: hashed too (see `_MotionGate`): 16 leaves 15 bits of the match threshold for what a
    #: copy adds (recompression, resizing). At most one such frame per `frame_min_gap_s`
    #: (every frame up to 20 fps), and at most `max_samples` of them in a video.
    frame_change_bits: int = 16
    frame_min_gap_s: float = 0.05
    #: Shorter side "frame" entries are hashed at (see `frame_hashes`).
    frame_side: int = 256

    def interval_for(self, duration_s: float) -> float:
        """Seconds between a video's samples: the interval, widened for very long videos."""
        return max(self.sample_interval_s, duration_s / self.max_samples)


@dataclass(frozen=True)
class HashEntry(JsonRecord):
    """One hash of one picture: which picture, which variant of it, and its hashes.

    `source` (photo | keyframe | sample | frame: see `frame_hashes`), `variant` (`full`;
    `crop5` for a centre crop of 5% per side; for photos and keyframes also `inner15`, what
    lies 15% in from every edge of the picture as it came, and `strip`, the picture without
    a caption strip or banner found on it, one entry per strip and one without them all),
    `pdq` (64 hex digits),
    `quality` (0-100; under 50 the hash says little and is never matched). `t`: seconds
    into the video (None for a photo); `artifact`: the keyframe's SHA-256 (keyframes only).
    `full` entries of photos and keyframes also carry `phash` (16 hex digits), `dihedral`
    (the other seven PDQ orientations, in DIHEDRAL order after r0) and `border` (fractions
    trimmed from left, top, right, bottom); those of photos also `probes`: the crop probes'
    PDQ hashes, concatenated.

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


def inner_box(
    size: tuple[int, int], box: tuple[int, int, int, int], fraction: float
) -> tuple[int, int, int, int]:
    """`box` less `fraction` of the picture's size at every edge of the picture as it came.

    An overlay moves no pixel: what a caption, banner, logo or watermark covering up to
    `fraction` of a side leaves untouched lies at the same place in the copy as in the
    original when measured from the picture's edges, whether or not the trimmer took a flat
    bar laid over one side for a border; measured from the trimmed box it would not.
    """
    inner = _crop_box(*size, (fraction,) * 4)
    return (
        max(box[0], inner[0]), max(box[1], inner[1]),
        min(box[2], inner[2]), min(box[3], inner[3]),
    )  # fmt: skip


def _strip_run(rgb: npt.NDArray[np.uint8], tolerance: int, limit: int) -> int:
    """How many leading rows of `rgb` form a caption strip or banner: a flat colour (that of
    row 0) with text or a logo on it, ending where the picture begins.

    Unlike a border's, a strip's rows need not be uniform, only mostly its colour, so where
    it ends is told by what text leaves around it: a row mostly of the strip's colour (the
    padding under the text), then rows that share little of it and differ from it sharply
    (the picture). Of such ends the last before a row with almost none of the colour wins,
    since a line of text followed by a second one looks like an end too.
    """
    colour = np.median(rgb[0], axis=0).round().astype(np.int16)
    # Channel by channel: a maximum over an axis of three is many times slower.
    channels = [np.abs(rgb[..., at].astype(np.int16) - colour[at]) for at in range(3)]
    deviation = np.maximum(np.maximum(channels[0], channels[1]), channels[2])
    share = (deviation <= tolerance).mean(axis=1)
    if len(share) < 4 or share[0] < _STRIP_PADDING:
        return 0
    level = deviation.mean(axis=1)
    left_colour = np.flatnonzero(share < _STRIP_TEXT)
    last = min(limit, len(share) - 3, int(left_colour[0]) if len(left_colour) else limit)
    ends = np.arange(1, last + 1)
    # The line at the edge may be a blend of strip and picture after scaling: judge the two
    # lines after it, and cut after it when it is more strip than picture.
    found = (
        (share[ends - 1] >= _STRIP_PADDING)
        & (np.maximum(share[ends + 1], share[ends + 2]) < _STRIP_PICTURE)
        & ((level[ends + 1] + level[ends + 2]) / 2 >= _BAR_EDGE)
    )
    if not found.any():
        return 0
    end = int(ends[found][-1])
    return end if share[end] < _STRIP_PICTURE else end + 1


def strip_box(image: Image.Image, tolerance: int, max_fraction: float) -> tuple[int, int, int, int]:
    """The box (left, top, right, bottom) inside caption strips or banners on any side, each
    at most `max_fraction` of its side. The border trimmer leaves them: the text on them is
    not uniform."""
    rgb = pixels(image if image.mode == "RGB" else image.convert("RGB"))
    height, width = rgb.shape[:2]
    limit_h, limit_w = int(height * max_fraction), int(width * max_fraction)
    if limit_h < 1 or limit_w < 1:
        return 0, 0, width, height
    columns = rgb.transpose(1, 0, 2)
    top, bottom, left, right = (
        _strip_run(lines[: limit + 3], tolerance, limit)
        for lines, limit in (
            (rgb, limit_h), (rgb[::-1], limit_h), (columns, limit_w), (columns[::-1], limit_w)
        )
    )  # fmt: skip
    return left, top, width - right, height - bottom


def _without_strips(
    image: Image.Image, box: tuple[int, int, int, int], config: HashesConfig
) -> list[Image.Image]:
    """The picture without the caption strips or banners found on it, the borders of the
    rest trimmed: without each one alone, and, where several are found, without them all.

    Each alone, because a photo's own flat edge (a plain backdrop, a sky) may pass for a
    strip in one copy and not in another: a copy with a caption still hashes like its
    original once the caption alone is cut. A cut that leaves the trimmed whole (the flat
    bars the trimmer takes, ending a line or so apart: under 1% of a side, which PDQ does not
    see) gives nothing.
    """
    width, height = image.size
    found = strip_box(image, config.strip_tolerance, config.strip_max_fraction)
    whole = (0, 0, width, height)
    sides = [side for side in range(4) if found[side] != whole[side]]
    cuts = [{side} for side in sides] + ([set(sides)] if len(sides) > 1 else [])
    sizes = (width, height, width, height)
    kept: list[tuple[int, int, int, int]] = []
    for cut in cuts:
        x0, y0, x1, y1 = (found[at] if at in cut else whole[at] for at in range(4))
        left, top, right, bottom = border_box(
            image.crop((x0, y0, x1, y1)), config.border_tolerance, config.border_max_fraction
        )
        rest = (x0 + left, y0 + top, x0 + right, y0 + bottom)
        if all(
            any(abs(a - b) > size / 100 for a, b, size in zip(rest, other, sizes, strict=True))
            for other in [box, *kept]
        ):
            kept.append(rest)
    return [image.crop(rest) for rest in kept]


def hash_picture(
    image: Image.Image, config: HashesConfig, *, source: str, probes: bool = False
) -> list[HashEntry]:
    """PDQ of a stored picture (photo or keyframe) after trimming its borders, with pHash and
    its dihedral PDQ hashes, and PDQ of its variants: the centre crops, the inner part that
    overlays on its sides leave alone, and the picture without the caption strip or banner
    added to it where one is found. `probes` adds the crop probes (photos).
    """
    box = border_box(image, config.border_tolerance, config.border_max_fraction)
    content = image.crop(box) if box != (0, 0, *image.size) else image
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
    variants = [
        (_variant_name(fraction), crop_sides(content, (fraction,) * 4))
        for fraction in config.crop_fractions
    ]
    inner = inner_box(image.size, box, config.cover_fraction)
    variants.append((f"{INNER}{round(config.cover_fraction * 100)}", image.crop(inner)))
    variants += [(STRIPPED, picture) for picture in _without_strips(image, box, config)]
    for variant, picture in variants:
        vector, variant_quality = pdqhash.compute(pixels(picture))
        entries.append(HashEntry(source, variant, pdq_hex(vector), int(variant_quality)))
    return entries


class HashesStage(Stage[HashesConfig, HashesResult]):
    """Perceptual hashes (PDQ, pHash) of photos and of videos' keyframes and sampled frames."""

    name: ClassVar[str] = "hashes"
    #: 2: crop probes hashed together by `workers.pdq_crops`, bit for bit pdqhash's except
    #: within rounding of the median (flat, low-quality pictures).
    #: 3: photos and keyframes also hash their inner part (`inner15`, for overlays) and,
    #: where a caption strip or banner is found, the picture without it (`strip`); videos
    #: also hash the frames between samples where the picture moved ("frame" entries).
    version: ClassVar[str] = "3"
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
            entries = hash_picture(decoded.image, self.config, source="photo", probes=True)
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
                sum(entry.source == "sample" for entry in samples),
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
            for entry in hash_picture(decoded.image, self.config, source="keyframe"):
                entries.append(dataclasses.replace(entry, t=frame.t, artifact=frame.artifact))
        return entries

    def _sample_hashes(
        self, path: Path, rotation: int, duration: float, counts: DecodeCounts
    ) -> list[HashEntry]:
        """PDQ of one frame per interval ("sample"), and of frames between whose picture has
        moved on from the last one hashed ("frame", see `_MotionGate`), decoding B-frames and
        loop filter skipped (PDQ works at 64x64, where neither shows)."""
        config = self.config
        gate = _MotionGate(config)
        entries: list[HashEntry] = []
        with open_container(path, None) as container:
            stream = video_stream(container)
            stream.codec_context.options = {"skip_loop_filter": "all"}
            stream.codec_context.skip_frame = "BIDIR"
            aspect = stream.sample_aspect_ratio
            try:
                interval = config.interval_for(duration)
                for t, frame, due in _timed(container, stream, counts, interval):
                    if not gate.keeps(frame, t, due):
                        continue
                    if due:
                        image = display_thumbnail(frame, aspect, rotation, config.analysis_side)
                        entries += frame_hashes(image, config, t, source="sample", crops=False)
                    image = display_thumbnail(frame, aspect, rotation, config.frame_side)
                    entries += frame_hashes(image, config, t, whole=False)
            except StageError as error:
                if error.reason is not FailureReason.TOOL_TIMEOUT or not entries:
                    raise
                counts.out_of_time = True  # keep what was sampled; the result says it stopped
        return entries


def frame_hashes(
    image: Image.Image,
    config: HashesConfig,
    t: float,
    *,
    source: str = "frame",
    whole: bool = True,
    crops: bool = True,
) -> list[HashEntry]:
    """PDQ of a video frame after trimming its bars, whole and centre-cropped, at `t` seconds.

    A "sample" entry (whole only, at `analysis_side`) is what videos are aligned by. A
    "frame" entry is a frame's centre crop (at `frame_side`, a seventh of the work at
    `analysis_side`, since a moving video has several a second): it serves stills, which
    reach it with their own centre crop or their crop probes whether cropped or not, and
    videos, aligned crop against crop between samples. The whole is left out of them: it
    would double what each moving second adds to the index (about 940 bytes an entry)
    for what the crop finds already.
    """
    box = border_box(image, config.border_tolerance, config.border_max_fraction)
    content = image.crop(box) if box != (0, 0, *image.size) else image
    pictures = [("full", content)] if whole else []
    if crops:
        pictures += [
            (_variant_name(fraction), crop_sides(content, (fraction,) * 4))
            for fraction in config.crop_fractions
        ]
    entries = []
    for variant, picture in pictures:
        vector, quality = pdqhash.compute(pixels(picture))
        entries.append(HashEntry(source, variant, pdq_hex(vector), int(quality), t=round(t, 3)))
    return entries


class _MotionGate:
    """Which decoded frames between samples are hashed too: those whose picture has moved
    more than `frame_change_bits` from the last frame hashed.

    Samples alone (one a second) leave a moving shot's frames far from any hash: on the
    phone-like clip of `qarina bench keyframes` (pans, zooms, shake), a quarter of its frames
    as resized JPEG stills came within the match threshold of a sample. With the gate every
    decoded frame lies within `frame_change_bits` of a hashed one (up to one per
    `frame_min_gap_s`), and 99.7% of them did, at 11 hashed frames a second there; a static
    shot adds none. The gate hashes a 64x64 grey copy of each frame (about what PDQ reduces
    a picture to) with `pdq_crops`, half a millisecond beside the decode.
    """

    def __init__(self, config: HashesConfig) -> None:
        self.config = config
        self.last: npt.NDArray[np.bool_] | None = None
        self.last_t = -math.inf
        self.kept = 0

    def keeps(self, frame: av.VideoFrame, t: float, due: bool) -> bool:
        config = self.config
        if not due and (
            self.kept >= config.max_samples or t - self.last_t < config.frame_min_gap_s
        ):
            return False
        grey = frame.reformat(width=_GATE_SIDE, height=_GATE_SIDE, format="gray").to_ndarray()
        bits = pdq_crops.crop_hashes(grey.astype(np.float32), [(0, 0, _GATE_SIDE, _GATE_SIDE)])[0]
        moved = self.last is None or int(np.count_nonzero(bits != self.last)) > (
            config.frame_change_bits
        )
        if not due and not moved:
            return False
        self.last, self.last_t = bits, t
        self.kept += not due
        return True


#: The gate's frame size: PDQ reduces every picture to 64x64 before its transform.
_GATE_SIDE = 64


def _timed(
    container: av.container.InputContainer,
    stream: av.VideoStream,
    counts: DecodeCounts,
    interval: float,
) -> Iterator[tuple[float, av.VideoFrame, bool]]:
    """Every decoded frame with its time (0 at the first), and whether it is the first at or
    after a multiple of `interval` (a sample)."""
    time_base = stream.time_base or Fraction(1, 90000)
    start: int | None = None
    due = 0.0
    for pts, frame in frames_of(container, stream, counts):
        start = pts if start is None else start
        t = float((pts - start) * time_base)
        sample = t + 1e-6 >= due
        if sample:
            due = (math.floor(t / interval + 1e-6) + 1) * interval
        yield t, frame, sample
