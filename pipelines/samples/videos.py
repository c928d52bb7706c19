"""Videos: known cuts and transitions, phone metadata, odd encodings, scenes and their clips."""

from __future__ import annotations

import math
import shutil
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

from pipelines.samples._tools import ffmpeg
from pipelines.samples.photos import scene

#: lavfi sources that look nothing alike, for shots with unmistakable cuts between them.
_SHOT_SOURCES = ("testsrc2", "smptebars", "mandelbrot", "rgbtestsrc", "testsrc", "yuvtestsrc")


def _lavfi(source: str) -> list[str]:
    return ["-f", "lavfi", "-i", source]


def _shots(count: int, size: str, rate: int, seconds: float | None = None) -> list[str]:
    """One input per shot, each from the next of _SHOT_SOURCES; endless without `seconds`
    (an input option: `mandelbrot` has no `duration` of its own)."""
    inputs: list[str] = []
    for number in range(count):
        source = f"{_SHOT_SOURCES[number % len(_SHOT_SOURCES)]}=size={size}:rate={rate}"
        inputs += [*([] if seconds is None else ["-t", f"{seconds:g}"]), *_lavfi(source)]
    return inputs


def x264(
    path: Path,
    *extra: str,
    preset: str = "veryfast",
    pix_fmt: str = "yuv420p",
    faststart: bool = True,
) -> list[str]:
    """ffmpeg's output arguments for an H.264 MP4 at `path`, after the `extra` ones: every
    sample video is encoded so, as phones and messaging apps encode what they send."""
    # `+faststart` puts the index first, as phones and messaging apps do: a truncated copy
    # then still says how many frames it should have had.
    movflags = ["-movflags", "+faststart"] if faststart else []
    return [
        *extra, "-c:v", "libx264", "-preset", preset, "-pix_fmt", pix_fmt, *movflags,
        "-f", "mp4", str(path),
    ]  # fmt: skip


def video_with_cuts(
    path: Path,
    *,
    shots: int = 2,
    seconds_per_shot: float = 1.0,
    size: str = "96x64",
    rate: int = 10,
    audio: Path | Literal["tone"] | None = "tone",
    tags: Mapping[str, str] | None = None,
    preset: str = "ultrafast",
) -> Path:
    """An H.264 MP4 of visibly different shots joined by hard cuts (testsrc2, SMPTE bars, ...).

    `audio` is "tone" (440 Hz AAC for the whole video), a speech file, or None (no audio
    track). A speech soundtrack ends the file with its shortest stream (`-shortest`), and
    ffmpeg 5.1 stops the video about 0.7 s after the speech: with the 1.66 s greeting the
    file lasts 2.36 s whatever `seconds_per_shot` is, so later shots never appear.

    `tags` become container metadata, as a phone writes them: `creation_time` (UTC) and
    `location` (ISO 6709, which ffmpeg stores as a 3GPP location box). Reverse-DNS keys
    (`com.android.model`) are written only with `use_metadata_tags`, which they turn on; that
    flag also copies the other tags into `mdta` keys.

    The x264 `preset` "ultrafast" (Constrained Baseline, no B-frames) keeps tiny test clips
    quick; "veryfast" writes High profile with B-frames, closer to what phones record.
    """
    inputs = _shots(shots, size, rate, seconds_per_shot)
    concat = "".join(f"[{n}:v]" for n in range(shots)) + f"concat=n={shots}:v=1:a=0[v]"
    output = ["-filter_complex", concat, "-map", "[v]"]
    if isinstance(audio, Path):
        inputs += ["-i", str(audio)]
        output += ["-map", f"{shots}:a", "-c:a", "aac", "-shortest"]
    elif audio == "tone":
        inputs += _lavfi(f"sine=frequency=440:duration={shots * seconds_per_shot:g}")
        output += ["-map", f"{shots}:a", "-c:a", "aac", "-b:a", "32k"]
    for key, value in (tags or {}).items():
        output += ["-metadata", f"{key}={value}"]
    if any("." in key for key in tags or {}):
        output += ["-movflags", "use_metadata_tags"]
    ffmpeg(*inputs, *x264(path, *output, preset=preset, faststart=False))
    return path


