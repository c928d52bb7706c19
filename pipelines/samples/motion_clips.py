"""Generated clips of fast continuous motion, flashes and transitions, with their true cuts.

Conflict footage is full of what fools a shot detector into seeing cuts: handheld running,
whip pans, fast zooms while the light changes, muzzle flashes and explosions that light a
frame or two. `qarina bench keyframes` and the tests judge precision on these and recall on
fades, dissolves and hard cuts. Every clip is made with ffmpeg lavfi filters over lavfi
sources (`mandelbrot`, `testsrc2`, `cellauto`, ...) or photo-like pictures (`photos.scene`),
with each segment trimmed to an exact frame count, so every cut position is known.

The set comes in two disjoint halves (different pictures, sources, speeds, flash patterns and
transition lengths): the detector's settings are chosen on `tune` and reported on `check` as
well, so a figure on `check` says how the settings carry to material they were not chosen on.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pipelines.samples import phone_clips
from pipelines.samples._tools import ffmpeg as run_ffmpeg
from pipelines.samples.photos import scene

FPS = phone_clips.FPS
TrueCut = phone_clips.TrueCut
#: The size the benchmark renders at: large enough for both detectors' own downscaling to
#: matter, small enough that the whole set renders in a minute or two.
BENCH_SIZE = (640, 360)
HALVES = ("tune", "check")
#: Each clip is encoded as x264 writes by default (B-frames, a keyframe where it sees a scene
#: change, which fast motion and flashes trigger) and as a phone does (fixed GOP): the stage's
#: keyframe-first passes take different paths through the two.
ENCODES = {name: phone_clips.ENCODES[name] for name in ("bframes", "fixedgop")}
#: lavfi sources that draw from a random seed unless given one: the same recipe must make the
#: same clip on every run and machine.
_RANDOM_SOURCES = frozenset({"cellauto", "sierpinski"})
#: Flash looks: a full white or black frame (a flash gun, a dropped frame), a washed-out
#: frame (an explosion lighting the scene) and a dimmed one (exposure catching up).
_LOOKS = {
    "white": "drawbox=c=white@0.92:t=fill",
    "black": "drawbox=c=black@0.95:t=fill",
    "bright": "eq=brightness=0.45:contrast=0.75",
    "dark": "eq=brightness=-0.55",
}


@dataclass(frozen=True)
class Flash:
    """A flash inside a segment: `frames` frames from its frame `at`; with `every`, a strobe
    repeating that flash every `every` frames `times` times."""

    at: int
    frames: int
    look: str
    every: int = 0
    times: int = 1


@dataclass(frozen=True)
class Segment:
    """One continuous shot: a picture (`scene:SEED`) or a lavfi source, moved by `motion`.

    `motion` is "still", "pan" (a drift across the picture's margin, end to end in 2/`speed`
    seconds), "zoom" (`speed` doublings of scale a second),
    "whip" (whips across a wide picture, each over `speed` seconds) or "shake" (handheld
    running, `speed` the sway in Hz). `hue` turns the colours that many degrees a second.
    `enter` is how the segment is entered: "hard", "dissolve" (xfade blend), "pixels"
    (xfade's pixel dissolve), "fade-black" or "fade-white" (the previous segment fades out
    over `enter_frames`, `hold` flat frames, this one fades in over `enter_frames`).
    """

    source: str
    frames: int
    motion: str
    speed: float = 0.0
    hue: float = 0.0
    flashes: tuple[Flash, ...] = ()
    enter: str = "hard"
    enter_frames: int = 0
    hold: int = 0


@dataclass(frozen=True)
class Recipe:
    """A clip to make: its name, what kind of clip it is, which half it belongs to."""

    name: str
    kind: str
    half: str
    segments: tuple[Segment, ...]


@dataclass(frozen=True)
class MotionClip:
    """A made clip: one path per entry of ENCODES (the same pictures), its true cuts and its
    exact frame count."""

    recipe: Recipe
    paths: dict[str, Path]
    cuts: list[TrueCut]
    frames: int


#: The two halves. Kinds: motion clips (`zoom`, `whip`, `shake`, `flash`, `strobe`) hold one
#: hard cut between two moving shots, so their precision is defined and their recall is the
#: cut found inside motion; `fade`, `dissolve` and `hard` are the transitions to keep finding.
RECIPES: tuple[Recipe, ...] = (
    # --- tune ---
    Recipe("zoom-mandelbrot", "zoom", "tune", (
        Segment("mandelbrot", 90, "zoom", speed=1.0, hue=150),
        Segment("scene:101", 75, "zoom", speed=1.4, hue=-200),
    )),
    Recipe("whip-scenes", "whip", "tune", (
        Segment("scene:102", 96, "whip", speed=0.3),
        Segment("scene:103", 84, "whip", speed=0.4),
    )),
    Recipe("shake-running", "shake", "tune", (
        Segment("scene:104", 90, "shake", speed=2.2),
        Segment("testsrc2", 75, "shake", speed=2.8, hue=60),
    )),
    Recipe("flash-single-and-short", "flash", "tune", (
        Segment("scene:105", 90, "pan", speed=0.4, flashes=(
            Flash(20, 1, "white"), Flash(45, 2, "bright"), Flash(70, 3, "dark"),
        )),
        Segment("scene:106", 80, "shake", speed=1.5, flashes=(
            Flash(15, 1, "black"), Flash(40, 2, "white"), Flash(62, 1, "bright"),
        )),
    )),
    Recipe("strobe-bursts", "strobe", "tune", (
        Segment("scene:107", 90, "pan", speed=0.6, flashes=(Flash(10, 1, "white", 5, 12),)),
        Segment("scene:108", 75, "shake", speed=1.8, flashes=(Flash(8, 2, "bright", 7, 8),)),
    )),
    Recipe("fade-black-white", "fade", "tune", (
        Segment("scene:109", 60, "pan", speed=0.3),
        Segment("testsrc2", 70, "still", enter="fade-black", enter_frames=10),
        Segment("scene:110", 60, "pan", speed=0.5, enter="fade-white", enter_frames=8, hold=6),
    )),
    Recipe("dissolve-blends", "dissolve", "tune", (
        Segment("scene:111", 60, "pan", speed=0.3),
        Segment("scene:112", 70, "pan", speed=0.4, enter="dissolve", enter_frames=15),
        Segment("mandelbrot", 60, "still", enter="dissolve", enter_frames=24),
    )),
    Recipe("hard-cuts", "hard", "tune", (
        Segment("scene:113", 40, "still"),
        Segment("scene:114", 45, "pan", speed=0.5),
        Segment("testsrc2", 40, "zoom", speed=0.5),
        Segment("scene:115", 50, "shake", speed=1.5),
    )),
    # --- check ---
    Recipe("zoom-cellauto", "zoom", "check", (
        Segment("scene:201", 80, "zoom", speed=1.2, hue=240),
        Segment("cellauto", 85, "zoom", speed=0.8, hue=-120),
    )),
    Recipe("whip-fast", "whip", "check", (
        Segment("scene:202", 90, "whip", speed=0.2),
        Segment("scene:203", 90, "whip", speed=0.25),
    )),
    Recipe("shake-violent", "shake", "check", (
        Segment("scene:204", 85, "shake", speed=3.3, hue=30),
        Segment("sierpinski", 80, "shake", speed=2.5),
    )),
    Recipe("flash-muzzle", "flash", "check", (
        Segment("scene:205", 85, "shake", speed=2.0, flashes=(
            Flash(12, 2, "white"), Flash(38, 1, "dark"), Flash(60, 3, "bright"),
        )),
        Segment("scene:206", 85, "pan", speed=0.7, flashes=(
            Flash(20, 3, "black"), Flash(48, 1, "white"), Flash(70, 2, "dark"),
        )),
    )),
    Recipe("strobe-gunfire", "strobe", "check", (
        Segment("scene:207", 85, "shake", speed=2.4, flashes=(Flash(6, 1, "bright", 4, 16),)),
        Segment("testsrc2", 80, "pan", speed=0.5, flashes=(Flash(12, 1, "white", 3, 12),)),
    )),
    Recipe("fade-white-black", "fade", "check", (
        Segment("scene:208", 55, "shake", speed=1.0),
        Segment("scene:209", 65, "pan", speed=0.4, enter="fade-white", enter_frames=12),
        Segment("sierpinski", 60, "still", enter="fade-black", enter_frames=6, hold=9),
    )),
    Recipe("dissolve-pixels", "dissolve", "check", (
        Segment("scene:210", 55, "shake", speed=1.0),
        Segment("scene:211", 70, "pan", speed=0.6, enter="pixels", enter_frames=18),
        Segment("cellauto", 60, "still", enter="dissolve", enter_frames=12),
    )),
    Recipe("hard-cuts-mixed", "hard", "check", (
        Segment("scene:212", 45, "shake", speed=2.0),
        Segment("sierpinski", 40, "still"),
        Segment("scene:213", 50, "zoom", speed=0.7, hue=90),
        Segment("scene:214", 45, "pan", speed=0.8),
    )),
)  # fmt: skip


def recipes(half: str) -> list[Recipe]:
    """The recipes of one half (`tune` or `check`)."""
    if half not in HALVES:
        raise ValueError(f"no half {half!r}: {', '.join(HALVES)}")
    return [recipe for recipe in RECIPES if recipe.half == half]


def timeline(segments: Sequence[Segment]) -> tuple[list[TrueCut], int]:
    """The true cuts of a clip made of `segments`, and its frame count."""
    cuts: list[TrueCut] = []
    position = 0
    for index, segment in enumerate(segments):
        if index > 0:
            end = position + segments[index - 1].frames
            length = segment.enter_frames
            if segment.enter in {"dissolve", "pixels"}:
                position = end - length
                cuts.append(TrueCut(position + length // 2, "dissolve", (position, end - 1)))
            elif segment.enter.startswith("fade"):
                position = end + segment.hold
                span = (end - length, position + length - 1)
                cuts.append(TrueCut((span[0] + span[1] + 1) // 2, "fade", span))
            else:
                position = end
                cuts.append(TrueCut(position, "hard", (position, position)))
    return cuts, position + (segments[-1].frames if segments else 0)


def _smooth(points: Sequence[tuple[int, float]]) -> str:
    """An ffmpeg expression in `n` easing (smoothstep) from point to point: (frame, value)."""
    expression = f"{points[-1][1]:.4f}"
    for (start, low), (end, high) in reversed(list(itertools.pairwise(points))):
        progress = f"(n-{start})/{end - start}"
        ease = f"{low:.4f}+({high - low:.4f})*{progress}*{progress}*(3-2*{progress})"
        expression = f"if(lt(n,{end}),{ease},{expression})"
    return expression


def _sway(hz: float) -> tuple[str, str]:
    """Handheld running about the middle (-1..1 per axis): a step-rate sway, a faster jolt
    and a tremor, sums of sines of unrelated frequencies."""
    x = f"0.6*sin(2*PI*{hz / 2:.3f}*t)+0.3*sin(2*PI*{hz * 1.7:.3f}*t+1)+0.1*sin(2*PI*9.1*t+2)"
    y = f"0.5*sin(2*PI*{hz:.3f}*t+3)+0.35*sin(2*PI*{hz * 2.3:.3f}*t+4)+0.15*sin(2*PI*7.3*t)"
    return x, y


def _picture_size(segment: Segment, size: tuple[int, int]) -> tuple[int, int]:
    """The picture a segment moves over: wide for whips, with a margin for pans and shake."""
    width, height = size
    scale = {"whip": (4.0, 1.1), "shake": (1.5, 1.5), "pan": (1.3, 1.3)}
    wide, high = scale.get(segment.motion, (1.0, 1.0))
    return round(width * wide) // 2 * 2, round(height * high) // 2 * 2


def _motion(segment: Segment, size: tuple[int, int]) -> list[str]:
    """The filters that move the picture, ending at exactly `size`."""
    width, height = size
    last = max(segment.frames - 1, 1)
    if segment.motion == "zoom":
        zoom = f"min(pow(2,on*{segment.speed}/{FPS}),9)"
        drift = f"0.5+0.2*sin(on/{FPS})"
        return [
            f"zoompan=z='{zoom}':x='(iw-iw/zoom)*{drift}':y='(ih-ih/zoom)*(1-{drift})'"
            f":d=1:s={width}x{height}:fps={FPS}"
        ]
    if segment.motion == "whip":
        # Rest, whip a third of the way, drift, whip back past the start, rest.
        whip = max(2, round(segment.speed * FPS))
        rest = max(1, (segment.frames - 2 * whip) // 3)
        points = [(0, 0.05), (rest, 0.1), (rest + whip, 0.55), (2 * rest + whip, 0.6)]
        points += [(2 * rest + 2 * whip, 0.0), (last + 1, 0.02)]
        x = f"(iw-ow)*({_smooth(points)})"
        # A whip blurs: the shutter is open across a good part of the motion.
        return [f"crop={width}:{height}:x='{x}':y='(ih-oh)/2'", "tmix=frames=3"]
    if segment.motion == "shake":
        sway_x, sway_y = _sway(segment.speed)
        roll = f"0.03*sin(2*PI*{segment.speed * 0.8:.3f}*t)+0.01*sin(2*PI*6.7*t)"
        return [
            f"rotate=a='{roll}'",
            f"crop={width}:{height}:x='(iw-ow)/2*(1+0.9*({sway_x}))'"
            f":y='(ih-oh)/2*(1+0.9*({sway_y}))'",
            "tmix=frames=2",
            "eq=brightness='0.06*sin(2*PI*0.9*t)':eval=frame",
        ]
    if segment.motion == "pan":
        x = f"(iw-ow)*(0.5+0.5*sin(2*PI*{segment.speed / 4:.4f}*n/{FPS}-PI/2))"
        return [f"crop={width}:{height}:x='{x}':y='(ih-oh)*n/{last}'"]
    return [f"scale={width}:{height}"]


def _flashes(flashes: Sequence[Flash]) -> list[str]:
    """Each flash as its look enabled on its frames (`n` counts the segment's frames)."""
    filters = []
    for flash in flashes:
        period = max(flash.every, 1)
        end = flash.at + period * (flash.times - 1) + flash.frames - 1
        enable = f"between(n,{flash.at},{end})*lt(mod(n-{flash.at},{period}),{flash.frames})"
        filters.append(f"{_LOOKS[flash.look]}:enable='{enable}'")
    return filters


def _input(segment: Segment, size: tuple[int, int], folder: Path) -> list[str]:
    """The ffmpeg input of a segment: a picture written into `folder`, or a lavfi source,
    long enough for its frames."""
    seconds = f"{segment.frames / FPS + 1:.3f}"
    width, height = _picture_size(segment, size)
    if segment.source.startswith("scene:"):
        seed = int(segment.source.removeprefix("scene:"))
        picture = folder / f"scene-{seed}-{width}x{height}.png"
        if not picture.exists():
            scene(seed, (width, height)).save(picture)
        return ["-loop", "1", "-framerate", str(FPS), "-t", seconds, "-i", f"file:{picture}"]
    source = f"{segment.source}=size={width}x{height}:rate={FPS}"
    if segment.source in _RANDOM_SOURCES:
        source += ":seed=1"
    return ["-t", seconds, "-f", "lavfi", "-i", source]


def _segment_chain(index: int, segments: Sequence[Segment], size: tuple[int, int]) -> str:
    segment = segments[index]
    steps = ["format=yuv420p", "setsar=1", *_motion(segment, size)]
    if segment.hue:
        steps.append(f"hue=h='{segment.hue}*t':s='1+0.4*sin(2*PI*1.3*t)'")
    steps += _flashes(segment.flashes)
    steps += [
        f"trim=end_frame={segment.frames}",
        "setpts=PTS-STARTPTS",
        f"fps={FPS}",
        "format=yuv420p",
    ]
    if segment.enter.startswith("fade"):
        colour = segment.enter.removeprefix("fade-")
        steps.append(f"fade=t=in:start_frame=0:nb_frames={segment.enter_frames}:color={colour}")
    following = segments[index + 1] if index + 1 < len(segments) else None
    if following is not None and following.enter.startswith("fade"):
        colour = following.enter.removeprefix("fade-")
        length = following.enter_frames
        steps.append(
            f"fade=t=out:start_frame={segment.frames - length}:nb_frames={length}:color={colour}"
        )
    return f"[{index}:v]" + ",".join(steps) + f"[s{index}]"


def _filter_graph(segments: Sequence[Segment], size: tuple[int, int]) -> tuple[list[str], str]:
    """Extra lavfi inputs (flat holds between fades) and the graph joining every segment,
    split once per encode."""
    width, height = size
    chains = [_segment_chain(index, segments, size) for index in range(len(segments))]
    extra: list[str] = []
    joined, length = "[s0]", segments[0].frames
    for index, segment in enumerate(segments[1:], start=1):
        label = f"[j{index}]"
        if segment.enter in {"dissolve", "pixels"}:
            style = "fade" if segment.enter == "dissolve" else "dissolve"
            offset = (length - segment.enter_frames) / FPS
            chains.append(
                f"{joined}[s{index}]xfade=transition={style}"
                f":duration={segment.enter_frames / FPS:.6f}:offset={offset:.6f}{label}"
            )
            length += segment.frames - segment.enter_frames
        elif segment.hold:
            colour = segment.enter.removeprefix("fade-")
            hold_input = len(segments) + len(extra) // 4
            extra += ["-f", "lavfi", "-i", f"color=c={colour}:size={width}x{height}:rate={FPS}"]
            chains.append(
                f"[{hold_input}:v]trim=end_frame={segment.hold},setpts=PTS-STARTPTS,"
                f"format=yuv420p,setsar=1[h{index}]"
            )
            chains.append(f"{joined}[h{index}][s{index}]concat=n=3:v=1:a=0{label}")
            length += segment.hold + segment.frames
        else:
            chains.append(f"{joined}[s{index}]concat=n=2:v=1:a=0{label}")
            length += segment.frames
        joined = label
    outputs = "".join(f"[{name}]" for name in ENCODES)
    chains.append(f"{joined}split={len(ENCODES)}{outputs}")
    return extra, ";".join(chains)


def make_clip(
    recipe: Recipe,
    folder: Path,
    size: tuple[int, int] = BENCH_SIZE,
    *,
    ffmpeg: str = "ffmpeg",
    ffprobe: str = "ffprobe",
) -> MotionClip:
    """Render one recipe once and encode it once per entry of ENCODES, into `folder` (which
    must exist).

    Raises RuntimeError when ffmpeg fails or a clip does not hold exactly the frames the
    recipe made, since every true cut would then be misplaced.
    """
    cuts, total = timeline(recipe.segments)
    inputs: list[str] = []
    for segment in recipe.segments:
        inputs += _input(segment, size, folder)
    extra, graph = _filter_graph(recipe.segments, size)
    paths = {name: folder / f"{recipe.name}-{name}.mp4" for name in ENCODES}
    arguments = [*inputs, *extra, "-filter_complex", graph]
    encode = ["-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-an"]
    for name, (_, options) in ENCODES.items():
        arguments += ["-map", f"[{name}]", *encode, *options, "-frames:v", str(total)]
        arguments.append(str(paths[name]))
    run_ffmpeg(*arguments, binary=ffmpeg)
    for name, path in paths.items():
        frames = phone_clips.frame_count(ffprobe, path)
        if frames != total:
            raise RuntimeError(f"{name} clip {path.name} has {frames} frames, not {total}")
    return MotionClip(recipe, paths, cuts, total)
