"""A long recording of real Arabic speech, joined from the shared corpus's clips.

For timing transcription at length on real voices: the corpus's `audio_ar` clips, decoded as
the transcript stage decodes them, joined with short pauses and repeated until the recording
lasts as long as asked, stored as a voice note (Opus in Ogg, as messengers send them).
"""

from __future__ import annotations

import csv
import itertools
from pathlib import Path

import numpy as np

from pipelines.samples._tools import ffmpeg
from workers.transcript import SAMPLE_RATE, decode_audio

_PAUSE_S = 0.4


def speech_clips(corpus: Path) -> list[Path]:
    """The clips `corpus/transcripts.tsv` lists, in its order."""
    with (corpus / "transcripts.tsv").open(encoding="utf-8", newline="") as handle:
        return [corpus / row["file"] for row in csv.DictReader(handle, delimiter="\t")]


def build_recording(corpus: Path, minutes: float, folder: Path) -> Path:
    """The corpus clips joined with pauses, repeated to `minutes`, as Ogg/Opus 24 kbit/s."""
    pause = np.zeros(int(_PAUSE_S * SAMPLE_RATE), dtype=np.int16)
    clips = [
        np.array(decode_audio(clip, folder / "clip.pcm", 10.0)) for clip in speech_clips(corpus)
    ]
    pieces, total = [], 0
    for samples in itertools.cycle(clips):
        pieces += [samples, pause]
        total += len(samples) + len(pause)
        if total >= minutes * 60 * SAMPLE_RATE:
            break
    raw = folder / "recording.pcm"
    np.concatenate(pieces).tofile(raw)
    recording = folder / "recording.ogg"
    ffmpeg("-f", "s16le", "-ar", str(SAMPLE_RATE), "-ac", "1", "-i", str(raw),
           "-c:a", "libopus", "-b:a", "24k", str(recording), timeout_s=600)  # fmt: skip
    raw.unlink()
    return recording
