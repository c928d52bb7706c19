"""A fuzz campaign over the probe's parsing layer (issue 17): `make fuzz`.

The probe reads every file an investigator hands in, and some are built to break it: a length
field that points past the end, a box inside itself, a header cut in half. Whatever the bytes,
the parsing layer must keep its contract, which `exercise` checks:

- `structure_flags` returns only the flags it knows, each once, within `WALK_CPU_S` of CPU;
- `detect_family` and `describe_unsupported` answer for any head;
- `ProbeStage.run` returns a result that is strict JSON, or raises `StageError`. Any other
  exception is a bug: the pipeline records it as stage_error, and Ray retries it in vain.

The seeds are small real files of every format the probe knows, made with ffmpeg and Pillow;
`mutate` changes them the way damage and attackers do, aiming at their length fields. The
bounded property tests (`test_fuzz_parsers.py`) draw the same mutations through hypothesis in
`make test`; this campaign draws them at random for minutes and writes each input that breaks
the contract to `fuzz_regressions/`, which those tests replay from then on.

    python -m tests.hardening.fuzz_campaign --minutes 10
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import hashlib
import io
import json
import random
import signal
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Literal, Protocol

from PIL import Image

from pipelines.samples._tools import ffmpeg
from workers.base import Kind, StageError, StageInput
from workers.containers import APPENDED_ARCHIVE, TRAILING_DATA, TRUNCATED, structure_flags
from workers.probe import ProbeConfig, ProbeResult, ProbeStage, describe_unsupported, detect_family
from workers.tools import ToolLimits

REGRESSIONS = Path(__file__).resolve().parent / "fuzz_regressions"
KNOWN_FLAGS = frozenset({TRUNCATED, TRAILING_DATA, APPENDED_ARCHIVE})
#: CPU seconds one structure_flags call may take on a seed-sized file (tens of KB). A walk
#: costs a few reads per box or page, milliseconds here; a second means a loop that does not
#: move forward. CPU time, not wall time, so a loaded machine does not fail it.
WALK_CPU_S = 1.0
#: CPU seconds the campaign grants one input before it calls it a hang: ffprobe runs in a
#: child process and is bounded by its own timeout, so this catches loops in our Python.
_HANG_CPU_S = 10.0
#: ffprobe's limit in the campaign: a seed-sized file takes 0.1 s, so 10 s means ffprobe
#: hangs (a classified tool_timeout, not a finding) and the campaign should move on.
_CAMPAIGN_TOOL_LIMITS = ToolLimits(timeout_s=10.0)
#: One input in this many also goes through ProbeStage.run: ffprobe costs ~100 ms, a walk
#: well under one, so the walkers get most of the campaign's inputs...
_PROBE_EVERY = 8
#: ...except photos, whose header Pillow reads in a millisecond: every one is probed.
_PHOTOS = frozenset({"png", "jpeg", "gif", "tiff", "bmp", "webp", "heic", "avif"})


class ContractBroken(AssertionError):
    """The parsing layer answered, but not as its contract says (an unknown flag, too slow)."""


# --- Seeds: one small real file per format ------------------------------------------------

_VIDEO = ("-f", "lavfi", "-i", "testsrc=s=32x24:r=10:d=0.3")
_AUDIO = ("-f", "lavfi", "-i", "sine=frequency=440:sample_rate=8000:d=0.3")
_H264_AAC = ("-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", "-shortest")
_VP8_OPUS = ("-c:v", "libvpx", "-deadline", "realtime", "-c:a", "libopus", "-shortest")
#: AMR-NB mode 7 frames: a header byte, then 31 bytes (no encoder is needed for the storage
#: format's framing, which is all the walker reads).
_AMR_FRAME = 32
_AMR_FRAMES = 12


def _encode(*args: str) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        ffmpeg(*args, str(path))

    return make


def _picture(image_format: str) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        image = Image.effect_noise((32, 24), 40).convert("RGB")
        buffer = io.BytesIO()
        if image_format == "JPEG":
            exif = Image.Exif()
            exif[0x010F] = "Qarina"  # Make: the EXIF segment is a header worth mutating
            image.save(buffer, image_format, exif=exif.tobytes())
        else:
            image.save(buffer, image_format)
        path.write_bytes(buffer.getvalue())

    return make


def _amr(path: Path) -> None:
    frames = random.Random(7).randbytes((_AMR_FRAME - 1) * _AMR_FRAMES)
    body = b"".join(
        b"\x3c" + frames[i * (_AMR_FRAME - 1) : (i + 1) * (_AMR_FRAME - 1)]
        for i in range(_AMR_FRAMES)
    )
    path.write_bytes(b"#!AMR\n" + body)


#: Format (a probe family name) -> how to make its seed. Every format with a structure walker,
#: and the photo formats whose headers Pillow and pillow-heif read for the probe.
SEED_MAKERS: dict[str, Callable[[Path], None]] = {
    "mp4": _encode(*_VIDEO, *_AUDIO, *_H264_AAC, "-movflags", "+faststart", "-f", "mp4"),
    "quicktime": _encode(*_VIDEO, *_AUDIO, *_H264_AAC, "-f", "mov"),
    "3gp": _encode(*_VIDEO, *_AUDIO, *_H264_AAC, "-f", "3gp"),
    "m4a": _encode(*_AUDIO, "-c:a", "aac", "-f", "ipod"),
    "wav": _encode(*_AUDIO, "-c:a", "pcm_s16le", "-f", "wav"),
    "avi": _encode(*_VIDEO, *_AUDIO, "-c:v", "mjpeg", "-c:a", "pcm_u8", "-f", "avi"),
    "ogg": _encode(*_AUDIO, "-c:a", "libopus", "-f", "ogg"),
    "mp3": _encode(*_AUDIO, "-c:a", "libmp3lame", "-f", "mp3"),
    "amr": _amr,
    "matroska": _encode(*_VIDEO, *_AUDIO, *_H264_AAC, "-f", "matroska"),
    "webm": _encode(*_VIDEO, *_AUDIO, *_VP8_OPUS, "-f", "webm"),
    "png": _picture("PNG"),
    "jpeg": _picture("JPEG"),
    "gif": _picture("GIF"),
    "tiff": _picture("TIFF"),
    "bmp": _picture("BMP"),
    "webp": _picture("WEBP"),
    "heic": _picture("HEIF"),
    "avif": _picture("AVIF"),
}


def make_seeds(folder: Path) -> dict[str, bytes]:
    """Every seed's bytes by format; the files are made in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    seeds = {}
    for name, make in SEED_MAKERS.items():
        path = folder / f"seed.{name}"
        make(path)
        seeds[name] = path.read_bytes()
    return seeds


