"""Fuzzing the probe and metadata parsing layer (issue 17), bounded for `make test`.

Every file an investigator hands in is parsed before anything else: its magic bytes, its
container's length fields (`structure_flags`), its header (Pillow, ffprobe) and its metadata
(exiftool's record, normalised). Hostile or damaged bytes must end as a result or as a
classified `StageError`, never as another exception: the pipeline would record that as
stage_error, a bug, and Ray would retry it in vain. So these properties are checked over
random bytes and over small real files of every format, mutated where it hurts (length fields,
truncation, spliced tokens), with hypothesis's fixed seed and no example database, so that a
run is the same on every machine. `make fuzz` runs the same mutations for minutes
(`tests.hardening.fuzz_campaign`); the inputs it found are replayed here from
`fuzz_regressions/`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from workers import metadata
from workers.base import Kind, StageError
from workers.metadata import MetadataStage
from workers.probe import ProbeResult, ProbeStage, describe_unsupported, detect_family

from .fuzz_campaign import (
    REGRESSIONS,
    SEED_MAKERS,
    exercise,
    length_fields,
    make_seeds,
    mutate,
    regression_format,
)

#: Pillow warns about every corrupt EXIF block it skips; mutated headers are made of them.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:PIL")

#: Deterministic (a fixed seed, no example database) and free of wall-clock deadlines, which a
#: loaded CI machine would miss; each test sets its own number of examples.
_BOUNDED = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

FORMATS = sorted(SEED_MAKERS)
ROUTES = {"photo", "av", "audio", "archive"}


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """One small real file of every format (about a second of ffmpeg and Pillow in all)."""
    return make_seeds(tmp_path_factory.mktemp("seeds"))


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where each example's bytes are written. Module-scoped: hypothesis runs every example
    in one call of the test, and refuses function-scoped fixtures, which would not be fresh
    for each example anyway."""
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def probe_stage() -> ProbeStage:
    """One probe for every example, as a worker keeps one for every item."""
    stage = ProbeStage()
    stage.setup()
    return stage


class _Draws:
    """Mutation choices drawn by hypothesis, so that a failing input shrinks to the least
    damage that still fails."""

    def __init__(self, data: st.DataObject) -> None:
        self._data = data

    def integer(self, low: int, high: int) -> int:
        return self._data.draw(st.integers(low, high))


def _mutated(data: st.DataObject, seeds: Mapping[str, bytes]) -> tuple[str, bytes]:
    fmt = data.draw(st.sampled_from(FORMATS), label="format")
    return fmt, mutate(seeds[fmt], length_fields(fmt, seeds[fmt]), _Draws(data))


@settings(_BOUNDED, max_examples=1000)
@given(data=st.data())
def test_walkers_survive_mutated_seeds(
    seeds: dict[str, bytes], scratch: Path, data: st.DataObject
) -> None:
    fmt, mutated = _mutated(data, seeds)
    path = scratch / "mutated"
    path.write_bytes(mutated)
    exercise(fmt, path, stage=None)


@settings(_BOUNDED, max_examples=600)
@given(fmt=st.sampled_from(FORMATS), keep=st.integers(0, 64), tail=st.binary(max_size=2048))
def test_walkers_survive_random_bytes(
    seeds: dict[str, bytes], scratch: Path, fmt: str, keep: int, tail: bytes
) -> None:
    """Random bytes, bare or behind the first bytes of a real header (so the walker gets past
    the magic number into the length fields)."""
    path = scratch / "random"
    path.write_bytes(seeds[fmt][:keep] + tail)
    exercise(fmt, path, stage=None)


@settings(_BOUNDED, max_examples=1000)
@given(fmt=st.sampled_from(FORMATS), keep=st.integers(0, 16), tail=st.binary(max_size=4096))
def test_detection_answers_any_head(
    seeds: dict[str, bytes], fmt: str, keep: int, tail: bytes
) -> None:
    head = (seeds[fmt][:keep] + tail)[:4096]
    family = detect_family(head)
    assert family is None or family.route in ROUTES
    assert describe_unsupported(head)


@settings(_BOUNDED, max_examples=100)
@given(data=st.data())
def test_probe_classifies_mutated_seeds(
    seeds: dict[str, bytes], scratch: Path, probe_stage: ProbeStage, data: st.DataObject
) -> None:
    """A result (strict JSON) or a StageError, whatever the damage: `exercise` lets any
    other exception through, and so fails the test. Few examples: ffprobe costs ~0.1 s."""
    fmt, mutated = _mutated(data, seeds)
    path = scratch / "probed"
    path.write_bytes(mutated)
    assert isinstance(exercise(fmt, path, probe_stage), ProbeResult | StageError)


@pytest.mark.parametrize("path", sorted(REGRESSIONS.glob("*.bin")), ids=lambda path: str(path.name))
def test_regression_inputs_keep_the_contract(path: Path, probe_stage: ProbeStage) -> None:
    """Inputs that once broke the contract (kept by `make fuzz`, or by hand) keep it now."""
    exercise(regression_format(path), path, probe_stage)


# --- The metadata normaliser over hostile exiftool records ----------------------------------

_numbers = st.integers(-(10**16), 10**16) | st.floats(allow_nan=True, allow_infinity=True)
_number_text = _numbers.map(str) | st.sampled_from(["1e999", "-0", " 12.5 ", "0x10", "½"])
_offset_text = st.builds(
    "{}{:02d}:{:02d}".format, st.sampled_from("+-"), st.integers(0, 99), st.integers(0, 99)
)
_zone_text = st.sampled_from(["", "Z", ".5", "+14:00", "-12:00", " +01:00"]) | _offset_text
#: Dates as exiftool writes them: real ones, many on the first and last days datetime holds
#: (where moving a date by its zone leaves the range), and impossible ones (month 13, hour 99).
_datetimes = (
    st.datetimes()
    | st.datetimes(max_value=datetime(1, 1, 2))
    | st.datetimes(min_value=datetime(9999, 12, 30))
)


