"""The metadata stage: when, where and with what an item was captured, normalised.

exiftool reads every format we meet, but each format names the same fact differently: a
photo's capture time is EXIF DateTimeOriginal plus OffsetTimeOriginal, an iPhone video's is
QuickTime CreationDate with its offset, an Android video's is the UTC CreateDate of the movie
header. Analysts need one answer per fact, with the tag it came from, and flags where the
sources disagree, because a disagreement is itself evidence (an edited file, a wrong clock).
exiftool's full record is kept alongside, so nothing the normaliser ignores is lost.
"""

from __future__ import annotations

import math
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, ClassVar

from workers.base import (
    FailureReason,
    JsonRecord,
    Kind,
    Resources,
    Stage,
    StageConfig,
    StageEnvironment,
    StageError,
    StageInput,
    StageOutput,
    StageSkipped,
)
from workers.probe import ProbeResult
from workers.tools import ExiftoolSession, ToolLimits, tool_version

#: `-G` prefixes each tag with its family-0 group (EXIF, XMP, QuickTime, Composite, ...) so a
#: value's origin is never ambiguous; `-n` gives numbers (signed decimal GPS, Orientation 1-8)
#: instead of display strings; LargeFileSupport lets exiftool read videos over 2 GiB.
EXIFTOOL_ARGS = ("-json", "-G", "-n", "-api", "LargeFileSupport=1")

#: Entries that describe the store's copy, not the evidence: its path and name (a SHA-256 in
#: the blob folder), and file-system times and permissions set by ingest or by reading it
#: (FileAccessDate changes on every read). Kept, they would mislead an analyst into reading
#: the store's times as the original's, and make identical evidence give different results.
_STORE_COPY_KEYS = frozenset(
    {
        "SourceFile",
        "File:FileName",
        "File:Directory",
        "File:FileModifyDate",
        "File:FileAccessDate",
        "File:FileInodeChangeDate",
        "File:FilePermissions",
    }
)

#: Real UTC offsets run from -12:00 to +14:00; an unknown offset hides up to this much.
_MAX_OFFSET = timedelta(hours=14)
#: Dates must lie this far inside datetime's years 1-9999: comparing one moves it by up to
#: _MAX_OFFSET, which past either end raises OverflowError. No camera wrote those years anyway.
_EARLIEST = datetime.min + _MAX_OFFSET
_LATEST = datetime.max - _MAX_OFFSET
#: The longest duration a single recording is believed to have. A continuous recorder's file
#: runs hours or days; a claimed duration past a year (an mvhd duration of 2**64 ticks) is
#: no duration, and as a date tolerance it would overflow timedelta or excuse any date.
_MAX_DURATION_S = 366 * 86400.0
#: A pixel count in Composite:ImageSize: at most ten ASCII digits. `str.isdigit` also accepts
#: superscripts, which `int` refuses, as it refuses over 4,300 digits; no image side needs ten.
_PIXELS = re.compile(r"[0-9]{1,10}")

_DATE = re.compile(
    r"^(?P<y>\d{4}):(?P<mo>\d{2}):(?P<d>\d{2})[ T](?P<h>\d{2}):(?P<mi>\d{2}):(?P<s>\d{2})"
    r"(?:\.\d+)?\s*(?P<tz>Z|[+-]\d{1,2}:?\d{2})?$"
)
_DATE_ONLY = re.compile(r"^\d{4}(:\d{2}){0,2}$")
_OFFSET = re.compile(r"^(?P<sign>[+-])(?P<h>\d{1,2}):?(?P<m>\d{2})$")


@dataclass(frozen=True)
class _DateTag:
    """Where a capture time may be found, and how its UTC offset is known."""

    tag: str
    offset_tag: str | None = None
    utc_by_spec: bool = False


#: Capture-time sources, most trustworthy first. EXIF and Apple's CreationDate are written by
#: the camera at capture; XMP and IPTC may be rewritten by editors; the QuickTime movie header
#: and Matroska dates are UTC by specification; maker notes are a last resort.
_CAPTURE_TAGS = (
    _DateTag("EXIF:DateTimeOriginal", "EXIF:OffsetTimeOriginal"),
    _DateTag("QuickTime:CreationDate"),
    _DateTag("XMP:DateTimeOriginal"),
    _DateTag("EXIF:CreateDate", "EXIF:OffsetTimeDigitized"),
    _DateTag("XMP:CreateDate"),
    _DateTag("XMP:DateCreated"),
    _DateTag("Composite:DateTimeCreated"),
    _DateTag("QuickTime:CreateDate", utc_by_spec=True),
    _DateTag("QuickTime:MediaCreateDate", utc_by_spec=True),
    _DateTag("Matroska:DateTimeOriginal", utc_by_spec=True),
    _DateTag("RIFF:DateTimeOriginal"),
    _DateTag("MakerNotes:DateTimeOriginal"),
    _DateTag("APP12:DateTimeOriginal"),
)