# --- Where each format keeps its length fields --------------------------------------------


@dataclass(frozen=True)
class Field:
    """A length, count or size-deciding field in a seed: the bytes a lie is told in."""

    offset: int
    width: int
    order: Literal["big", "little"] = "big"


#: ISO-BMFF boxes made only of boxes, walked into.
_ISO_CONTAINERS = frozenset({b"moov", b"trak", b"mdia", b"minf", b"stbl", b"udta", b"edts"})
#: Matroska master elements (made of elements), walked into: EBML header, Segment, Info,
#: Tracks, TrackEntry, Cluster, BlockGroup, Cues, Tags, Tag, SimpleTag.
_EBML_MASTERS = frozenset(
    {0x1A45DFA3, 0x18538067, 0x1549A966, 0x1654AE6B, 0xAE, 0x1F43B675, 0xA0, 0x1C53BB6B}
    | {0x1254C367, 0x7373, 0x67C8}
)
#: JPEG markers without a length: TEM, RST0-7, SOI, EOI.
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xDA)})


def _iso_fields(data: bytes, start: int = 0, end: int | None = None) -> list[Field]:
    end = len(data) if end is None else end
    fields, offset = [], start
    while offset + 8 <= end:
        fields.append(Field(offset, 4))
        size = int.from_bytes(data[offset : offset + 4], "big")
        if size < 8:
            break
        if data[offset + 4 : offset + 8] in _ISO_CONTAINERS:
            fields += _iso_fields(data, offset + 8, min(end, offset + size))
        offset += size
    return fields


def _riff_chunks(data: bytes, start: int, end: int) -> list[Field]:
    fields, offset = [], start
    while offset + 8 <= end:
        fields.append(Field(offset + 4, 4, "little"))
        size = int.from_bytes(data[offset + 4 : offset + 8], "little")
        if data[offset : offset + 4] == b"LIST":
            fields += _riff_chunks(data, offset + 12, min(end, offset + 8 + size))
        offset += 8 + size + (size & 1)
    return fields


def _riff_fields(data: bytes) -> list[Field]:
    return [Field(4, 4, "little"), *_riff_chunks(data, 12, len(data))]


