"""Generated test media, named by the property a test needs (STYLE habit 10).

Every file is made on the fly (Pillow + piexif, ffmpeg lavfi, espeak-ng), tiny, and written
under a path the test chooses, so tests need no fixtures on disk and no network. Extensions
are chosen to lie where a test needs them to: the stages must never look at names.
"""

from __future__ import annotations

import io
import os
import shutil
import struct
import subprocess
import zlib
from pathlib import Path
from typing import Any

from PIL import Image

from pipelines.samples import exif_bytes, scene

_FFMPEG = ["ffmpeg", "-hide_banner", "-v", "error", "-y", "-nostdin"]


def _ffmpeg(*args: str) -> None:
    subprocess.run([*_FFMPEG, *args], check=True, timeout=60)


def _image(size: tuple[int, int]) -> Image.Image:
    width, height = size
    image = Image.new("RGB", size, (40, 90, 160))
    for x in range(0, width, 16):
        image.paste((220, 200, 40), (x, 0, min(x + 8, width), height))
    return image


def jpeg_with_exif(path: Path, *, size: tuple[int, int] = (640, 480), **exif: Any) -> Path:
    """A JPEG photo carrying EXIF; `exif` takes `pipelines.samples.exif_bytes`'s fields."""
    _image(size).save(path, "JPEG", quality=70, exif=exif_bytes(**exif))
    return path


def jpeg_without_exif(path: Path, size: tuple[int, int] = (64, 48)) -> Path:
    """A JPEG with no EXIF at all (what messaging apps send after stripping metadata)."""
    _image(size).save(path, "JPEG", quality=70)
    return path


def png(path: Path, size: tuple[int, int] = (64, 48)) -> Path:
    """A plain PNG."""
    _image(size).save(path, "PNG")
    return path


def jpeg_bytes_named_png(directory: Path) -> Path:
    """JPEG content under a `.png` name: the kind must come from the bytes."""
    return jpeg_with_exif(directory / "photo.png", size=(64, 48))


def html_named_mp4(directory: Path) -> Path:
    """A web page saved as `clip.mp4`, as browsers and scrapers often do."""
    path = directory / "clip.mp4"
    path.write_text("<!DOCTYPE html>\n<html><head><title>clip</title></head><body></body></html>\n")
    return path