def video_with_location(
    path: Path,
    lat: float,
    lon: float,
    *,
    creation_time: str = "2024-05-01T10:00:00Z",
    make: str | None = None,
    model: str | None = None,
) -> Path:
    """A 0.5 s MP4 with a location and a creation time, as an Android phone records them.

    Verified with ffmpeg 5.1 and exiftool 12.57: in MP4, `-metadata location=` (ISO 6709)
    becomes a 3GPP `loci` box, which exiftool reads as Composite:GPSLatitude/Longitude with
    the box's always-present altitude (0 here) and 16.16 fixed-point precision (~1e-5
    degrees). `make`/`model` go into the Android keys (com.android.manufacturer/model), which
    ffmpeg writes only with `use_metadata_tags`; that flag also copies the location into the
    `mdta` keys. Real Android ©xyz atoms are read as QuickTime:GPSCoordinates instead.
    """
    tags = {"location": f"{lat:+08.4f}{lon:+09.4f}/", "creation_time": creation_time}
    if make is not None:
        tags["com.android.manufacturer"] = make
    if model is not None:
        tags["com.android.model"] = model
    return video_with_cuts(path, shots=1, seconds_per_shot=0.5, size="64x48", audio=None, tags=tags)


def rotated_video(path: Path, degrees_clockwise: int = 90) -> Path:
    """A 0.5 s MP4 whose video track carries a display matrix, as a phone held upright writes.

    FFmpeg 5.1 has no option to write one, so the identity matrix of the `tkhd` box is
    replaced in place (ISO/IEC 14496-12 8.3.2: a 3x3 matrix of 16.16 and 2.30 fixed point).
    """
    video_with_cuts(path, shots=1, seconds_per_shot=0.5, size="64x48", audio=None)
    one, unity = 0x10000, 0x40000000
    cos_sin = {0: (one, 0), 90: (0, one), 180: (-one, 0), 270: (0, -one)}[degrees_clockwise % 360]
    cos, sin = cos_sin
    matrix = struct.pack(">9i", cos, sin, 0, -sin, cos, 0, 0, 0, unity)
    data = bytearray(path.read_bytes())
    at = data.index(b"tkhd")
    version = data[at + 4]
    # After the type: version+flags (4), times and ids (20 or 32), reserved (8), layer,
    # alternate group, volume, reserved (8), then the matrix.
    matrix_at = at + 4 + 4 + (32 if version == 1 else 20) + 8 + 8
    data[matrix_at : matrix_at + 36] = matrix
    path.write_bytes(bytes(data))
    return path


def video_with_hard_cuts(
    path: Path,
    shot_frames: Sequence[int] = (20, 15, 25),
    *,
    size: str = "160x90",
    rate: int = 25,
    encoder: Sequence[str] = (),
) -> Path:
    """An H.264 MP4 of shots of the given lengths (frames): cuts at their running sums.

    `encoder` adds x264 options, e.g. a fixed keyframe interval without scene-cut keyframes
    (`-g 12 -sc_threshold 0`), as phones write, so cuts fall between keyframes.
    """
    chain = "".join(
        f"[{n}:v]trim=end_frame={frames},setpts=PTS-STARTPTS,format=yuv420p[v{n}];"
        for n, frames in enumerate(shot_frames)
    )
    chain += "".join(f"[v{n}]" for n in range(len(shot_frames)))
    chain += f"concat=n={len(shot_frames)}:v=1:a=0[v]"
    ffmpeg(
        *_shots(len(shot_frames), size, rate),
        *x264(path, "-filter_complex", chain, "-map", "[v]", *encoder),
    )
    return path


def video_with_fade_and_dissolve(path: Path, *, size: str = "160x90") -> Path:
    """Three 2 s shots at 25 fps: a fade to black and back at 2 s, a 1 s dissolve at 3.5-4.5 s.

    Shot A fades out over its last 0.5 s and shot B fades in over its first 0.5 s (the cut
    lies at frame 50); B and C cross-fade (xfade) from 3.5 s, centred on frame 100.
    """
    ffmpeg(
        *_lavfi(f"testsrc2=size={size}:rate=25:duration=2"),
        *_lavfi(f"smptebars=size={size}:rate=25:duration=2.5"),
        *_lavfi(f"rgbtestsrc=size={size}:rate=25:duration=2"),
        *x264(
            path,
            "-filter_complex",
            "[0:v]fade=t=out:st=1.5:d=0.5,format=yuv420p[a];"
            "[1:v]fade=t=in:st=0:d=0.5,format=yuv420p[b];"
            "[2:v]format=yuv420p[c];"
            "[b][c]xfade=transition=fade:duration=1:offset=1.5[bc];"
            "[a][bc]concat=n=2:v=1:a=0[v]",
            "-map", "[v]",
        ),
    )  # fmt: skip
    return path