def _ogg_fields(data: bytes) -> list[Field]:
    """Per page: the header type (its end-of-stream bit), the segment count and the lacing
    values the page's length is summed from."""
    fields, offset = [], 0
    while offset + 27 <= len(data) and data[offset : offset + 4] == b"OggS":
        segments = data[offset + 26]
        fields += [Field(offset + 5, 1), Field(offset + 26, 1)]
        fields += [Field(offset + 27 + i, 1) for i in range(segments)]
        offset += 27 + segments + sum(data[offset + 27 : offset + 27 + segments])
    return fields


def _mp3_fields(data: bytes) -> list[Field]:
    """The ID3v2 tag's size, and the version and bitrate bytes of every frame sync pattern:
    together they decide a frame's length."""
    fields = [Field(6, 4)] if data.startswith(b"ID3") else []
    for at in range(len(data) - 3):
        if data[at] == 0xFF and data[at + 1] & 0xE0 == 0xE0:
            fields += [Field(at + 1, 1), Field(at + 2, 1)]
    return fields


def _amr_fields(data: bytes) -> list[Field]:
    """The frame header bytes of the AMR seed, whose frame type decides each frame's length."""
    return [Field(offset, 1) for offset in range(6, len(data), _AMR_FRAME)]


def _vint_length(first: int) -> int:
    return 9 - first.bit_length() if first else 0


def _ebml_fields(data: bytes, start: int = 0, end: int | None = None) -> list[Field]:
    end = len(data) if end is None else end
    fields, offset = [], start
    while offset < end:
        size_at = offset + _vint_length(data[offset])
        if size_at == offset or size_at >= end or not _vint_length(data[size_at]):
            break
        size_width = _vint_length(data[size_at])
        fields.append(Field(size_at, size_width))
        element = int.from_bytes(data[offset:size_at], "big")
        size = int.from_bytes(data[size_at : size_at + size_width], "big")
        size &= (1 << (7 * size_width)) - 1  # without the length marker bit
        body = size_at + size_width
        if element in _EBML_MASTERS:
            fields += _ebml_fields(data, body, min(end, body + size))
        offset = body + size
    return fields


def _png_fields(data: bytes) -> list[Field]:
    fields, offset = [], 8
    while offset + 8 <= len(data):
        fields.append(Field(offset, 4))
        offset += 12 + int.from_bytes(data[offset : offset + 4], "big")
    return fields


def _jpeg_fields(data: bytes) -> list[Field]:
    """Segment lengths up to and including the first scan's header."""
    fields, offset = [], 2
    while offset + 4 <= len(data) and data[offset] == 0xFF:
        marker = data[offset + 1]
        if marker in _JPEG_STANDALONE:
            offset += 2
            continue
        fields.append(Field(offset + 2, 2))
        if marker == 0xDA:
            break
        offset += 2 + int.from_bytes(data[offset + 2 : offset + 4], "big")
    return fields


def _tiff_fields(data: bytes) -> list[Field]:
    """The first IFD's offset and entry count."""
    order: Literal["big", "little"] = "little" if data.startswith(b"II") else "big"
    first = int.from_bytes(data[4:8], order)
    return [Field(4, 4, order), Field(first, 2, order)]


_FIXED_FIELDS: dict[str, list[Field]] = {
    # Logical screen width and height.
    "gif": [Field(6, 2, "little"), Field(8, 2, "little")],
    # File size, pixel data offset, DIB header size, width, height.
    "bmp": [Field(at, 4, "little") for at in (2, 10, 14, 18, 22)],
}

_FIELD_FINDERS: dict[str, Callable[[bytes], list[Field]]] = {
    **dict.fromkeys(("mp4", "quicktime", "3gp", "m4a", "heic", "avif"), _iso_fields),
    **dict.fromkeys(("wav", "avi", "webp"), _riff_fields),
    **dict.fromkeys(("matroska", "webm"), _ebml_fields),
    "ogg": _ogg_fields,
    "mp3": _mp3_fields,
    "amr": _amr_fields,
    "png": _png_fields,
    "jpeg": _jpeg_fields,
    "tiff": _tiff_fields,
}


def length_fields(fmt: str, seed: bytes) -> list[Field]:
    """The seed's length fields, found by walking its format's structure ([] for a format
    this does not know: its mutations then change bytes anywhere)."""
    if fmt in _FIXED_FIELDS:
        return _FIXED_FIELDS[fmt]
    finder = _FIELD_FINDERS.get(fmt)
    return [] if finder is None else finder(seed)