#: The independent clocks compared for `dates_disagree`: the camera's capture and digitising
#: times, the GPS receiver's UTC fix time, and a video's two QuickTime creation times.
_WITNESS_TAGS = (
    _DateTag("EXIF:DateTimeOriginal", "EXIF:OffsetTimeOriginal"),
    _DateTag("EXIF:CreateDate", "EXIF:OffsetTimeDigitized"),
    _DateTag("Composite:GPSDateTime", utc_by_spec=True),
    _DateTag("QuickTime:CreationDate"),
    _DateTag("QuickTime:CreateDate", utc_by_spec=True),
)

_MAKE_TAGS = (
    "EXIF:Make",
    "XMP:Make",
    "QuickTime:Make",
    "QuickTime:AndroidManufacturer",
    "MakerNotes:Make",
)
_MODEL_TAGS = (
    "EXIF:Model",
    "XMP:Model",
    "QuickTime:Model",
    "QuickTime:AndroidModel",
    "MakerNotes:Model",
)

#: Clockwise display rotation of a video -> the EXIF orientation a photo would carry.
_ROTATION_TO_ORIENTATION = {0: 1, 90: 6, 180: 3, 270: 8}

#: Altitudes outside this band (metres) are sensor garbage, not places a camera has been.
_MAX_ABS_ALTITUDE_M = 100_000.0


@dataclass(frozen=True)
class MetadataConfig(StageConfig):
    """Options of the metadata stage.

    `future_tolerance_s`: how far past "now" a capture time may be before it is flagged
    `date_in_future`; camera clocks drift minutes, not hours. `dates_tolerance_s`: how far the
    capture, digitising and GPS times may differ before `dates_disagree`; a GPS fix may be a
    few minutes stale, and a video's QuickTime dates also differ by its duration.
    """

    tool: ToolLimits = field(default_factory=lambda: ToolLimits(timeout_s=60.0, memory_mb=1024))
    future_tolerance_s: float = 3600.0
    dates_tolerance_s: float = 300.0


@dataclass(frozen=True)
class MetadataResult(JsonRecord):
    """Normalised capture metadata, plus exiftool's full record in `raw`.

    `captured_at` is ISO 8601, with its UTC offset when the file says it (naive otherwise:
    a wall-clock time in an unknown zone, never silently assumed to be UTC).
    `captured_at_source` names the exiftool tag it came from. `gps` holds decimal degrees
    (`lat`, `lon`, negative south and west) and `alt` in metres or None.
    """

    captured_at: str | None
    captured_at_source: str | None
    gps: dict[str, float | None] | None
    device: dict[str, str | None] | None
    width: int | None
    height: int | None
    orientation: int | None
    rotation: int | None
    duration_s: float | None
    codecs: list[str]
    flags: list[str]
    raw: dict[str, Any]


@dataclass(frozen=True)
class _When:
    """A parsed date: the wall-clock time as written, and its UTC offset when known."""

    local: datetime
    offset: timedelta | None

    def utc(self) -> datetime | None:
        return None if self.offset is None else self.local - self.offset

    def iso(self) -> str:
        if self.offset is None:
            return self.local.isoformat(timespec="seconds")
        return self.local.replace(tzinfo=timezone(self.offset)).isoformat(timespec="seconds")


def _parse_offset(text: Any) -> timedelta | None:
    if not isinstance(text, str):
        return None
    text = text.strip()
    if text == "Z":
        return timedelta(0)
    match = _OFFSET.match(text)
    if match is None:
        return None
    offset = timedelta(hours=int(match["h"]), minutes=int(match["m"]))
    if offset > _MAX_OFFSET or int(match["m"]) >= 60:
        return None
    return -offset if match["sign"] == "-" else offset


class _InvalidDate(ValueError):
    """A date tag is present but is no date (month 13, `1999:99:99`, garbage)."""


