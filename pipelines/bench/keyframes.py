"""`qarina bench keyframes`: shot detection against PySceneDetect and a plain ffmpeg decode.

The keyframes stage promises to be faster than decoding every frame and at least as accurate
as PySceneDetect's adaptive detector, so both claims are measured in one run on the same
clips: a 1080p H.264 clip cut together from real footage and real photos in the shared corpus,
with every cut position recorded while it is made, encoded three ways: x264's defaults
(B-frames, a keyframe at every scene cut), without B-frames (`-bf 0`), and as phones encode (a
fixed one-second GOP with no scene-cut keyframes and no B-frames), since a keyframe-first
detector must not depend on the encoder placing keyframes at the cuts. Synthetic test
patterns would flatter any detector; real pictures with slow pans and zooms, low-light
footage with a flashlight switching on, and dissolves and fades are what the stage meets in a
backlog.

Reported per clip, medians of `runs`:
- seconds and fps of the stage's `run` (after `setup`, with the probe result given, as the
  runtime calls it), of PySceneDetect's `detect(path, AdaptiveDetector())` with its defaults,
  and of `ffmpeg -threads 2 -i CLIP -f null -`; the ratios ours/PySceneDetect (target <= 0.5)
  and ours/ffmpeg (target <= 0.75), each the median of per-run ratios measured moments apart;
- precision, recall and F1 of cut detection for both detectors at +-2 frames;
- the stage's peak memory, read in a fresh process so nothing else inflates it (target < 1 GiB).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipelines.bench.report import finish, machine_info, median, scratch_folder, timed
from pipelines.config import QarinaConfig
from workers.base import Kind, StageInput, result_to_json
from workers.keyframes import KeyframesConfig, KeyframesStage
from workers.probe import ProbeStage
from workers.tools import package_version

#: Where the shared corpus sits beside a checkout: `../shared/corpus` from the project root.
DEFAULT_CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus"
CLIP_SIZE = (1920, 1080)
FPS = 30
#: A detection counts if it lands this many frames or fewer from a cut (or a transition's span).
TOLERANCE_FRAMES = 2
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
_TARGET_TO_PYSCENEDETECT = 0.5
_TARGET_TO_FFMPEG = 0.75
_TARGET_PEAK_MIB = 1024

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
_MOTIONS = ("pan-right", "zoom-in", "pan-down", "pan-left", "zoom-out", "pan-up")
#: Every fifth shot (from the third) is real footage, the others pan or zoom over a photo.
_VIDEO_EVERY, _VIDEO_FIRST = 5, 2
#: Every sixth boundary (from the third) is gradual, dissolves and fades alternating.
_GRADUAL_EVERY, _GRADUAL_FIRST = 6, 3
#: Photos are scaled to cover the frame with this margin, which the pans travel across.
_PAN_MARGIN = 1.25
_ZOOM_RANGE = 0.2


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
    """A slow pan across the photo's margin, or a 20% zoom, over the shot's length."""
    width, height = size
    progress = f"n/{last}"
    pans = {
        "pan-right": (f"(iw-ow)*{progress}", "(ih-oh)/2"),
        "pan-left": (f"(iw-ow)*(1-{progress})", "(ih-oh)/2"),
        "pan-down": ("(iw-ow)/2", f"(ih-oh)*{progress}"),
        "pan-up": ("(iw-ow)/2", f"(ih-oh)*(1-{progress})"),
    }
    if motion in pans:
        x, y = pans[motion]
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


def _frame_count(ffprobe: str, clip: Path) -> int:
    """Frames in the clip's video stream, counted from its packets (no decoding)."""
    run = subprocess.run(
        [
            ffprobe, "-v", "error", "-select_streams", "v:0", "-count_packets",
            "-show_entries", "stream=nb_read_packets", "-of", "csv=p=0", f"file:{clip}",
        ],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return int(run.stdout.strip().rstrip(","))


def make_clips(
    corpus: Path, folder: Path, seconds: float, size: tuple[int, int] = CLIP_SIZE
) -> dict[str, Any]:
    """Render the test clip once and encode it once per entry of ENCODES.

    Returns the clip paths, the shots and the true cuts. Raises RuntimeError when a corpus
    file is missing or an encoded clip does not hold exactly the frames the recipe made, since
    every cut position would then be wrong.
    """
    shots = plan_shots(seconds)
    missing = sorted({shot.source for shot in shots if not (corpus / shot.source).is_file()})
    if missing:
        raise RuntimeError(f"the shared corpus at {corpus} lacks {', '.join(missing)}")
    cuts, total = _timeline(shots)
    clips = {name: folder / f"clip-{name}.mp4" for name in ENCODES}
    encode = ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-r", str(FPS), "-an"]
    command = [
        _tool("ffmpeg"), "-hide_banner", "-v", "error", "-y", *_inputs(shots, corpus),
        "-filter_complex", _filter_graph(shots, size),
    ]  # fmt: skip
    for name, (_, options) in ENCODES.items():
        command += ["-map", f"[{name}]", *encode, *options, str(clips[name])]
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    generation_s = time.perf_counter() - started
    for name, clip in clips.items():
        frames = _frame_count(_tool("ffprobe"), clip)
        if frames != total:
            raise RuntimeError(f"clip {name} has {frames} frames, the recipe made {total}")
    return {
        "paths": clips,
        "shots": shots,
        "cuts": cuts,
        "frames": total,
        "generation_s": round(generation_s, 1),
    }


def _tool(name: str) -> str:
    """The absolute path of a tool, so the benchmark runs the binary it reports."""
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found on PATH: the benchmark needs it")
    return found


def match_cuts(
    detected: Sequence[int], truth: Sequence[TrueCut], tolerance: int = TOLERANCE_FRAMES
) -> dict[str, Any]:
    """Precision, recall and F1 of detected cut frames against the true cuts.

    Greedy one-to-one matching, closest pairs first: a detection may match any true cut whose
    span +- `tolerance` holds it, and each side is used once, so two detections of one
    dissolve count one hit and one false alarm.
    """
    pairs = sorted(
        (abs(frame - cut.frame), cut_index, detected_index)
        for cut_index, cut in enumerate(truth)
        for detected_index, frame in enumerate(detected)
        if cut.span[0] - tolerance <= frame <= cut.span[1] + tolerance
    )
    used_cuts: set[int] = set()
    used_detections: set[int] = set()
    for _distance, cut_index, detected_index in pairs:
        if cut_index not in used_cuts and detected_index not in used_detections:
            used_cuts.add(cut_index)
            used_detections.add(detected_index)
    hits = len(used_cuts)
    precision = hits / len(detected) if detected else 0.0
    recall = hits / len(truth) if truth else 0.0
    f1 = 2 * precision * recall / (precision + recall) if hits else 0.0
    recall_by_kind = {}
    for kind in sorted({cut.kind for cut in truth}):
        of_kind = [index for index, cut in enumerate(truth) if cut.kind == kind]
        found = sum(index in used_cuts for index in of_kind)
        recall_by_kind[kind] = round(found / len(of_kind), 3)
    return {
        "detected": len(detected),
        "true_cuts": len(truth),
        "hits": hits,
        "precision": round(precision, 3),
        "recall": round(recall, 3),
        "f1": round(f1, 3),
        "recall_by_kind": recall_by_kind,
        "missed": [truth[i].frame for i in range(len(truth)) if i not in used_cuts],
        "false_alarms": [detected[i] for i in range(len(detected)) if i not in used_detections],
    }


def pyscenedetect_cuts(clip: Path) -> list[int]:
    """PySceneDetect's adaptive detector with its default settings: the first frame of every
    scene after the first, the same convention as the true cuts."""
    # Imported here, not at the top: the memory probe imports this module in a fresh process
    # that must hold only what a keyframes worker holds, not OpenCV.
    from scenedetect import AdaptiveDetector, detect

    scenes = detect(str(clip), AdaptiveDetector())
    return [int(start.frame_num) for start, _end in scenes[1:]]


def _ffmpeg_decode(ffmpeg: str, clip: Path) -> None:
    """The issue's yardstick, verbatim: decode every frame on two threads, discard them."""
    subprocess.run(
        [ffmpeg, "-hide_banner", "-threads", "2", "-i", str(clip), "-f", "null", "-"],
        check=True,
        capture_output=True,
    )


def _sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


class _OurStage:
    """The keyframes stage as the runtime drives it: set up once, probe result handed in."""

    def __init__(self) -> None:
        self.stage = KeyframesStage(KeyframesConfig())
        self.stage.setup()

    def run(self, clip: Path, workdir: Path) -> tuple[float, dict[str, Any]]:
        """Probe (untimed), then time the keyframes run alone; returns seconds and result."""
        sha256 = _sha256(clip)
        probe_dir, keyframes_dir = workdir / "probe", workdir / "keyframes"
        probe_dir.mkdir(parents=True)
        keyframes_dir.mkdir()
        probe = ProbeStage().run(StageInput(sha256, clip, Kind.OTHER), probe_dir).result
        item = StageInput(sha256, clip, Kind.VIDEO, {"probe": result_to_json(probe)})
        started = time.perf_counter()
        output = self.stage.run(item, keyframes_dir)
        elapsed = time.perf_counter() - started
        return elapsed, result_to_json(output.result)

    def close(self) -> None:
        self.stage.teardown()


def report_stage_peak(clip: str, workdir: str) -> None:
    """Entry point of the memory probe: run the stage once in this (fresh) process and print
    its peak RSS and its child tools' peak RSS as JSON, in MiB (Linux reports KiB)."""
    stage = _OurStage()
    before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    stage.run(Path(clip), Path(workdir))
    stage.close()
    own_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(
        json.dumps(
            {
                "python_before_run_mib": round(before_kib / 1024, 1),
                "python_peak_mib": round(own_kib / 1024, 1),
                "largest_child_peak_mib": round(children_kib / 1024, 1),
            }
        )
    )


def _stage_peak_memory(clip: Path, workdir: Path) -> dict[str, Any]:
    """The stage's peak memory on `clip`, from a process that did nothing else.

    The worker's own peak and its largest child tool's peak are read separately (an ffmpeg
    child is not in the worker's RSS); their sum bounds what the two held at once.
    """
    code = (
        "import sys; from pipelines.bench.keyframes import report_stage_peak;"
        " report_stage_peak(sys.argv[1], sys.argv[2])"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, str(clip), str(workdir)],
        capture_output=True,
        text=True,
        check=True,
    )
    figures: dict[str, Any] = json.loads(run.stdout.strip().splitlines()[-1])
    peak = figures["python_peak_mib"] + figures["largest_child_peak_mib"]
    figures["peak_mib"] = round(peak, 1)
    return figures