# --- Mutations ------------------------------------------------------------------------------


class Chooser(Protocol):
    """Where a mutation's choices come from: `random.Random` in the campaign, hypothesis's
    draws in the tests (so that a failing input shrinks to the smallest damage)."""

    def integer(self, low: int, high: int) -> int:
        """A whole number from low to high, both included."""
        ...


class RandomChooser:
    """Choices from a seeded `random.Random`, so a campaign can be rerun as it was."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def integer(self, low: int, high: int) -> int:
        return self._rng.randint(low, high)


#: Values lying length fields hold: zero, tiny, around the byte and word edges, the "unknown
#: size" markers (all ones), and the sign bit.
_INTERESTING = (
    0, 1, 2, 7, 8, 9, 12, 16, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000,
    0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF, 2**64 - 1,
)  # fmt: skip
#: Byte strings the walkers look for: magic numbers, box and chunk types, markers, padding.
_TOKENS = (
    b"OggS", b"ftyp", b"moov", b"mdat", b"free", b"RIFF", b"LIST", b"data", b"IDAT", b"IEND",
    b"\xff\xd8", b"\xff\xd9", b"\xff\xda", b"\xff\x00", b"\xff\xd0",
    b"\x1a\x45\xdf\xa3", b"\x18\x53\x80\x67", b"\x1f\x43\xb6\x75", b"\x01\xff\xff\xff\xff",
    b"ID3", b"\xff\xfb\x90\x64", b"Xing", b"Info", b"TAG", b"APETAGEX", b"#!AMR\n",
    b"#!AMR-WB\n", b"PK\x03\x04", b"ustar", b"\x00" * 8, b"\xff" * 8, b"\r\n",
)  # fmt: skip


def _position(buffer: bytearray, choose: Chooser) -> int:
    """A byte offset, half the time in the first 512 bytes, where headers live."""
    end = len(buffer) - 1 if choose.integer(0, 1) else min(len(buffer), 512) - 1
    return choose.integer(0, max(end, 0))


def _some_bytes(choose: Chooser) -> bytes:
    if choose.integer(0, 1):
        return _TOKENS[choose.integer(0, len(_TOKENS) - 1)]
    return bytes(choose.integer(0, 255) for _ in range(choose.integer(1, 16)))


def _set_field(buffer: bytearray, fields: Sequence[Field], choose: Chooser) -> None:
    """Make a length field lie: an interesting value, a small step off the truth, or
    exactly what would reach the file's end."""
    if not fields:
        _flip_bit(buffer, fields, choose)
        return
    field = fields[choose.integer(0, len(fields) - 1)]
    if field.offset + field.width > len(buffer):
        return  # an earlier mutation cut it off
    span = slice(field.offset, field.offset + field.width)
    current = int.from_bytes(buffer[span], field.order)
    how = choose.integer(0, 2)
    if how == 0:
        value = _INTERESTING[choose.integer(0, len(_INTERESTING) - 1)]
    elif how == 1:
        value = current + choose.integer(-16, 16)
    else:
        value = len(buffer) - field.offset + choose.integer(-8, 8)
    buffer[span] = (value % (1 << (8 * field.width))).to_bytes(field.width, field.order)


def _flip_bit(buffer: bytearray, fields: Sequence[Field], choose: Chooser) -> None:
    del fields
    if buffer:
        buffer[_position(buffer, choose)] ^= 1 << choose.integer(0, 7)


def _overwrite(buffer: bytearray, fields: Sequence[Field], choose: Chooser) -> None:
    del fields
    if buffer:
        at = _position(buffer, choose)
        chunk = _some_bytes(choose)
        buffer[at : at + len(chunk)] = chunk


def _insert(buffer: bytearray, fields: Sequence[Field], choose: Chooser) -> None:
    del fields
    at = _position(buffer, choose) if buffer else 0
    buffer[at:at] = _some_bytes(choose)


def _delete(buffer: bytearray, fields: Sequence[Field], choose: Chooser) -> None:
    del fields
    if buffer:
        at = _position(buffer, choose)
        del buffer[at : at + choose.integer(1, 256)]


def _truncate(buffer: bytearray, fields: Sequence[Field], choose: Chooser) -> None:
    del fields
    del buffer[choose.integer(0, len(buffer)) :]