def _exif_date(when: datetime, zone: str) -> str:
    """A date as EXIF writes it, `YYYY:MM:DD HH:MM:SS`, then a zone (strftime's %Y would
    drop the leading zeros of years before 1000)."""
    return f"{when.year:04d}:{when:%m:%d %H:%M:%S}{zone}"


_date_text = st.builds(_exif_date, _datetimes, _zone_text) | st.builds(
    "{:04d}:{:02d}:{:02d} {:02d}:{:02d}:{:02d}{}".format,
    *[st.integers(0, 9999)] + [st.integers(0, 99)] * 5,
    _zone_text,
)
_gps_text = st.lists(_number_text, max_size=4).map(" ".join)
_size_text = st.builds("{}x{}".format, _number_text, _number_text) | st.just("²x3")
#: Up to a megabyte of one character: exiftool prints whole comment and XMP blocks as values.
_huge_text = st.builds(str.__mul__, st.characters(), st.integers(0, 1_000_000))
_scalars = (
    st.none()
    | st.booleans()
    | _numbers
    | _number_text
    | st.text(max_size=32)
    | _huge_text
    | st.sampled_from(["S", "W", "", "0000:00:00 00:00:00", "\x00"])
)
#: Any value exiftool's JSON can hold, of any tag (a list where one value was expected).
_values = (
    _scalars
    | st.lists(_scalars, max_size=3)
    | st.dictionaries(st.text(max_size=8), _scalars, max_size=3)
)

#: The tags the normaliser reads, each with the values it expects and any other: its date and
#: name tables are read from the module, so a tag added there is fuzzed here.
_TAG_VALUES = {
    **dict.fromkeys(
        {*metadata._MAKE_TAGS, *metadata._MODEL_TAGS, *metadata._STORE_COPY_KEYS}
        | {"EXIF:GPSLatitudeRef", "EXIF:GPSLongitudeRef", "ExifTool:Error"},
        _values,
    ),
    **dict.fromkeys(
        {
            f"{group}:GPS{axis}"
            for group in ("Composite", "EXIF", "XMP")
            for axis in ("Latitude", "Longitude", "Altitude")
        }
        | {"EXIF:GPSAltitudeRef", "EXIF:Orientation", "XMP:Orientation"}
        | {"Composite:Rotation", "QuickTime:Duration"},
        _numbers | _values,
    ),
    **dict.fromkeys(
        {spec.tag for spec in (*metadata._CAPTURE_TAGS, *metadata._WITNESS_TAGS)},
        _date_text | _values,
    ),
    **dict.fromkeys(
        {spec.offset_tag for spec in metadata._CAPTURE_TAGS if spec.offset_tag},
        _offset_text | _values,
    ),
    "QuickTime:GPSCoordinates": _gps_text | _values,
    "Composite:ImageSize": _size_text | _values,
}
#: Any of those tags (each present half the time), and others.
_records = st.builds(
    lambda known, other: {**other, **known},
    st.fixed_dictionaries({}, optional=_TAG_VALUES),
    st.dictionaries(st.text(max_size=16), _values, max_size=4),
)


#: "Now" for the explicit examples, fixed so that they are the same on every run.
_NOW = datetime(2025, 6, 1, tzinfo=UTC)


def _video_probe(duration: float | None, rotation: int | None) -> ProbeResult:
    return ProbeResult(
        kind="video", mime="video/mp4", format="mp4", size_bytes=1 << 20, width=64,
        height=48, duration_s=duration, has_video=True, has_audio=False, rotation=rotation,
        flags=[], ffprobe={"streams": [{"codec_type": "video", "codec_name": "h264"}]},
    )  # fmt: skip


_probes = st.none() | st.builds(
    _video_probe,
    st.none() | st.floats(0, 1e7),
    st.sampled_from([None, 0, 90, 180, 270]),
)


@settings(_BOUNDED, max_examples=500)
@given(
    record=_records,
    probe=_probes,
    kind=st.sampled_from([Kind.PHOTO, Kind.VIDEO, Kind.AUDIO]),
    now=st.datetimes(datetime(2000, 1, 1), datetime(2100, 1, 1), timezones=st.just(UTC)),
)
# Found by this test: dates whose UTC form, or the window of every possible zone, falls
# outside the years 1-9999; a claimed duration no timedelta holds; infinity in the record
# (exiftool prints "1e999" unquoted); an image size in digits `int` cannot read.
@example({"EXIF:DateTimeOriginal": "0001:01:01 00:00:00"}, None, Kind.PHOTO, _NOW)
@example({"EXIF:CreateDate": "9999:12:31 23:00:00-12:00"}, None, Kind.PHOTO, _NOW)
@example({"QuickTime:Duration": 1e300}, None, Kind.VIDEO, _NOW)
@example({"EXIF:UserComment": math.inf}, None, Kind.PHOTO, _NOW)
@example({"Composite:ImageSize": "²x3"}, None, Kind.PHOTO, _NOW)
def test_metadata_normaliser_survives_hostile_records(
    record: dict[str, Any], probe: ProbeResult | None, kind: Kind, now: datetime
) -> None:
    """Wrong types, huge strings, NaN and infinity, impossible dates, offsets, positions and
    sizes: the normaliser answers with a result that is strict JSON, or a StageError."""
    try:
        result = MetadataStage().normalise(record, probe, kind, now)
    except StageError:
        return
    json.dumps(result.to_json(), allow_nan=False)