def _warm_cache(clip: Path) -> None:
    """Read the clip once so every contender reads it from the page cache."""
    with clip.open("rb") as handle:
        while handle.read(8 * 1024 * 1024):
            pass


def _clip_round(
    clip: Path, frames: int, stage: _OurStage, ffmpeg: str, workdir: Path
) -> dict[str, Any]:
    """One run of the three contenders on one clip, back to back."""
    _warm_cache(clip)
    ffmpeg_s = timed(lambda: _ffmpeg_decode(ffmpeg, clip))
    started = time.perf_counter()
    pyscenedetect = pyscenedetect_cuts(clip)
    pyscenedetect_s = time.perf_counter() - started
    ours_s, ours = stage.run(clip, workdir)
    return {
        # How much of the video the stage decoded: the reason it can beat a full decode.
        "ours_frames_decoded": ours.get("frames_decoded"),
        "ffmpeg_decode_s": round(ffmpeg_s, 3),
        "pyscenedetect_s": round(pyscenedetect_s, 3),
        "ours_s": round(ours_s, 3),
        "ffmpeg_decode_fps": round(frames / ffmpeg_s, 1),
        "pyscenedetect_fps": round(frames / pyscenedetect_s, 1),
        "ours_fps": round(frames / ours_s, 1),
        "ours_to_pyscenedetect": round(ours_s / pyscenedetect_s, 3),
        "ours_to_ffmpeg_decode": round(ours_s / ffmpeg_s, 3),
        "pyscenedetect_cuts": pyscenedetect,
        "ours_cuts": ours["cuts"],
    }