def _duplicate(buffer: bytearray, fields: Sequence[Field], choose: Chooser) -> None:
    """Copy a span elsewhere: a box or page repeated, nested in itself, or overlapping."""
    del fields
    if buffer:
        start = _position(buffer, choose)
        span = bytes(buffer[start : start + choose.integer(1, 512)])
        at = _position(buffer, choose)
        buffer[at:at] = span


def _append(buffer: bytearray, fields: Sequence[Field], choose: Chooser) -> None:
    """Content after the end: an archive, a token, or noise."""
    del fields
    buffer += _some_bytes(choose) * choose.integer(1, 64)


_Mutation = Callable[[bytearray, Sequence[Field], Chooser], None]
#: `_set_field` twice: length fields are where a lie does its damage.
_MUTATIONS: tuple[_Mutation, ...] = (
    _set_field, _set_field, _flip_bit, _overwrite, _insert, _delete, _truncate, _duplicate,
    _append,
)  # fmt: skip


def mutate(seed: bytes, fields: Sequence[Field], choose: Chooser) -> bytes:
    """The seed after one to four mutations."""
    buffer = bytearray(seed)
    for _ in range(choose.integer(1, 4)):
        _MUTATIONS[choose.integer(0, len(_MUTATIONS) - 1)](buffer, fields, choose)
    return bytes(buffer)


# --- The contract ---------------------------------------------------------------------------


def walk_flags(family: str, path: Path) -> list[str]:
    """`structure_flags` held to its contract: known flags, each once, within WALK_CPU_S.

    Raises:
        ContractBroken: an unknown or repeated flag, or a walk over its CPU bound; and
            whatever structure_flags raises, though its contract is to raise nothing.
    """
    started = time.process_time()
    flags = structure_flags(family, path)
    spent = time.process_time() - started
    if spent > WALK_CPU_S:
        raise ContractBroken(f"structure_flags({family!r}) took {spent:.2f} CPU-s")
    if not KNOWN_FLAGS.issuperset(flags) or len(set(flags)) != len(flags):
        raise ContractBroken(f"structure_flags({family!r}) returned {flags}")
    return flags


def probe(stage: ProbeStage, path: Path) -> ProbeResult | StageError:
    """What ProbeStage.run makes of the file: its result, checked to be strict JSON (results
    are stored and hashed as JSON), or the StageError it classified the file with. Any other
    exception propagates: that is the bug this looks for."""
    try:
        result = stage.run(StageInput("0" * 64, path, Kind.OTHER), path.parent).result
    except StageError as error:
        return error
    json.dumps(result.to_json(), allow_nan=False)
    return result


def exercise(fmt: str, path: Path, stage: ProbeStage | None) -> ProbeResult | StageError | None:
    """Hold the parsing layer to its contract on one file made from the `fmt` seed: detection,
    the seed format's walker and the detected family's, then the probe when `stage` is given
    (its answer is returned)."""
    head = path.read_bytes()[:4096]
    family = detect_family(head)
    if family is None:
        describe_unsupported(head)
    walk_flags(fmt, path)
    if family is not None and family.name != fmt:
        walk_flags(family.name, path)
    return None if stage is None else probe(stage, path)


def regression_path(folder: Path, fmt: str, data: bytes) -> Path:
    """Where an input that broke the contract is kept: named by its seed format and its
    content, so the same input found twice is one file."""
    return folder / f"{fmt}-{hashlib.sha256(data).hexdigest()[:16]}.bin"


def regression_format(path: Path) -> str:
    """The seed format a regression file was made from (format names may hold a dash)."""
    return path.stem.rsplit("-", 1)[0]


# --- The campaign ---------------------------------------------------------------------------


class _Hang(ContractBroken):
    """One input kept the campaign's own Python busy past _HANG_CPU_S."""


@contextmanager
def _cpu_alarm(seconds: float) -> Iterator[None]:
    """Raise _Hang once this process has spent `seconds` of user CPU inside the block (user
    CPU, so a loaded machine or a slow ffprobe child does not ring it)."""

    def ring(signum: int, frame: FrameType | None) -> None:
        del signum, frame
        raise _Hang(f"over {seconds:.0f} CPU-s on one input")

    previous = signal.signal(signal.SIGVTALRM, ring)
    signal.setitimer(signal.ITIMER_VIRTUAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_VIRTUAL, 0)
        signal.signal(signal.SIGVTALRM, previous)


