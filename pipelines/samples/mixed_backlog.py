"""A generated backlog shaped like phone intake, at any size: benchmarks that need thousands
of items (the review report's pages and pictures) measure on it, and `qarina bench` and the
plan's end-to-end check (issue 16) measure on its `phone` shape.

Phone intake is mostly photos, and many of them are re-posts: the same picture resized and
recompressed by a messaging app or mirrored, sent again by another source. The rest are short
videos with cuts and short voice notes. Items are spread over several source folders, so
copies arrive from different sources, as repeat postings do. Each file is made from its index
alone, so a backlog is reproducible and its parts can be made in parallel.

Two shapes:

- `messenger` (the default): short videos with cuts and a tone, one-phrase voice notes, the
  kinds spaced by fixed strides; cheap to make in thousands;
- `phone`: the backlog issue 16 sizes hardware for. Kinds come by shares (`video_share`,
  `audio_share`) spread evenly over the indices, so a 200-item sample and a 1,000-item backlog
  hold the same mix; videos last 10-120 s and voice notes 2-60 s, lengths spread evenly over
  the range, both with Arabic speech (espeak-ng phrases with pauses between them, padded
  with silence to the length), so a bench can split a stage's cost into a fixed part and a
  part per media second. Videos are hand-held pans over scenes of their own: like most of a
  backlog's videos, each matches nothing else in it. `start` shifts the indices, so a
  backlog made from `start=10**6` shares no file with a sample made from 0.
"""

from __future__ import annotations

import math
import multiprocessing
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from PIL import Image

from pipelines.samples import audio, photos, videos
from pipelines.samples._tools import ffmpeg, run

#: Photo sizes as phones and messengers send them, portrait and landscape.
_PHOTO_SIZES = ((640, 480), (480, 640), (800, 600), (600, 800), (1024, 768))
#: Short phrases espeak-ng speaks in its Arabic voice; voice notes cycle through them.
_PHRASES = (
    audio.GREETING,
    "نحن في الشارع الآن",
    "سمعنا صوت انفجار قرب المدرسة",
    "الرجاء إرسال المساعدة",
)
_VOICE_FORMATS = ("whatsapp-opus", "m4a-aac", "3gp-aac", "mp3")
_VOICE_SUFFIXES = {"whatsapp-opus": ".opus", "m4a-aac": ".m4a", "3gp-aac": ".3gp", "mp3": ".mp3"}

Shape = Literal["messenger", "phone"]
#: Media lengths of the phone shape, seconds: (shortest, longest).
PHONE_VIDEO_S = (10.0, 120.0)
PHONE_AUDIO_S = (2.0, 60.0)
#: Shares of the phone shape when none are given; the rest are photos and their re-posts.
PHONE_VIDEO_SHARE = 0.1
PHONE_AUDIO_SHARE = 0.1
#: A spread of lengths over a range from the index alone: consecutive videos (or notes) fall
#: far apart in the range, and any run of them covers it evenly (the golden ratio's multiples
#: are equidistributed modulo 1).
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0
#: Seconds an espeak-ng phrase with its spoken number takes, with the pause after it, about.
_PHRASE_S = 3.5


@dataclass(frozen=True)
class BacklogShape:
    """What a generated backlog holds, by kind, for the record of a benchmark."""

    photos: int
    reposts: int
    videos: int
    voice_notes: int
    sources: int
    bytes: int
    #: Media seconds of the videos and of the voice notes, as generated.
    video_s: float = 0.0
    audio_s: float = 0.0

    @property
    def items(self) -> int:
        return self.photos + self.reposts + self.videos + self.voice_notes


@dataclass(frozen=True)
class _Plan:
    folder: Path
    sources: int
    repost_every: int
    video_every: int
    audio_every: int
    shape: Shape = "messenger"
    video_share: float = 0.0
    audio_share: float = 0.0
    start: int = 0
    video_range: tuple[float, float] = PHONE_VIDEO_S
    audio_range: tuple[float, float] = PHONE_AUDIO_S


def _crossed(index: int, share: float) -> bool:
    """True for about `share` of the indices, evenly spread: where `index * share` passes a
    whole number. Any run of indices holds `share` of them, give or take one."""
    return math.floor((index + 1) * share) > math.floor(index * share)