def video_with_cut_then_dissolve(path: Path, *, encoder: Sequence[str] = ()) -> Path:
    """135 frames at 25 fps: a hard cut at frame 20, then a 0.6 s dissolve (frames 35-49,
    middle 42) into a third shot, still to the end: a cut and a dissolve within two seconds,
    as a phone could hold in one GOP.

    With a fixed keyframe interval of 60 (`-g 60 -sc_threshold 0 -bf 0`), the cut and the
    whole dissolve lie between the first two keyframes, and nothing changes between the
    second and the third.
    """
    ffmpeg(
        *_lavfi("testsrc2=size=160x90:rate=25:duration=0.8"),
        *_lavfi("smptebars=size=160x90:rate=25:duration=1.2"),
        *_lavfi("rgbtestsrc=size=160x90:rate=25:duration=4"),
        *x264(
            path,
            "-filter_complex",
            "[1:v][2:v]xfade=transition=fade:duration=0.6:offset=0.6[bc];"
            "[0:v][bc]concat=n=2:v=1:a=0,format=yuv420p[v]",
            "-map", "[v]", *encoder,
        ),
    )  # fmt: skip
    return path


def static_video(path: Path, seconds: float = 7.0) -> Path:
    """One unchanging shot (SMPTE bars), for frames at a regular interval."""
    ffmpeg(*_lavfi(f"smptebars=size=160x90:rate=10:duration={seconds:g}"), *x264(path, "-g", "10"))
    return path


def vfr_video_with_cut(path: Path) -> Path:
    """Variable frame rate: 20 frames at 10 fps, then 20 at 2 fps; a cut at frame 30 (t=7 s).

    Timestamps are set per frame and kept (`-fps_mode passthrough`), as phones record when
    light drops; a frame's time is then not its index over a rate.
    """
    ffmpeg(
        *_lavfi("testsrc2=size=160x90:rate=10:duration=3"),
        *_lavfi("smptebars=size=160x90:rate=10:duration=1"),
        *x264(
            path,
            "-filter_complex",
            "[0:v][1:v]concat=n=2:v=1:a=0,"
            "setpts='if(lt(N,20),N/10,2+(N-20)/2)/TB'[v]",
            "-map", "[v]", "-fps_mode", "passthrough", "-video_track_timescale", "1000",
        ),
    )  # fmt: skip
    return path


def ten_bit_odd_size_video(path: Path) -> Path:
    """10-bit 4:4:4 H.264 at an odd size (97x55): no 8-bit 4:2:0 shortcut applies."""
    ffmpeg(
        *_lavfi("testsrc2=size=160x90:rate=10:duration=1"),
        *x264(path, "-vf", "scale=97:55,setsar=1", pix_fmt="yuv444p10le", faststart=False),
    )
    return path


def video_sharpening_mid_shot(path: Path) -> Path:
    """A 1 s shot of bars, then 3 s of testsrc2 blurred for its first 1.5 s, then sharp.

    The second shot's first frame (a keyframe at the cut) is blurred; a sharp frame must win.
    """
    ffmpeg(
        *_lavfi("smptebars=size=320x180:rate=25:duration=1"),
        *_lavfi("testsrc2=size=320x180:rate=25:duration=3"),
        *x264(
            path,
            "-filter_complex",
            "[1:v]boxblur=3:enable='lt(t,1.5)'[blurred];[0:v][blurred]concat=n=2:v=1:a=0[v]",
            "-map", "[v]",
        ),
    )  # fmt: skip
    return path


def anamorphic_video(path: Path) -> Path:
    """80x90 stored pixels with a 2:1 sample aspect ratio: shown as 160x90 (16:9)."""
    ffmpeg(
        *_lavfi("testsrc2=size=160x90:rate=10:duration=1"),
        *x264(path, "-vf", "scale=80:90,setsar=2"),
    )
    return path