def _parse_date(value: Any, offset_value: Any = None, utc_by_spec: bool = False) -> _When | None:
    """A date tag's value as a _When; None when absent, a placeholder or a date without time.

    Raises:
        _InvalidDate: the value is present and meant as a date, but is not one.
    """
    if not isinstance(value, str):
        return None
    text = value.strip()
    if not text or set(text) <= set("0: ") or _DATE_ONLY.match(text):
        # Empty and "0000:00:00 00:00:00" are how cameras without a clock say "no date".
        return None
    match = _DATE.match(text)
    if match is None:
        raise _InvalidDate(text)
    try:
        local = datetime(
            int(match["y"]),
            int(match["mo"]),
            int(match["d"]),
            int(match["h"]),
            int(match["mi"]),
            int(match["s"]),
        )
    except ValueError:
        raise _InvalidDate(text) from None
    if not _EARLIEST <= local <= _LATEST:
        raise _InvalidDate(text)
    if match["tz"] is not None:
        offset = _parse_offset(match["tz"])
    elif utc_by_spec:
        offset = timedelta(0)
    else:
        offset = _parse_offset(offset_value)
    return _When(local, offset)


def _dates(
    record: Mapping[str, Any], tags: tuple[_DateTag, ...], flags: set[str]
) -> list[tuple[str, _When]]:
    found: list[tuple[str, _When]] = []
    for spec in tags:
        try:
            when = _parse_date(
                record.get(spec.tag),
                record.get(spec.offset_tag) if spec.offset_tag else None,
                spec.utc_by_spec,
            )
        except _InvalidDate:
            flags.add("date_invalid")
            continue
        if when is not None:
            found.append((spec.tag, when))
    return found


def _disagree(first: _When, second: _When, tolerance: timedelta) -> bool:
    first_utc, second_utc = first.utc(), second.utc()
    if first_utc is not None and second_utc is not None:
        return abs(first_utc - second_utc) > tolerance
    # One zone unknown: wall clocks may legitimately differ by up to a UTC offset.
    return abs(first.local - second.local) > tolerance + _MAX_OFFSET


def _in_future(when: _When, now: datetime, tolerance: timedelta) -> bool:
    utc = when.utc()
    limit = now.replace(tzinfo=None) + tolerance
    if utc is not None:
        return utc > limit
    # Unknown zone: in the future only if it is even in the earliest zone (UTC+14).
    return when.local - _MAX_OFFSET > limit


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def _duration(value: Any) -> float | None:
    """A claimed duration in seconds, or None when no recording could last it (see
    _MAX_DURATION_S): negative, or longer than a year."""
    number = _number(value)
    return number if number is not None and 0 <= number <= _MAX_DURATION_S else None