def _kind_of(index: int, plan: _Plan) -> str:
    if plan.shape == "phone":
        return _phone_kind(index, plan)
    return _messenger_kind(index, plan)


def _phone_kind(index: int, plan: _Plan) -> str:
    """Media items (videos and notes) at their combined share, split between the two by their
    own shares; of the photos every `repost_every`-th index is a re-post of an earlier one."""
    media_share = plan.video_share + plan.audio_share
    if media_share > 0 and _crossed(index, media_share):
        ordinal = math.floor(index * media_share)
        return "video" if _crossed(ordinal, plan.video_share / media_share) else "voice_note"
    if index > plan.start and index % plan.repost_every == 0:
        return "repost"
    return "photo"


def media_seconds(index: int, span: tuple[float, float]) -> float:
    """The phone shape's length for the video or voice note at `index`: spread over `span`
    (shortest, longest seconds), to a tenth of a second."""
    low, high = span
    return round(low + (index * _GOLDEN % 1.0) * (high - low), 1)


def _messenger_kind(index: int, plan: _Plan) -> str:
    """Every `video_every`-th item is a video, every `audio_every`-th a voice note, every
    `repost_every`-th a re-posted photo, the rest photos; index 0 is always a photo, so a
    re-post always has an earlier photo to copy."""
    if index and index % plan.video_every == 0:
        return "video"
    if index and index % plan.audio_every == 0:
        return "voice_note"
    if index and index % plan.repost_every == 0:
        return "repost"
    return "photo"


def _spoken(path: Path, index: int, seconds: float) -> Path:
    """A mono WAV of exactly `seconds`: Arabic phrases, each with the item's number, and
    pauses of 0.4-1.8 s between them (espeak-ng SSML breaks), padded with silence or cut."""
    count = max(1, math.ceil(seconds / _PHRASE_S))
    parts = []
    for number in range(count):
        pause_ms = 400 + (index * 7 + number * 3) % 8 * 200
        parts.append(f"{_PHRASES[(index + number) % len(_PHRASES)]} {index}")
        parts.append(f'<break time="{pause_ms}ms"/>')
    raw = path.with_suffix(".espeak.wav")
    run(["espeak-ng", "-m", "-v", "ar", "-w", str(raw), "--", f"<speak>{' '.join(parts)}</speak>"])
    ffmpeg("-i", str(raw), "-af", "apad", "-t", f"{seconds:g}", "-ac", "1", "-c:a", "pcm_s16le",
           "-f", "wav", str(path))  # fmt: skip
    raw.unlink()
    return path


#: Scene seeds of the phone shape's videos: from here, a thousand per index (hours of shots),
#: far above any photo's seed (its index), so a video shares no picture with a photo or with
#: another video.
_VIDEO_SCENE_SEEDS = 10**10


def _video_scenes(index: int) -> range:
    """Scene seeds of the handheld shots of the video at `index`, its own."""
    first = _VIDEO_SCENE_SEEDS + index * 1000
    return range(first, first + 1000)


def _phone_media(source: Path, index: int, kind: str, plan: _Plan) -> tuple[Path, float]:
    seconds = media_seconds(index, plan.video_range if kind == "video" else plan.audio_range)
    if kind == "video":
        speech = _spoken(source / f".speech-{index:07d}.wav", index, seconds)
        path = source / f"VID_{index:07d}.mp4"
        try:
            videos.handheld_video(path, _video_scenes(index), seconds, speech)
        finally:
            speech.unlink()
        return path, seconds
    voice_format = _VOICE_FORMATS[index % len(_VOICE_FORMATS)]
    speech = _spoken(source / f".speech-{index:07d}.wav", index, seconds)
    muxer, codec = audio.VOICE_FORMATS[voice_format]
    path = source / f"PTT-{index:07d}{_VOICE_SUFFIXES[voice_format]}"
    try:
        # Bit-exact: Ogg's stream serial number is otherwise random, and the note with it.
        ffmpeg("-i", str(speech), "-ac", "1", *codec, "-fflags", "+bitexact",
               "-flags:a", "+bitexact", "-f", muxer, str(path))  # fmt: skip
    finally:
        speech.unlink()
    return path, seconds


