"""A phone-like test clip with known cuts, made from the shared corpus's photos and footage.

Shot detection is judged on it (`qarina bench keyframes`): a 1080p H.264 clip cut together
from real footage and real photos in the shared corpus, with every cut position recorded while
it is made, encoded three ways: x264's defaults (B-frames, a keyframe at every scene cut),
without B-frames (`-bf 0`), and as phones encode (a fixed one-second GOP with no scene-cut
keyframes and no B-frames), since a keyframe-first detector must not depend on the encoder
placing keyframes at the cuts. Synthetic test patterns would flatter any detector; real
pictures with slow pans and zooms, handheld shake, low-light footage with a flashlight
switching on, and dissolves and fades are what the stage meets in a backlog.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pipelines.samples._tools import ffmpeg as run_ffmpeg
from pipelines.samples._tools import run

CLIP_SIZE = (1920, 1080)
FPS = 30
#: A dissolve overlaps the two shots for 0.5 s.
DISSOLVE_FRAMES = 15
#: A fade through black: the old shot fades out over 8 frames, the new one fades in over 8.
FADE_FRAMES = 8
# name -> (description, x264 options): the encodings every timing and score is reported for.
ENCODES: dict[str, tuple[str, list[str]]] = {
    "bframes": ("libx264 default preset, yuv420p, 30 fps", []),
    "nobframes": ("libx264 default preset, yuv420p, 30 fps, -bf 0", ["-bf", "0"]),
    "fixedgop": (
        "libx264 default preset, yuv420p, 30 fps, -bf 0, 1 s GOP without scene-cut keyframes",
        ["-bf", "0", "-g", str(FPS), "-keyint_min", str(FPS), "-sc_threshold", "0"],
    ),
}
#: Distinct real photos (corpus-relative): every one a different scene, so every cut between
#: two of them is a real cut. The near-duplicate sets contribute one member each, never two.
PHOTOS = (
    "neardup_images/imagededup/base_images/ukbench00120.jpg",
    "images_exif/exif-samples/jpg/exif-org/nikon-e950.jpg",
    "neardup_images/pdq/bridge-mods/aaa-orig.jpg",
    "images_exif/exif-samples/jpg/exif-org/fujifilm-dx10.jpg",
    "neardup_images/imagededup/base_images/ukbench09012.jpg",
    "images_exif/exif-samples/jpg/exif-org/olympus-c960.jpg",
    "images_exif/exif-samples/jpg/tests/22-canon_tags.jpg",
    "images_exif/exif-samples/jpg/exif-org/fujifilm-finepix40i.jpg",
    "neardup_images/imagehash/peppers.png",
    "images_exif/exif-samples/jpg/exif-org/sanyo-vpcg250.jpg",
    "images_exif/exif-samples/jpg/Reconyx_HC500_Hyperfire.jpg",
    "neardup_images/imagededup/base_images/ukbench09060.jpg",
    "images_exif/exif-samples/jpg/tests/11-tests.jpg",
    "images_exif/exif-samples/jpg/exif-org/kodak-dc210.jpg",
    "images_exif/exif-samples/jpg/tests/28-hex_value.jpg",
    "images_exif/exif-samples/jpg/Canon_PowerShot_S40.jpg",
    "images_exif/exif-samples/jpg/gps/DSCN0025.jpg",
    "neardup_images/imagededup/base_images/ukbench09380.jpg",
    "images_exif/exif-samples/jpg/exif-org/sanyo-vpcsx550.jpg",
    "images_exif/exif-samples/jpg/tests/45-gps_ifd.jpg",
    "images_exif/exif-samples/jpg/hdr/iphone_hdr_YES.jpg",
    "images_exif/exif-samples/jpg/exif-org/sony-d700.jpg",
    "images_exif/exif-samples/jpg/tests/42_IndexError.jpg",
    "images_exif/exif-samples/jpg/exif-org/fujifilm-mx1700.jpg",
    "images_exif/exif-samples/jpg/tests/35-empty.jpg",
    "images_exif/exif-samples/jpg/exif-org/sony-cybershot.jpg",
    "images_exif/exif-samples/jpg/orientation/landscape_1.jpg",
    "images_exif/exif-samples/jpg/mobile/jolla.jpg",
    "neardup_images/imagededup/base_images/ukbench01380.jpg",
    "images_exif/exif-samples/jpg/tests/30-type_error.jpg",
    "images_exif/exif-samples/jpg/exif-org/canon-ixus.jpg",
    "neardup_images/pdq/exif-rotn/exif-rotn-1.jpg",
    "images_exif/exif-samples/jpg/tests/33-type_error.jpg",
    "images_exif/exif-samples/jpg/exif-org/ricoh-rdc5300.jpg",
    "images_exif/exif-samples/jpg/exif-org/kodak-dc240.jpg",
    "images_exif/exif-samples/jpg/tests/36-memory_error.jpg",
)
#: Windows of the corpus videos that decode and hold one continuous shot each: (file, start
#: second, frames at 30 fps). A tracking shot of a tractor (VP9), a dim room where a flashlight
#: switches on and off (H.264; brightness jumps that are not cuts), a sky (MS-MPEG4, 24 fps,
#: after its fade-in). Windows of one file never meet in the clip: photos lie between them.
VIDEO_WINDOWS = (
    ("video_meta/jcodec/out9_sm.webm", 0.0, 72),
    ("video_meta/pixelprobe/valid.mp4", 0.0, 51),
    ("video_meta/jcodec/test1.short.mkv", 2.0, 63),
    ("video_meta/jcodec/out9_sm.webm", 2.6, 72),
    ("video_meta/pixelprobe/valid.mp4", 2.1, 57),
    ("video_meta/jcodec/out9_sm.webm", 5.4, 78),
)
#: Photo shot lengths in frames, cycled: 1.1 to 2.8 s, so shots are short and uneven.
_PHOTO_FRAMES = (54, 40, 72, 33, 84, 48, 63, 36, 78, 45)
_MOTIONS = (
    "pan-right", "zoom-in", "handheld", "pan-down", "pan-left", "zoom-out", "handheld", "pan-up",
)  # fmt: skip
#: A handheld shot sways about the middle of the photo's margin as (share of the margin's
#: half, Hz, phase) terms per axis: a slow sway (60 px at 1080p), a faster wobble and a
#: hand's tremor, together up to about 15 px a frame, as a phone held by a standing person
#: moves without stabilisation. Sums of sines of unrelated frequencies: irregular to the eye,
#: yet the same on every machine.
_SHAKE_X = ((0.25, 0.5, 0.0), (0.05, 1.7, 1.0), (0.012, 6.1, 2.0))
_SHAKE_Y = ((0.25, 0.37, 2.0), (0.05, 1.3, 3.0), (0.012, 5.3, 4.0))
#: Every fifth shot (from the third) is real footage, the others pan, zoom or shake over a
#: photo.
_VIDEO_EVERY, _VIDEO_FIRST = 5, 2
#: Every sixth boundary (from the third) is gradual, dissolves and fades alternating.
_GRADUAL_EVERY, _GRADUAL_FIRST = 6, 3
#: Photos are scaled to cover the frame with this margin, which the pans travel across.
_PAN_MARGIN = 1.25
_ZOOM_RANGE = 0.2
#: The render's timeout, against a hung ffmpeg only: a fixed allowance plus this per output
#: pixel. Rendering and encoding three times took 47 s for 256 frames at 1080p on two busy
#: cores (0.09 us a pixel, so about 5.5 min for the 60 s clip); 0.5 us leaves room for a
#: slower machine.
_RENDER_BASE_S, _RENDER_PER_PIXEL_S = 120.0, 0.5e-6


@dataclass(frozen=True)
class Shot:
    """One shot of the test clip and how it begins.

    `start_s` is set for footage (where the window starts in the source), `motion` for photos.
    `transition` is how this shot is entered: "hard", "dissolve" or "fade" (None for the first).
    """

    source: str
    frames: int
    start_s: float | None
    motion: str | None
    transition: str | None


@dataclass(frozen=True)
class TrueCut:
    """A cut as made: `frame` is the first frame of the new shot (a dissolve: its middle frame).

    A detection anywhere in `span` +- the tolerance matches it; for a hard cut the span is the
    one frame, for a dissolve the blended frames, for a fade from fade-out start to fade-in end.
    """

    frame: int
    kind: str
    span: tuple[int, int]


def plan_shots(seconds: float) -> list[Shot]:
    """The deterministic shot list for a clip of at least `seconds`.

    Deterministic on purpose: the same recipe gives the same cuts on every machine, so cut
    figures from two machines describe the same video.
    """
    shots: list[Shot] = []
    photos = videos = 0
    while _timeline(shots)[1] < seconds * FPS:
        index = len(shots)
        transition: str | None = None
        if index > 0:
            transition = "hard"
            if index % _GRADUAL_EVERY == _GRADUAL_FIRST:
                gradual = (index // _GRADUAL_EVERY) % 2
                transition = ("dissolve", "fade")[gradual]
        if index % _VIDEO_EVERY == _VIDEO_FIRST:
            source, start_s, frames = VIDEO_WINDOWS[videos % len(VIDEO_WINDOWS)]
            shots.append(Shot(source, frames, start_s, None, transition))
            videos += 1
        else:
            motion = _MOTIONS[photos % len(_MOTIONS)]
            frames = _PHOTO_FRAMES[photos % len(_PHOTO_FRAMES)]
            shots.append(Shot(PHOTOS[photos % len(PHOTOS)], frames, None, motion, transition))
            photos += 1
    return shots


def _timeline(shots: Sequence[Shot]) -> tuple[list[TrueCut], int]:
    """Where each shot starts in the finished clip, the cuts between them, the frame count."""
    cuts: list[TrueCut] = []
    position = 0
    for index, shot in enumerate(shots):
        if index > 0:
            previous_end = position + shots[index - 1].frames
            if shot.transition == "dissolve":
                position = previous_end - DISSOLVE_FRAMES
                middle = position + DISSOLVE_FRAMES // 2
                span = (position, position + DISSOLVE_FRAMES - 1)
                cuts.append(TrueCut(middle, "dissolve", span))
            else:
                position = previous_end
                if shot.transition == "fade":
                    span = (position - FADE_FRAMES, position + FADE_FRAMES - 1)
                    cuts.append(TrueCut(position, "fade", span))
                else:
                    cuts.append(TrueCut(position, "hard", (position, position)))
    total = position + shots[-1].frames if shots else 0
    return cuts, total


def _even(value: float) -> int:
    return int(value) // 2 * 2


def _shot_filter(index: int, shot: Shot, size: tuple[int, int], fade_out: bool) -> str:
    """The filter chain that turns input `index` into exactly `shot.frames` frames at `size`.

    Photo chains make one frame more than they keep (zoompan drops its input's last frame) and
    footage windows are read half a second long; every chain then trims to exactly
    `shot.frames`, so the frame count, and with it every cut position, stays exact.
    """
    width, height = size
    last = shot.frames - 1
    if shot.motion is None:
        steps = [
            f"scale={width}:{height}:force_original_aspect_ratio=increase",
            f"crop={width}:{height}",
            "setsar=1",
            f"fps={FPS}",
            "format=yuv420p",
        ]
    else:
        zoomed = shot.motion.startswith("zoom")
        cover_w, cover_h = (
            (width, height)
            if zoomed
            else (
                _even(width * _PAN_MARGIN),
                _even(height * _PAN_MARGIN),
            )
        )
        steps = [
            f"scale={cover_w}:{cover_h}:force_original_aspect_ratio=increase",
            f"crop={cover_w}:{cover_h}",
            "setsar=1",
            "format=yuv420p",
            f"loop=loop={shot.frames}:size=1:start=0",
            f"setpts=N/{FPS}/TB",
            f"fps={FPS}",
            _motion_filter(shot.motion, last, size),
        ]
    steps += [f"trim=end_frame={shot.frames}", "setpts=PTS-STARTPTS"]
    if shot.transition == "fade":
        steps.append(f"fade=t=in:start_frame=0:nb_frames={FADE_FRAMES}")
    if fade_out:
        steps.append(f"fade=t=out:start_frame={shot.frames - FADE_FRAMES}:nb_frames={FADE_FRAMES}")
    return f"[{index}:v]" + ",".join(steps) + f"[s{index}]"


def _motion_filter(motion: str, last: int, size: tuple[int, int]) -> str:
    """A slow pan across the photo's margin, handheld shake about its middle, or a 20% zoom,
    over the shot's length."""
    width, height = size
    progress = f"n/{last}"
    crops = {
        "pan-right": (f"(iw-ow)*{progress}", "(ih-oh)/2"),
        "pan-left": (f"(iw-ow)*(1-{progress})", "(ih-oh)/2"),
        "pan-down": ("(iw-ow)/2", f"(ih-oh)*{progress}"),
        "pan-up": ("(iw-ow)/2", f"(ih-oh)*(1-{progress})"),
        "handheld": (_shake("(iw-ow)/2", _SHAKE_X), _shake("(ih-oh)/2", _SHAKE_Y)),
    }
    if motion in crops:
        x, y = crops[motion]
        return f"crop={width}:{height}:x='{x}':y='{y}'"
    on_progress = f"on/{last}"
    zoom = (
        f"1+{_ZOOM_RANGE}*{on_progress}"
        if motion == "zoom-in"
        else f"{1 + _ZOOM_RANGE}-{_ZOOM_RANGE}*{on_progress}"
    )
    return (
        f"zoompan=z='{zoom}':x='iw/2-iw/zoom/2':y='ih/2-ih/zoom/2':d=1:s={width}x{height}:fps={FPS}"
    )


def _shake(half_margin: str, terms: Sequence[tuple[float, float, float]]) -> str:
    """A crop offset swaying about the middle of the margin, an ffmpeg expression in `n`."""
    sway = "+".join(f"{share}*sin(2*PI*{hz}*n/{FPS}+{phase})" for share, hz, phase in terms)
    return f"{half_margin}*(1+{sway})"


def _filter_graph(shots: Sequence[Shot], size: tuple[int, int]) -> str:
    """Every shot's chain, dissolves as xfade pairs, then all pieces concatenated and split in
    two: one render feeds both encodes, so the two clips hold the very same pictures."""
    chains = []
    for index, shot in enumerate(shots):
        fade_out = index + 1 < len(shots) and shots[index + 1].transition == "fade"
        chains.append(_shot_filter(index, shot, size, fade_out))
    pieces: list[str] = []
    index = 0
    while index < len(shots):
        if index + 1 < len(shots) and shots[index + 1].transition == "dissolve":
            offset = (shots[index].frames - DISSOLVE_FRAMES) / FPS
            duration = DISSOLVE_FRAMES / FPS
            chains.append(
                f"[s{index}][s{index + 1}]xfade=transition=fade"
                f":duration={duration:.6f}:offset={offset:.6f}[p{index}]"
            )
            pieces.append(f"[p{index}]")
            index += 2
        else:
            pieces.append(f"[s{index}]")
            index += 1
    outputs = "".join(f"[{name}]" for name in ENCODES)
    chains.append("".join(pieces) + f"concat=n={len(pieces)}:v=1:a=0,split={len(ENCODES)}{outputs}")
    return ";".join(chains)


def _inputs(shots: Sequence[Shot], corpus: Path) -> list[str]:
    arguments: list[str] = []
    for shot in shots:
        if shot.start_s is not None:
            seconds = shot.frames / FPS + 0.5
            arguments += ["-ss", f"{shot.start_s:g}", "-t", f"{seconds:.3f}"]
        arguments += ["-i", f"file:{corpus / shot.source}"]
    return arguments


def frame_count(ffprobe: str, clip: Path) -> int:
    """Frames in the clip's video stream, counted from its packets (no decoding)."""
    packets = run([
        ffprobe, "-v", "error", "-select_streams", "v:0", "-count_packets",
        "-show_entries", "stream=nb_read_packets", "-of", "csv=p=0", f"file:{clip}",
    ])  # fmt: skip
    return int(packets.strip().rstrip(","))


@dataclass(frozen=True)
class Clips:
    """The test clip once per entry of ENCODES (name -> path), all holding the same pictures,
    and how it was made: its shots, its true cuts and its exact frame count."""

    paths: dict[str, Path]
    shots: list[Shot]
    cuts: list[TrueCut]
    frames: int


def make_clips(
    corpus: Path,
    folder: Path,
    seconds: float,
    size: tuple[int, int] = CLIP_SIZE,
    *,
    ffmpeg: str = "ffmpeg",
    ffprobe: str = "ffprobe",
) -> Clips:
    """Render the test clip once and encode it once per entry of ENCODES, into `folder`.

    `ffmpeg` and `ffprobe` are the tools to run: a benchmark passes the absolute paths of the
    ones it reports. Raises RuntimeError when a corpus file is missing, ffmpeg fails or an
    encoded clip does not hold exactly the frames the recipe made, since every cut position
    would then be wrong.
    """
    shots = plan_shots(seconds)
    missing = sorted({shot.source for shot in shots if not (corpus / shot.source).is_file()})
    if missing:
        raise RuntimeError(f"the shared corpus at {corpus} lacks {', '.join(missing)}")
    cuts, total = _timeline(shots)
    clips = {name: folder / f"clip-{name}.mp4" for name in ENCODES}
    encode = ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-r", str(FPS), "-an"]
    arguments = [*_inputs(shots, corpus), "-filter_complex", _filter_graph(shots, size)]
    for name, (_, options) in ENCODES.items():
        arguments += ["-map", f"[{name}]", *encode, *options, str(clips[name])]
    run_ffmpeg(
        *arguments,
        binary=ffmpeg,
        timeout_s=_RENDER_BASE_S + _RENDER_PER_PIXEL_S * total * size[0] * size[1],
    )
    for name, clip in clips.items():
        frames = frame_count(ffprobe, clip)
        if frames != total:
            raise RuntimeError(f"clip {name} has {frames} frames, the recipe made {total}")
    return Clips(clips, shots, cuts, total)