def _json_safe(value: Any) -> Any:
    """A value of exiftool's record as strict JSON can hold it. exiftool prints numbers such
    as `1e999` unquoted, which Python reads as infinity; results are stored and hashed as
    JSON, where infinity and NaN have no spelling (PostgreSQL refuses them), so they are
    kept as text."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, list):
        return [_json_safe(item) for item in value]
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    return value


def _gps_candidates(record: Mapping[str, Any]) -> list[tuple[Any, Any, Any]]:
    """(lat, lon, alt) triples from each place exiftool may report a position, best first."""
    candidates: list[tuple[Any, Any, Any]] = []
    coordinates = record.get("QuickTime:GPSCoordinates")
    if isinstance(coordinates, str):
        # ISO 6709 / Android ©xyz; with -n exiftool prints "lat lon [alt]". Read first: the
        # Composite built from it reports altitude 0 where the atom has none.
        parts = coordinates.replace(",", " ").split()
        candidates.append(
            (
                parts[0] if parts else None,
                parts[1] if len(parts) > 1 else None,
                parts[2] if len(parts) > 2 else None,
            )
        )
    if "Composite:GPSLatitude" in record or "Composite:GPSLongitude" in record:
        candidates.append(
            (
                record.get("Composite:GPSLatitude"),
                record.get("Composite:GPSLongitude"),
                record.get("Composite:GPSAltitude"),
            )
        )
    if "EXIF:GPSLatitude" in record or "EXIF:GPSLongitude" in record:
        # With -n the EXIF values are unsigned; the Ref tags carry the hemisphere.
        lat, lon = _number(record.get("EXIF:GPSLatitude")), _number(record.get("EXIF:GPSLongitude"))
        if lat is not None and str(record.get("EXIF:GPSLatitudeRef", "")).upper() == "S":
            lat = -lat
        if lon is not None and str(record.get("EXIF:GPSLongitudeRef", "")).upper() == "W":
            lon = -lon
        alt = _number(record.get("EXIF:GPSAltitude"))
        if alt is not None and record.get("EXIF:GPSAltitudeRef") == 1:
            alt = -alt
        candidates.append((lat, lon, alt))
    if "XMP:GPSLatitude" in record or "XMP:GPSLongitude" in record:
        candidates.append(
            (
                record.get("XMP:GPSLatitude"),
                record.get("XMP:GPSLongitude"),
                record.get("XMP:GPSAltitude"),
            )
        )
    return candidates


def _gps(record: Mapping[str, Any], flags: set[str]) -> dict[str, float | None] | None:
    """The first valid position; invalid or partial ones are flagged, never passed on."""
    for raw_lat, raw_lon, raw_alt in _gps_candidates(record):
        lat, lon = _number(raw_lat), _number(raw_lon)
        if lat is None or lon is None or not (-90 <= lat <= 90 and -180 <= lon <= 180):
            flags.add("gps_invalid")
            continue
        if lat == 0 and lon == 0:
            # Receivers without a fix write 0,0 ("null island"): a placeholder, not a place.
            flags.add("gps_zero")
            continue
        alt = _number(raw_alt)
        if alt is not None and abs(alt) > _MAX_ABS_ALTITUDE_M:
            alt = None
        return {"lat": lat, "lon": lon, "alt": alt}
    return None


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, bool | list | dict):
        return None
    text = str(value).replace("\x00", "").strip()
    return text or None


def _device(record: Mapping[str, Any]) -> dict[str, str | None] | None:
    make = next((t for tag in _MAKE_TAGS if (t := _text(record.get(tag)))), None)
    model = next((t for tag in _MODEL_TAGS if (t := _text(record.get(tag)))), None)
    if make is None and model is None:
        return None
    return {"make": make, "model": model}


def _orientation(value: Any) -> int | None:
    number = _number(value)
    if number is None or not number.is_integer() or not 1 <= number <= 8:
        return None
    return int(number)


def _size(record: Mapping[str, Any], probe: ProbeResult | None) -> tuple[int | None, int | None]:
    if probe is not None and probe.width is not None and probe.height is not None:
        return probe.width, probe.height
    image_size = record.get("Composite:ImageSize")
    if isinstance(image_size, str):
        parts = image_size.replace("x", " ").split()
        if len(parts) == 2 and all(_PIXELS.fullmatch(part) for part in parts):
            return int(parts[0]), int(parts[1])
    return None, None


def _codecs(probe: ProbeResult | None) -> list[str]:
    described = probe.ffprobe if probe is not None else None
    if described is None:
        return []
    codecs: list[str] = []
    for stream in described.get("streams", []):
        if not isinstance(stream, Mapping) or stream.get("codec_type") not in {"video", "audio"}:
            continue
        if stream.get("disposition", {}).get("attached_pic"):
            continue
        name = stream.get("codec_name")
        if isinstance(name, str) and name not in codecs:
            codecs.append(name)
    return codecs


class MetadataStage(Stage[MetadataConfig, MetadataResult]):
    """Extracts and normalises capture metadata with one long-lived exiftool per worker."""

    name: ClassVar[str] = "metadata"
    #: 2: dates within 14 h of the calendar's ends are `date_invalid`, durations outside 0 to
    #: 366 days unknown, non-finite numbers in `raw` kept as text (strict JSON), sizes ASCII
    #: digits only: what 1 stored for such records differs, where it did not crash.
    version: ClassVar[str] = "2"
    kinds: ClassVar[frozenset[Kind]] = frozenset({Kind.PHOTO, Kind.VIDEO, Kind.AUDIO})
    requires: ClassVar[tuple[str, ...]] = ("probe",)
    #: The actor mostly waits while its exiftool child parses (exiftool used 2.0 CPU-s of a
    #: 4.5 s run over 200 photos here), so the ask is below a core: two metadata actors and a
    #: probe actor fit a two-core node.
    resources: ClassVar[Resources] = Resources(num_cpus=0.75, memory_mb=512)
    #: exiftool answers a warm request in ~10-30 ms: 8 items make a Ray call worth its cost.
    batch_size: ClassVar[int] = 8

    def __init__(self, config: MetadataConfig | None = None) -> None:
        super().__init__(config or MetadataConfig())
        self._session: ExiftoolSession | None = None

    def __getstate__(self) -> dict[str, Any]:
        # A running exiftool cannot travel to another process; the receiver starts its own.
        state = self.__dict__.copy()
        state["_session"] = None
        return state

    def setup(self, env: StageEnvironment | None = None) -> None:
        """Start the one exiftool process this worker uses for every item."""
        del env  # exiftool needs nothing from outside the item
        self._started_session()

    def _started_session(self) -> ExiftoolSession:
        if self._session is None:
            self._session = ExiftoolSession(self.config.tool, EXIFTOOL_ARGS)
        self._session.start()
        return self._session

    def teardown(self) -> None:
        """Stop exiftool."""
        session, self._session = self._session, None
        if session is not None:
            session.close()

    @property
    def exiftool_pid(self) -> int | None:
        """The running exiftool's process id, for health checks (and tests that it is reused)."""
        return None if self._session is None else self._session.pid

    def tool_versions(self) -> dict[str, str]:
        """exiftool's version: its tag tables decide what is found and how it is named."""
        return {"exiftool": tool_version("exiftool")}

    def run(self, item: StageInput, workdir: Path) -> StageOutput[MetadataResult]:
        """Read and normalise one item's metadata.

        Raises:
            StageSkipped: `unsupported_kind` for items of kind other.
            StageError: unsupported_type when the path is not a regular file, and exiftool's
                tool_timeout / tool_crash / corrupt_media.
        """
        del workdir  # nothing is written
        if item.kind not in self.kinds:
            raise StageSkipped("unsupported_kind")
        try:
            is_regular = stat.S_ISREG(os.stat(item.path).st_mode)
        except OSError as error:
            raise StageError(
                FailureReason.CORRUPT_MEDIA, f"cannot stat the item: {error.strerror}"
            ) from None
        if not is_regular:
            # exiftool would block forever on a FIFO; the probe refuses these too.
            raise StageError(FailureReason.UNSUPPORTED_TYPE, "not a regular file")
        session = self._session or self._started_session()
        record = session.query(item.path)
        probe = item.upstream_result("probe", ProbeResult)
        return StageOutput(self.normalise(record, probe, item.kind, datetime.now(UTC)))

    def normalise(
        self,
        record: Mapping[str, Any],
        probe: ProbeResult | None,
        kind: Kind,
        now: datetime,
    ) -> MetadataResult:
        """Turn one exiftool record (and the probe's result, when there is one) into a
        MetadataResult.

        Public so the rules can be exercised on a recorded exiftool record without a file.
        """
        flags: set[str] = set()
        if "ExifTool:Error" in record:
            flags.add("exiftool_error")
        if kind is Kind.PHOTO and not any(key.startswith("EXIF:") for key in record):
            flags.add("no_exif")

        captured = _dates(record, _CAPTURE_TAGS, flags)
        source, when = captured[0] if captured else (None, None)
        if when is not None and _in_future(
            when, now, timedelta(seconds=self.config.future_tolerance_s)
        ):
            flags.add("date_in_future")

        duration = probe.duration_s if probe is not None else None
        if duration is None:
            duration = _duration(record.get("QuickTime:Duration"))
        tolerance = timedelta(seconds=self.config.dates_tolerance_s + (duration or 0.0))
        witnesses = _dates(record, _WITNESS_TAGS, flags)
        if any(
            _disagree(a, b, tolerance)
            for i, (_, a) in enumerate(witnesses)
            for _, b in witnesses[i + 1 :]
        ):
            flags.add("dates_disagree")

        rotation: int | None = None
        orientation: int | None = None
        if kind is Kind.PHOTO:
            orientation = _orientation(record.get("EXIF:Orientation"))
            if orientation is None:
                orientation = _orientation(record.get("XMP:Orientation"))
        elif kind is Kind.VIDEO:
            rotation = probe.rotation if probe is not None else None
            exiftool_rotation = _number(record.get("Composite:Rotation"))
            if rotation is None and exiftool_rotation is not None:
                rotation = round(exiftool_rotation) % 360
            orientation = _ROTATION_TO_ORIENTATION.get(rotation) if rotation is not None else None

        width, height = _size(record, probe)
        return MetadataResult(
            captured_at=when.iso() if when is not None else None,
            captured_at_source=source,
            gps=_gps(record, flags),
            device=_device(record),
            width=width,
            height=height,
            orientation=orientation,
            rotation=rotation,
            duration_s=duration if kind is not Kind.PHOTO else None,
            codecs=_codecs(probe),
            flags=sorted(flags),
            raw={
                key: _json_safe(value)
                for key, value in record.items()
                if key not in _STORE_COPY_KEYS
            },
        )