def _make_one(task: tuple[int, _Plan]) -> tuple[str, int, float]:
    index, plan = task
    kind = _kind_of(index, plan)
    source = plan.folder / f"source-{index % plan.sources:02d}"
    source.mkdir(exist_ok=True)
    if plan.shape == "phone" and kind in ("video", "voice_note"):
        path, seconds = _phone_media(source, index, "video" if kind == "video" else "audio", plan)
        return kind, path.stat().st_size, seconds
    if kind == "photo":
        path = photos.scene_jpeg(
            source / f"IMG_{index:06d}.jpg", seed=index, size=_PHOTO_SIZES[index % 5], quality=88
        )
    elif kind == "repost":
        # A copy of an earlier photo, as a messenger passes it on: smaller and recompressed,
        # every third one mirrored; it lies in another source's folder.
        original = index - plan.repost_every + 1
        while original > plan.start and _kind_of(original, plan) != "photo":
            original -= 1
        picture = photos.scene(original, _PHOTO_SIZES[original % 5])
        picture = picture.resize((picture.width * 3 // 5, picture.height * 3 // 5))
        if index % 3 == 0:
            picture = picture.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        path = source / f"IMG-{index:06d}-WA0001.jpg"
        picture.save(path, "JPEG", quality=60)
    elif kind == "video":
        path = videos.video_of_scenes(
            source / f"VID_{index:06d}.mp4", [index, index + 1, index + 2], size="320x240"
        )
    else:
        voice_format = _VOICE_FORMATS[index % len(_VOICE_FORMATS)]
        # The item's number spoken after the phrase makes every note a recording of its own.
        path = audio.speech(
            source / f"PTT-{index:06d}{_VOICE_SUFFIXES[voice_format]}",
            f"{_PHRASES[index % len(_PHRASES)]} {index}",
            voice_format=voice_format,
        )
    return kind, path.stat().st_size, 0.0


def make_backlog(
    folder: Path,
    count: int,
    *,
    sources: int = 8,
    repost_every: int = 4,
    video_every: int = 37,
    audio_every: int = 19,
    workers: int | None = None,
    shape: Shape = "messenger",
    video_share: float = PHONE_VIDEO_SHARE,
    audio_share: float = PHONE_AUDIO_SHARE,
    start: int = 0,
    video_range: tuple[float, float] = PHONE_VIDEO_S,
    audio_range: tuple[float, float] = PHONE_AUDIO_S,
) -> BacklogShape:
    """`count` files in `sources` folders under `folder` (which must exist), made from indices
    `start` to `start + count - 1`.

    The `messenger` shape: about 68% photos, 22% re-posts of them, 5% voice notes, 3% videos
    with the default spacing (`video_every`, `audio_every`; the shares are not used). The
    `phone` shape: `video_share` videos of 10-120 s and `audio_share` voice notes of 2-60 s,
    with speech (`video_range` and `audio_range` change the lengths, shortest and longest
    seconds); of the rest every `repost_every`-th is a re-post, the others photos.
    """
    if shape not in ("messenger", "phone"):
        raise ValueError(f"unknown backlog shape {shape!r}; use messenger or phone")
    if video_share < 0 or audio_share < 0 or video_share + audio_share > 1:
        raise ValueError("video_share and audio_share must be >= 0 and sum to at most 1")
    if not 0 < video_range[0] <= video_range[1] or not 0 < audio_range[0] <= audio_range[1]:
        raise ValueError("media ranges are (shortest, longest) seconds, above zero")
    plan = _Plan(
        folder, sources, repost_every, video_every, audio_every,
        shape, video_share, audio_share, start, video_range, audio_range,
    )  # fmt: skip
    tasks = [(index, plan) for index in range(start, start + count)]
    # Phone media take seconds each: small chunks keep the workers evenly loaded.
    chunksize = 1 if shape == "phone" else 16
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        made = pool.map(_make_one, tasks, chunksize=chunksize)
    kinds = Counter(kind for kind, _, _ in made)
    return BacklogShape(
        photos=kinds["photo"],
        reposts=kinds["repost"],
        videos=kinds["video"],
        voice_notes=kinds["voice_note"],
        sources=min(sources, count),
        bytes=sum(size for _, size, _ in made),
        video_s=round(sum(seconds for kind, _, seconds in made if kind == "video"), 1),
        audio_s=round(sum(seconds for kind, _, seconds in made if kind == "voice_note"), 1),
    )