def truncated_jpeg(path: Path) -> Path:
    """A JPEG cut off before its End Of Image marker (an interrupted transfer)."""
    buffer = io.BytesIO()
    _image((320, 240)).save(buffer, "JPEG", quality=80)
    data = buffer.getvalue()
    path.write_bytes(data[: len(data) * 2 // 3])
    return path


def png_bomb(path: Path, width: int = 100_000, height: int = 100_000) -> Path:
    """A tiny PNG whose header claims 10^10 pixels: a decompression bomb by its header alone."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )
    return path


def video_with_cuts(path: Path, seconds: float = 2.0, *, with_audio: bool = True) -> Path:
    """A small H.264 MP4 with a hard cut in the middle (testsrc2, then SMPTE bars)."""
    half = f"{seconds / 2:g}"
    args = [
        "-f", "lavfi", "-i", f"testsrc2=size=96x64:rate=10:duration={half}",
        "-f", "lavfi", "-i", f"smptebars=size=96x64:rate=10:duration={half}",
    ]
    if with_audio:
        args += ["-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds:g}"]
    args += ["-filter_complex", "[0:v][1:v]concat=n=2:v=1:a=0[v]", "-map", "[v]"]
    if with_audio:
        args += ["-map", "2:a", "-c:a", "aac", "-b:a", "32k"]
    args += ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]
    args += ["-f", "mp4", str(path)]
    _ffmpeg(*args)
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
    """An MP4 with a location and a creation time, as an Android phone records them.

    Verified with ffmpeg 5.1 and exiftool 12.57: in MP4, `-metadata location=` (ISO 6709)
    becomes a 3GPP `loci` box, which exiftool reads as Composite:GPSLatitude/Longitude with
    the box's always-present altitude (0 here) and 16.16 fixed-point precision (~1e-5
    degrees). `make`/`model` go into the Android keys (com.android.manufacturer/model), which
    ffmpeg writes only with `use_metadata_tags`; that flag also copies the location into the
    `mdta` keys. Real Android ©xyz atoms are read as QuickTime:GPSCoordinates instead.
    """
    location = f"{lat:+08.4f}{lon:+09.4f}/"
    args = [
        "-f", "lavfi", "-i", "testsrc2=size=64x48:rate=10:duration=0.5",
        "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
        "-metadata", f"location={location}",
        "-metadata", f"creation_time={creation_time}",
    ]
    if make is not None:
        args += ["-metadata", f"com.android.manufacturer={make}"]
    if model is not None:
        args += ["-metadata", f"com.android.model={model}"]
    if make is not None or model is not None:
        args += ["-movflags", "use_metadata_tags"]
    _ffmpeg(*args, "-f", "mp4", str(path))
    return path


def rotated_video(path: Path, degrees_clockwise: int = 90) -> Path:
    """An MP4 whose video track carries a display matrix, as a phone held upright writes it.

    FFmpeg 5.1 has no option to write one, so the identity matrix of the `tkhd` box is
    replaced in place (ISO/IEC 14496-12 8.3.2: a 3x3 matrix of 16.16 and 2.30 fixed point).
    """
    _ffmpeg(
        "-f", "lavfi", "-i", "testsrc2=size=64x48:rate=10:duration=0.5",
        "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-f", "mp4", str(path),
    )
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


def audio_wav(path: Path, seconds: float = 1.0) -> Path:
    """A short mono WAV tone."""
    _ffmpeg(
        "-f", "lavfi", "-i", f"sine=frequency=300:duration={seconds:g}",
        "-ac", "1", "-ar", "8000", "-f", "wav", str(path),
    )
    return path


def audio_ogg_opus(path: Path, text: str = "مرحبا بكم") -> Path:
    """A short Arabic voice note in Ogg/Opus, as WhatsApp sends them (espeak-ng, or a tone).

    espeak-ng is the design's speech source; without it the note is a sine tone, which is
    all the probe and metadata stages need.
    """
    wav = path.with_suffix(".src.wav")
    if shutil.which("espeak-ng"):
        subprocess.run(["espeak-ng", "-v", "ar", "-w", str(wav), text], check=True, timeout=60)
    else:
        audio_wav(wav)
    _ffmpeg("-i", str(wav), "-c:a", "libopus", "-b:a", "16k", "-f", "ogg", str(path))
    wav.unlink()
    return path


def corrupt_video(path: Path) -> Path:
    """An MP4 signature with garbage after it: looks like a video, decodes as nothing."""
    header = struct.pack(">I", 24) + b"ftypisom" + b"\x00\x00\x02\x00" + b"isomiso2"
    path.write_bytes(header + b"\xde\xad\xbe\xef" * 512)
    return path


def fifo(path: Path) -> Path:
    """A named pipe: opening it for reading blocks forever unless a stage refuses it first."""
    os.mkfifo(path)
    return path


#: lavfi sources that look nothing alike, for shots with unmistakable cuts between them.
_SHOT_SOURCES = ("testsrc2", "smptebars", "mandelbrot", "rgbtestsrc", "testsrc", "yuvtestsrc")


def _x264(path: Path, *extra: str) -> list[str]:
    # `+faststart` puts the index first, as phones and messaging apps do: a truncated copy
    # then still says how many frames it should have had.
    return [
        *extra, "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p",
        "-movflags", "+faststart", "-f", "mp4", str(path),
    ]


def video_with_hard_cuts(
    path: Path,
    shot_frames: tuple[int, ...] = (20, 15, 25),
    *,
    size: str = "160x90",
    rate: int = 25,
    encoder: tuple[str, ...] = (),
) -> Path:
    """An H.264 MP4 of shots of the given lengths (frames): cuts at their running sums.

    `encoder` adds x264 options, e.g. a fixed keyframe interval without scene-cut keyframes
    (`-g 12 -sc_threshold 0`), as phones write, so cuts fall between keyframes.
    """
    args: list[str] = []
    for number, _frames in enumerate(shot_frames):
        source = _SHOT_SOURCES[number % len(_SHOT_SOURCES)]
        args += ["-f", "lavfi", "-i", f"{source}=size={size}:rate={rate}"]
    chain = "".join(
        f"[{n}:v]trim=end_frame={frames},setpts=PTS-STARTPTS,format=yuv420p[v{n}];"
        for n, frames in enumerate(shot_frames)
    )
    chain += "".join(f"[v{n}]" for n in range(len(shot_frames)))
    chain += f"concat=n={len(shot_frames)}:v=1:a=0[v]"
    _ffmpeg(*args, *_x264(path, "-filter_complex", chain, "-map", "[v]", *encoder))
    return path


def video_with_fade_and_dissolve(path: Path, *, size: str = "160x90") -> Path:
    """Three 2 s shots at 25 fps: a fade to black and back at 2 s, a 1 s dissolve at 3.5-4.5 s.

    Shot A fades out over its last 0.5 s and shot B fades in over its first 0.5 s (the cut
    lies at frame 50); B and C cross-fade (xfade) from 3.5 s, centred on frame 100.
    """
    _ffmpeg(
        "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=25:duration=2",
        "-f", "lavfi", "-i", f"smptebars=size={size}:rate=25:duration=2.5",
        "-f", "lavfi", "-i", f"rgbtestsrc=size={size}:rate=25:duration=2",
        *_x264(
            path,
            "-filter_complex",
            "[0:v]fade=t=out:st=1.5:d=0.5,format=yuv420p[a];"
            "[1:v]fade=t=in:st=0:d=0.5,format=yuv420p[b];"
            "[2:v]format=yuv420p[c];"
            "[b][c]xfade=transition=fade:duration=1:offset=1.5[bc];"
            "[a][bc]concat=n=2:v=1:a=0[v]",
            "-map", "[v]",
        ),
    )
    return path


def static_video(path: Path, seconds: float = 7.0) -> Path:
    """One unchanging shot (SMPTE bars), for frames at a regular interval."""
    _ffmpeg(
        "-f", "lavfi", "-i", f"smptebars=size=160x90:rate=10:duration={seconds:g}",
        *_x264(path, "-g", "10"),
    )
    return path


def vfr_video_with_cut(path: Path) -> Path:
    """Variable frame rate: 20 frames at 10 fps, then 20 at 2 fps; a cut at frame 30 (t=7 s).

    Timestamps are set per frame and kept (`-fps_mode passthrough`), as phones record when
    light drops; a frame's time is then not its index over a rate.
    """
    _ffmpeg(
        "-f", "lavfi", "-i", "testsrc2=size=160x90:rate=10:duration=3",
        "-f", "lavfi", "-i", "smptebars=size=160x90:rate=10:duration=1",
        *_x264(
            path,
            "-filter_complex",
            "[0:v][1:v]concat=n=2:v=1:a=0,"
            "setpts='if(lt(N,20),N/10,2+(N-20)/2)/TB'[v]",
            "-map", "[v]", "-fps_mode", "passthrough", "-video_track_timescale", "1000",
        ),
    )
    return path


def ten_bit_odd_size_video(path: Path) -> Path:
    """10-bit 4:4:4 H.264 at an odd size (97x55): no 8-bit 4:2:0 shortcut applies."""
    _ffmpeg(
        "-f", "lavfi", "-i", "testsrc2=size=160x90:rate=10:duration=1",
        "-vf", "scale=97:55,setsar=1",
        "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv444p10le", "-f", "mp4", str(path),
    )
    return path


def video_sharpening_mid_shot(path: Path) -> Path:
    """A 1 s shot of bars, then 3 s of testsrc2 blurred for its first 1.5 s, then sharp.

    The second shot's first frame (a keyframe at the cut) is blurred; a sharp frame must win.
    """
    _ffmpeg(
        "-f", "lavfi", "-i", "smptebars=size=320x180:rate=25:duration=1",
        "-f", "lavfi", "-i", "testsrc2=size=320x180:rate=25:duration=3",
        *_x264(
            path,
            "-filter_complex",
            "[1:v]boxblur=3:enable='lt(t,1.5)'[blurred];[0:v][blurred]concat=n=2:v=1:a=0[v]",
            "-map", "[v]",
        ),
    )
    return path


def truncated_copy(source: Path, path: Path, keep: float) -> Path:
    """The first `keep` fraction of a file's bytes: a transfer that broke off."""
    data = source.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def anamorphic_video(path: Path) -> Path:
    """80x90 stored pixels with a 2:1 sample aspect ratio: shown as 160x90 (16:9)."""
    _ffmpeg(
        "-f", "lavfi", "-i", "testsrc2=size=160x90:rate=10:duration=1",
        *_x264(path, "-vf", "scale=80:90,setsar=2"),
    )
    return path


def scene_jpeg(
    path: Path, seed: int, size: tuple[int, int] = (640, 480), quality: int = 90
) -> Path:
    """A photo-like picture (see `pipelines.samples.scene`): unrelated for different seeds."""
    scene(seed, size).save(path, "JPEG", quality=quality)
    return path


def cropped(source: Path, path: Path, sides: tuple[float, float, float, float]) -> Path:
    """A copy with fractions cut from the left, top, right and bottom, recompressed."""
    with Image.open(source) as image:
        width, height = image.size
        left, top, right, bottom = sides
        box = (round(width * left), round(height * top),
               width - round(width * right), height - round(height * bottom))  # fmt: skip
        image.crop(box).save(path, "JPEG", quality=80)
    return path


def letterboxed(source: Path, path: Path, bar_fraction: float = 0.15) -> Path:
    """The picture on a black canvas with bars above and below (a re-posted screenshot)."""
    with Image.open(source) as image:
        bar = round(image.height * bar_fraction)
        canvas = Image.new("RGB", (image.width, image.height + 2 * bar), (0, 0, 0))
        canvas.paste(image.convert("RGB"), (0, bar))
        canvas.save(path, "JPEG", quality=85)
    return path


def video_of_scenes(path: Path, seeds: list[int], size: str = "320x240") -> Path:
    """An H.264 video showing each seed's scene for one second, one after another, so every
    second of it is a different picture (an unambiguous time offset for clips)."""
    folder = path.parent / f"{path.name}-frames"
    folder.mkdir()
    for number, seed in enumerate(seeds):
        scene(seed, (640, 480)).save(folder / f"{number:04d}.png")
    _ffmpeg(
        "-framerate", "1", "-i", str(folder / "%04d.png"),
        *_x264(path, "-vf", f"scale={size.replace('x', ':')},fps=25"),
    )  # fmt: skip
    shutil.rmtree(folder)
    return path


def clip_of(source: Path, path: Path, start_s: float, seconds: float, size: str) -> Path:
    """A clip cut out of a video, re-encoded at another size (as a re-upload would be)."""
    _ffmpeg(
        "-ss", f"{start_s:g}", "-i", str(source), "-t", f"{seconds:g}",
        *_x264(path, "-vf", f"scale={size.replace('x', ':')}"),
    )  # fmt: skip
    return path


#: Containers and codecs phones and messengers send speech in: (ffmpeg muxer, codec args).
VOICE_FORMATS = {
    "ogg-opus": ("ogg", ["-c:a", "libopus", "-b:a", "16k"]),
    "m4a-aac": ("ipod", ["-c:a", "aac", "-b:a", "32k"]),
    "mp3": ("mp3", ["-c:a", "libmp3lame", "-b:a", "32k"]),
    "3gp-aac": ("3gp", ["-c:a", "aac", "-b:a", "24k", "-ar", "16000"]),
    "amr-nb": ("amr", ["-c:a", "libopencore_amrnb", "-ar", "8000", "-b:a", "12.2k"]),
    "wav": ("wav", ["-c:a", "pcm_s16le"]),
}


def speech(path: Path, text: str, *, voice: str = "ar", voice_format: str = "wav") -> Path:
    """Speech from espeak-ng in one of VOICE_FORMATS."""
    wav = path.with_suffix(".espeak.wav")
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(wav), "--", text], check=True, timeout=60)
    muxer, codec = VOICE_FORMATS[voice_format]
    _ffmpeg("-i", str(wav), "-ac", "1", *codec, "-f", muxer, str(path))
    wav.unlink()
    return path


def ambient(path: Path, source: str, seconds: float = 8.0) -> Path:
    """A WAV of lavfi `source`: `anullsrc` for silence, `anoisesrc=...` for noise."""
    _ffmpeg("-f", "lavfi", "-i", source, "-t", f"{seconds:g}", "-ac", "1", "-ar", "16000",
            "-f", "wav", str(path))  # fmt: skip
    return path


def video_with_speech(path: Path, speech_file: Path) -> Path:
    """A small H.264 MP4 whose soundtrack is `speech_file` (AAC)."""
    _ffmpeg(
        "-f", "lavfi", "-i", "testsrc2=size=96x64:rate=10", "-i", str(speech_file),
        "-shortest", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
        "-c:a", "aac", "-b:a", "48k", "-f", "mp4", str(path),
    )  # fmt: skip
    return path
