"""A generated backlog shaped like phone intake, at any size: benchmarks that need thousands
of items (the review report's pages and pictures) measure on it.

Phone intake is mostly photos, and many of them are re-posts: the same picture resized and
recompressed by a messaging app or mirrored, sent again by another source. The rest are short
videos with cuts and short voice notes. Items are spread over several source folders, so
copies arrive from different sources, as repeat postings do. Each file is made from its index
alone, so a backlog is reproducible and its parts can be made in parallel.
"""

from __future__ import annotations

import multiprocessing
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from pipelines.samples import audio, photos, videos

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


@dataclass(frozen=True)
class BacklogShape:
    """What a generated backlog holds, by kind, for the record of a benchmark."""

    photos: int
    reposts: int
    videos: int
    voice_notes: int
    sources: int
    bytes: int

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


def _kind_of(index: int, plan: _Plan) -> str:
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


def _make_one(task: tuple[int, _Plan]) -> tuple[str, int]:
    index, plan = task
    kind = _kind_of(index, plan)
    source = plan.folder / f"source-{index % plan.sources:02d}"
    source.mkdir(exist_ok=True)
    if kind == "photo":
        path = photos.scene_jpeg(
            source / f"IMG_{index:06d}.jpg", seed=index, size=_PHOTO_SIZES[index % 5], quality=88
        )
    elif kind == "repost":
        # A copy of an earlier photo, as a messenger passes it on: smaller and recompressed,
        # every third one mirrored; it lies in another source's folder.
        original = index - plan.repost_every + 1
        while _kind_of(original, plan) != "photo":
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
        suffix = {"whatsapp-opus": ".opus", "m4a-aac": ".m4a", "3gp-aac": ".3gp", "mp3": ".mp3"}
        # The item's number spoken after the phrase makes every note a recording of its own.
        path = audio.speech(
            source / f"PTT-{index:06d}{suffix[voice_format]}",
            f"{_PHRASES[index % len(_PHRASES)]} {index}",
            voice_format=voice_format,
        )
    return kind, path.stat().st_size


def make_backlog(
    folder: Path,
    count: int,
    *,
    sources: int = 8,
    repost_every: int = 4,
    video_every: int = 37,
    audio_every: int = 19,
    workers: int | None = None,
) -> BacklogShape:
    """`count` files in `sources` folders under `folder` (which must exist): about 68% photos,
    22% re-posts of them, 5% voice notes, 3% videos with the default spacing."""
    plan = _Plan(folder, sources, repost_every, video_every, audio_every)
    tasks = [(index, plan) for index in range(count)]
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        made = pool.map(_make_one, tasks, chunksize=16)
    kinds = Counter(kind for kind, _ in made)
    return BacklogShape(
        photos=kinds["photo"],
        reposts=kinds["repost"],
        videos=kinds["video"],
        voice_notes=kinds["voice_note"],
        sources=min(sources, count),
        bytes=sum(size for _, size in made),
    )