@dataclass
class Finding:
    """Inputs that broke the contract the same way: same seed format, exception and place.
    The smallest is kept, as it is the easiest to read."""

    fmt: str
    problem: str
    data: bytes
    count: int = 1


def _where(error: BaseException) -> str:
    """The innermost frame in `workers/` the error came from, else the innermost of all."""
    frames = traceback.extract_tb(error.__traceback__)
    ours = [frame for frame in frames if "/workers/" in frame.filename] or frames
    last = ours[-1]
    return f"{Path(last.filename).name}:{last.lineno} in {last.name}"


@dataclass
class Report:
    """What a campaign did and found."""

    executions: int = 0
    answers: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    findings: dict[str, Finding] = dataclasses.field(default_factory=dict)

    def found(self, fmt: str, data: bytes, error: Exception) -> None:
        problem = f"{type(error).__name__} at {_where(error)}: {str(error)[:200]}"
        key = f"{fmt} {type(error).__name__} {_where(error)}"
        finding = self.findings.get(key)
        if finding is None:
            self.findings[key] = Finding(fmt, problem, data)
            return
        finding.count += 1
        if len(data) < len(finding.data):
            finding.data, finding.problem = data, problem


def run_campaign(minutes: float, seed: int) -> Report:
    """Mutate the seeds at random for `minutes`, exercising every input; photos and one in
    `_PROBE_EVERY` others also go through ProbeStage.run. Past findings are seeds too: the code
    near an old bug is where new ones live. Ctrl-C ends it early, findings kept."""
    report = Report()
    stage = ProbeStage(ProbeConfig(tool=_CAMPAIGN_TOOL_LIMITS))
    stage.setup()
    rng = random.Random(seed)
    choose = RandomChooser(rng)
    with tempfile.TemporaryDirectory(prefix="qarina-fuzz-") as scratch:
        seeds = [
            *make_seeds(Path(scratch) / "seeds").items(),
            *((regression_format(old), old.read_bytes()) for old in REGRESSIONS.glob("*.bin")),
        ]
        corpus = [(fmt, data, length_fields(fmt, data)) for fmt, data in seeds]
        path = Path(scratch) / "input"
        deadline = time.monotonic() + minutes * 60
        try:
            while time.monotonic() < deadline:
                fmt, original, fields = corpus[rng.randrange(len(corpus))]
                data = mutate(original, fields, choose)
                path.write_bytes(data)
                with_probe = fmt in _PHOTOS or report.executions % _PROBE_EVERY == 0
                try:
                    with _cpu_alarm(_HANG_CPU_S):
                        answer = exercise(fmt, path, stage if with_probe else None)
                except Exception as error:  # any exception is a finding, kept and reported
                    report.found(fmt, data, error)
                else:
                    if isinstance(answer, StageError):
                        report.answers[f"refused: {answer.reason}"] += 1
                    elif answer is not None:
                        report.answers[f"probed: {answer.kind}"] += 1
                report.executions += 1
        except KeyboardInterrupt:
            print("stopped early", file=sys.stderr)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """Run a campaign, keep its findings as regression files; exit 1 when there are any."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--minutes", type=float, default=10.0, help="how long to run")
    parser.add_argument("--seed", type=int, default=None, help="random seed, to rerun one")
    parser.add_argument("--out", type=Path, default=REGRESSIONS, help="where findings go")
    args = parser.parse_args(argv)
    # Pillow warns about every corrupt EXIF block it skips: mutated headers are made of them.
    warnings.filterwarnings("ignore", category=UserWarning, module="PIL")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    print(f"fuzzing the probe's parsers for {args.minutes:g} min, --seed {seed}", flush=True)
    started = time.monotonic()
    report = run_campaign(args.minutes, seed)
    elapsed = time.monotonic() - started
    print(f"{report.executions} inputs in {elapsed:.0f} s ({report.executions / elapsed:.0f}/s)")
    for answer, count in sorted(report.answers.items()):
        print(f"  {answer}: {count}")
    args.out.mkdir(parents=True, exist_ok=True)
    for finding in report.findings.values():
        path = regression_path(args.out, finding.fmt, finding.data)
        path.write_bytes(finding.data)
        print(f"FOUND ({finding.count}x) {finding.problem}\n  kept as {path}")
    if not report.findings:
        print("no findings")
    return 1 if report.findings else 0


if __name__ == "__main__":
    sys.exit(main())
