"""The one way the samples run ffmpeg and espeak-ng: an argument list, never a shell."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

#: Every sample takes seconds to make; a hung tool fails its caller instead of hanging a run.
_TIMEOUT_S = 120

#: Quiet unless something fails, overwrite the caller's path, and never read stdin: ffmpeg
#: reads keystrokes from it, which stops a background job that shares a terminal.
_FFMPEG_OPTIONS = ("-hide_banner", "-v", "error", "-y", "-nostdin")


def run(argv: Sequence[str], *, timeout_s: float = _TIMEOUT_S) -> str:
    """Run a tool to completion and return its standard output; its own error message is
    kept in the exception. Media that takes minutes to make passes a longer `timeout_s`."""
    try:
        done = subprocess.run(list(argv), check=True, capture_output=True, timeout=timeout_s)
    except subprocess.CalledProcessError as error:
        message = error.stderr.decode(errors="replace").strip()[-2000:]
        raise RuntimeError(f"{argv[0]} exited with {error.returncode}: {message}") from error
    return done.stdout.decode(errors="replace")


def ffmpeg(*args: str, binary: str = "ffmpeg", timeout_s: float = _TIMEOUT_S) -> None:
    """ffmpeg with the options above. `binary` is the ffmpeg to run: a benchmark passes the
    absolute path of the one it reports, so the media comes from that very build."""
    run([binary, *_FFMPEG_OPTIONS, *args], timeout_s=timeout_s)