def video_of_scenes(path: Path, seeds: Sequence[int], size: str = "320x240") -> Path:
    """An H.264 video showing each seed's scene for one second, one after another, so every
    second of it is a different picture (an unambiguous time offset for clips)."""
    folder = path.parent / f"{path.name}-frames"
    folder.mkdir()
    for number, seed in enumerate(seeds):
        scene(seed, (640, 480)).save(folder / f"{number:04d}.png")
    ffmpeg(
        "-framerate", "1", "-i", str(folder / "%04d.png"),
        *x264(path, "-vf", f"scale={size.replace('x', ':')},fps=25"),
    )  # fmt: skip
    shutil.rmtree(folder)
    return path


#: Seconds a handheld shot lasts before the next one starts (the last one may be shorter).
HANDHELD_SHOT_S = 15.0


def handheld_video(
    path: Path, seeds: Sequence[int], seconds: float, speech: Path, *, size: str = "320x240"
) -> Path:
    """`seconds` of a phone filming by hand: shots of `HANDHELD_SHOT_S`, each a slow pan over
    its seed's scene with a shake on top, cut one to the next, `speech` as the soundtrack
    (AAC 48 kbit/s). `seeds` name the scenes in turn (cycled when fewer than shots): videos
    made from different seeds share no picture, as a backlog's videos mostly do, and every
    frame differs from the last, as a hand-held camera's do."""
    folder = path.parent / f"{path.name}-scenes"
    folder.mkdir()
    # Rounded first: 45.0000001 s is three shots, not a fourth of a microsecond.
    shots = max(1, math.ceil(round(seconds / HANDHELD_SHOT_S, 3)))
    inputs: list[str] = []
    chains = []
    try:
        for number in range(shots):
            picture = folder / f"{number:04d}.png"
            scene(seeds[number % len(seeds)], (640, 480)).save(picture)
            shot_s = min(HANDHELD_SHOT_S, seconds - number * HANDHELD_SHOT_S)
            inputs += ["-loop", "1", "-framerate", "25", "-t", f"{shot_s:.3f}", "-i", str(picture)]
            # A pan across the scene and back, a different pace per shot, a 4-6 pixel shake.
            pan_s = 9 + 4 * (number % 3)
            chains.append(
                f"[{number}:v]crop=400:300:"
                f"x='(iw-ow)*(0.5+0.5*sin(2*PI*t/{pan_s}))+4*sin(7.3*t)':"
                f"y='(ih-oh)*(0.5+0.4*sin(2*PI*t/{pan_s + 5}))+6*sin(5.1*t+1)',"
                f"scale={size.replace('x', ':')},setsar=1[v{number}]"
            )
        joined = "".join(f"[v{number}]" for number in range(shots))
        graph = ";".join([*chains, f"{joined}concat=n={shots}:v=1:a=0[v]"])
        ffmpeg(
            *inputs, "-i", str(speech),
            *x264(path, "-filter_complex", graph, "-map", "[v]", "-map", f"{shots}:a",
                  "-shortest", "-c:a", "aac", "-b:a", "48k", preset="ultrafast", faststart=False),
        )  # fmt: skip
    finally:
        shutil.rmtree(folder)
    return path


def clip_of(source: Path, path: Path, start_s: float, seconds: float, size: str) -> Path:
    """A clip cut out of a video, re-encoded at another size (as a re-upload would be)."""
    ffmpeg(
        "-ss", f"{start_s:g}", "-i", str(source), "-t", f"{seconds:g}",
        *x264(path, "-vf", f"scale={size.replace('x', ':')}"),
    )  # fmt: skip
    return path


def video_with_speech(path: Path, speech: Path) -> Path:
    """One shot (testsrc2, 96x64) for as long as `speech`, its soundtrack (AAC 48 kbit/s)."""
    ffmpeg(
        *_lavfi("testsrc2=size=96x64:rate=10"), "-i", str(speech),
        *x264(path, "-shortest", "-c:a", "aac", "-b:a", "48k", preset="ultrafast",
               faststart=False),
    )  # fmt: skip
    return path
