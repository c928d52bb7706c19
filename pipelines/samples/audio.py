"""Audio: espeak-ng speech in the formats phones and messengers send, tones, silence, noise."""

from __future__ import annotations

from pathlib import Path

from pipelines.samples._tools import ffmpeg, run

#: A greeting Whisper base hears correctly in espeak-ng's Arabic voice; most phrases come out
#: as inventions it flags, which is honest but makes a poor demonstration.
GREETING = "السلام عليكم"

#: Containers and codecs phones and messengers send speech in: (ffmpeg muxer, codec args).
VOICE_FORMATS = {
    "ogg-opus": ("ogg", ["-c:a", "libopus", "-b:a", "16k"]),
    # A WhatsApp voice note (PTT-*.opus): Opus in Ogg, 16 kHz mono.
    "whatsapp-opus": ("ogg", ["-c:a", "libopus", "-b:a", "24k", "-ar", "16000"]),
    "m4a-aac": ("ipod", ["-c:a", "aac", "-b:a", "32k"]),
    "mp3": ("mp3", ["-c:a", "libmp3lame", "-b:a", "32k"]),
    "3gp-aac": ("3gp", ["-c:a", "aac", "-b:a", "24k", "-ar", "16000"]),
    "amr-nb": ("amr", ["-c:a", "libopencore_amrnb", "-ar", "8000", "-b:a", "12.2k"]),
    "wav": ("wav", ["-c:a", "pcm_s16le"]),
}


def speech(
    path: Path, text: str = GREETING, *, voice: str = "ar", voice_format: str = "wav"
) -> Path:
    """Speech from espeak-ng (mono, 22.05 kHz) in one of VOICE_FORMATS."""
    wav = path.with_suffix(".espeak.wav")
    run(["espeak-ng", "-v", voice, "-w", str(wav), "--", text])
    muxer, codec = VOICE_FORMATS[voice_format]
    ffmpeg("-i", str(wav), "-ac", "1", *codec, "-f", muxer, str(path))
    wav.unlink()
    return path


def ambient(path: Path, source: str, seconds: float = 8.0, *, sample_rate: int = 16_000) -> Path:
    """A mono WAV of lavfi `source`: `anullsrc` for silence, `anoisesrc=...` for noise."""
    ffmpeg("-f", "lavfi", "-i", source, "-t", f"{seconds:g}", "-ac", "1",
           "-ar", str(sample_rate), "-f", "wav", str(path))  # fmt: skip
    return path


def tone(path: Path, seconds: float = 1.0) -> Path:
    """A 300 Hz tone, 8 kHz mono WAV: audio, and neither video nor speech."""
    # The sine's own duration as well as -t: with -t alone its last samples come out changed.
    return ambient(path, f"sine=frequency=300:duration={seconds:g}", seconds, sample_rate=8000)