def _frame_of(cut: dict[str, Any]) -> int:
    return int(cut["frame_index"])


def _clip_summary(
    measured: list[dict[str, Any]], truth: list[TrueCut], sha256: str, frames: int
) -> dict[str, Any]:
    """Medians of the timings over runs, and accuracy from the cuts each detector gave.

    Both detectors are deterministic; `cuts_stable` says whether that held, and the accuracy
    reported is that of the last run.
    """
    last = measured[-1]
    ours_frames = [_frame_of(cut) for cut in last["ours_cuts"]]
    # A stage's cut carries both its frame index and its time: at a constant 30 fps they must
    # agree, and a disagreement is a timestamp bug worth seeing in the report.
    drift = [abs(_frame_of(cut) - round(float(cut["t"]) * FPS)) for cut in last["ours_cuts"]]
    timing_keys = ("ffmpeg_decode", "pyscenedetect", "ours")
    return {
        "sha256": sha256,
        "frames": frames,
        "median": {
            name: {
                "seconds": round(median([run[f"{name}_s"] for run in measured]), 3),
                "fps": round(median([run[f"{name}_fps"] for run in measured]), 1),
            }
            for name in timing_keys
        },
        "ratios": {
            "ours_to_pyscenedetect": round(
                median([run["ours_to_pyscenedetect"] for run in measured]), 3
            ),
            "ours_to_ffmpeg_decode": round(
                median([run["ours_to_ffmpeg_decode"] for run in measured]), 3
            ),
        },
        "accuracy": {
            "pyscenedetect_adaptive": match_cuts(last["pyscenedetect_cuts"], truth),
            "ours": match_cuts(ours_frames, truth),
        },
        "ours_frame_vs_time_max_diff": max(drift, default=0),
        "cuts_stable": all(
            run["ours_cuts"] == last["ours_cuts"]
            and run["pyscenedetect_cuts"] == last["pyscenedetect_cuts"]
            for run in measured
        ),
        "runs": measured,
    }


def _ffmpeg_version(ffmpeg: str) -> str:
    run = subprocess.run([ffmpeg, "-version"], capture_output=True, text=True, check=True)
    return run.stdout.splitlines()[0]


def bench_keyframes(
    config: QarinaConfig,
    output: Path,
    *,
    runs: int = 3,
    seconds: float = 60,
    size: tuple[int, int] = CLIP_SIZE,
    corpus: Path = DEFAULT_CORPUS,
) -> dict[str, Any]:
    """Keyframes stage against PySceneDetect (adaptive) and a full ffmpeg decode, same clips.

    `size` exists for the smoke test; planners' figures come from the 1080p default.
    """
    if runs < 1 or seconds <= 0:
        raise ValueError("runs must be at least 1 and seconds positive")
    ffmpeg = _tool("ffmpeg")
    # Two cores shared with anything else distort every timing: say how busy the machine was.
    load_before = os.getloadavg()[0]
    with scratch_folder(config) as scratch:
        machine = machine_info(scratch)
        made = make_clips(corpus, scratch, seconds, size)
        truth: list[TrueCut] = made["cuts"]
        importlib.import_module("scenedetect")  # its import time is not detection time
        stage = _OurStage()
        try:
            measured: dict[str, list[dict[str, Any]]] = {name: [] for name in made["paths"]}
            for index in range(runs):
                for name, clip in made["paths"].items():
                    workdir = Path(tempfile.mkdtemp(prefix=f"run-{index}-", dir=scratch))
                    measured[name].append(_clip_round(clip, made["frames"], stage, ffmpeg, workdir))
                    shutil.rmtree(workdir)
        finally:
            stage.close()
        clips = {
            name: _clip_summary(
                measured[name],
                truth,
                _sha256(clip),
                made["frames"],
            )
            for name, clip in made["paths"].items()
        }
        memory_dir = Path(tempfile.mkdtemp(prefix="memory-", dir=scratch))
        memory = _stage_peak_memory(made["paths"]["bframes"], memory_dir)
    worst = {
        key: max(clip["ratios"][key] for clip in clips.values())
        for key in ("ours_to_pyscenedetect", "ours_to_ffmpeg_decode")
    }
    result: dict[str, Any] = {
        "benchmark": "keyframes",
        "machine": machine,
        "params": {
            "runs": runs,
            "seconds": seconds,
            "width": size[0],
            "height": size[1],
            "fps": FPS,
            "tolerance_frames": TOLERANCE_FRAMES,
            "corpus": str(corpus),
            "load_average_1m": {"before": load_before, "after": os.getloadavg()[0]},
        },
        "test_clip": {
            "frames": made["frames"],
            "duration_s": round(made["frames"] / FPS, 3),
            "encodes": {name: description for name, (description, _) in ENCODES.items()},
            "generation_s": made["generation_s"],
            "shots": [asdict(shot) for shot in made["shots"]],
            "cuts": [{**asdict(cut), "span": list(cut.span)} for cut in truth],
        },
        "peers": {
            "pyscenedetect": f"scenedetect {package_version('scenedetect')}"
            " AdaptiveDetector() defaults, opencv"
            f" {package_version('opencv-python-headless') or package_version('opencv-python')}",
            "ffmpeg_decode": f"{_ffmpeg_version(ffmpeg)}: -threads 2 -i CLIP -f null -",
            "ours": "KeyframesStage(KeyframesConfig()).run after setup and probe;"
            " includes writing its keyframe images",
        },
        "clips": clips,
        "memory": memory,
        "target": {
            "ours_to_pyscenedetect": _TARGET_TO_PYSCENEDETECT,
            "ours_to_ffmpeg_decode": _TARGET_TO_FFMPEG,
            "peak_mib": _TARGET_PEAK_MIB,
            "met_speed_vs_pyscenedetect": worst["ours_to_pyscenedetect"]
            <= _TARGET_TO_PYSCENEDETECT,
            "met_speed_vs_ffmpeg_decode": worst["ours_to_ffmpeg_decode"] <= _TARGET_TO_FFMPEG,
            "met_f1": all(
                clip["accuracy"]["ours"]["f1"] >= clip["accuracy"]["pyscenedetect_adaptive"]["f1"]
                for clip in clips.values()
            ),
            "met_memory": memory["peak_mib"] < _TARGET_PEAK_MIB,
        },
    }
    return finish(result, output, _headline(clips, memory))


def _headline(clips: dict[str, dict[str, Any]], memory: dict[str, Any]) -> str:
    lines = []
    for name, clip in clips.items():
        times, ratios, accuracy = clip["median"], clip["ratios"], clip["accuracy"]
        ours, peer = accuracy["ours"], accuracy["pyscenedetect_adaptive"]
        lines.append(
            f"{name}: ours {times['ours']['seconds']} s ({times['ours']['fps']} fps),"
            f" PySceneDetect {times['pyscenedetect']['seconds']} s"
            f" (x{ratios['ours_to_pyscenedetect']}), ffmpeg decode"
            f" {times['ffmpeg_decode']['seconds']} s (x{ratios['ours_to_ffmpeg_decode']});"
            f" F1 ours {ours['f1']} (P {ours['precision']} R {ours['recall']}),"
            f" PySceneDetect {peer['f1']} (P {peer['precision']} R {peer['recall']})"
        )
    lines.append(f"keyframes peak memory {memory['peak_mib']} MiB (worker + largest child)")
    return "\n".join(lines)
