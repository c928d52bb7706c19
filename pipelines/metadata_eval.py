"""How often the metadata stage agrees with published ground truth on real photos.

`qarina eval metadata` runs the probe and metadata stages, sequentially and without a store,
over `corpus/images_exif` and scores four fields analysts rely on: GPS position, capture time
(DateTimeOriginal), camera make/model and EXIF orientation.

The truth comes from three sources, in this order of precedence per field:
1. upstream assertions in `ground_truth.json` (orientation N is in the file name of the
   orientation test sets);
2. ExifRead's text dump in `exif-samples/dump`: an independent parser, so agreeing with it
   is evidence that our reading is right, not just that exiftool agrees with itself;
3. the exiftool 12.57 numeric reference in `ground_truth.json`, for files the dump does not
   list (Pillow and exiftool test images, newer exif-samples files) and fields it missed.
Where sources disagree with each other, the evaluation says so rather than hiding it.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from fractions import Fraction
from pathlib import Path
from typing import Any

from rich.console import Group
from rich.table import Table

from workers.base import Kind, StageError, StageInput, StageSkipped, result_to_json
from workers.metadata import MetadataStage
from workers.probe import ProbeStage

FIELDS = ("gps", "datetime_original", "make_model", "orientation")

#: Agreement rules. 1e-4 degrees is about 11 m: finer than any phone fix, coarser than the
#: rounding differences between parsers of the same rational numbers.
GPS_TOLERANCE_DEG = 1e-4

_DOC_NAMES = frozenset({"README", "README.rst", "README.md", "MANIFEST.md", "dump"})
_DOC_SUFFIXES = frozenset({".out", ".json", ".md", ".rst", ".txt"})

#: ExifRead prints Orientation as words; these are its words for EXIF values 1-8.
_EXIFREAD_ORIENTATION = {
    "Horizontal (normal)": 1,
    "Mirrored horizontal": 2,
    "Rotated 180": 3,
    "Mirrored vertical": 4,
    "Mirrored horizontal then rotated 90 CCW": 5,
    "Rotated 90 CW": 6,
    "Mirrored horizontal then rotated 90 CW": 7,
    "Rotated 90 CCW": 8,
}

#: The file-name rules stated in ground_truth.json's `upstream_assertions`.
_ORIENTATION_IN_NAME = (
    re.compile(r"^exif-samples/jpg/orientation/(?:landscape|portrait)_([1-8])\.jpg$"),
    re.compile(r"^pillow/hopper_orientation_([1-8])\.jpg$"),
)

_DUMP_LINE = re.compile(r"^(?P<group>\S+) (?P<tag>\S+) \((?P<type>[^)]*)\): (?P<value>.*)$")


@dataclass(frozen=True)
class FieldScore:
    """Agreement on one field, over the files whose truth lists it."""

    field: str
    listed: int
    agreed: int

    @property
    def rate(self) -> float:
        """Agreed / listed; 1.0 when the truth lists the field for no file."""
        return self.agreed / self.listed if self.listed else 1.0


@dataclass(frozen=True)
class Disagreement:
    """One file and field where our value differs from the truth, with where the truth came from."""

    file: str
    field: str
    truth: str
    ours: str
    truth_source: str


@dataclass(frozen=True)
class MetadataEvaluation:
    """The outcome of `evaluate_metadata`: scores, every disagreement, and notes on the truth."""

    corpus: Path
    files: int
    failures: tuple[tuple[str, str], ...]
    scores: tuple[FieldScore, ...]
    disagreements: tuple[Disagreement, ...]
    truth_notes: tuple[str, ...]

    def score(self, name: str) -> FieldScore:
        """The score of one field by name."""
        return next(score for score in self.scores if score.field == name)

    def render(self) -> Group:
        """Rich tables: per-field agreement, then each disagreement and failure, then notes."""
        scores = Table(title=f"Metadata agreement on {self.files} files in {self.corpus}")
        scores.add_column("field")
        scores.add_column("truth lists", justify="right")
        scores.add_column("agree", justify="right")
        scores.add_column("rate", justify="right")
        for score in self.scores:
            scores.add_row(score.field, str(score.listed), str(score.agreed), f"{score.rate:.1%}")
        parts: list[Any] = [scores]
        if self.disagreements:
            table = Table(title="Disagreements")
            for column in ("file", "field", "truth", "ours", "truth from"):
                table.add_column(column, overflow="fold")
            for row in self.disagreements:
                table.add_row(row.file, row.field, row.truth, row.ours, row.truth_source)
            parts.append(table)
        if self.failures:
            table = Table(title="Files the stages failed on")
            table.add_column("file", overflow="fold")
            table.add_column("reason", overflow="fold")
            for name, reason in self.failures:
                table.add_row(name, reason)
            parts.append(table)
        if self.truth_notes:
            table = Table(title="Notes on the ground truth")
            table.add_column("note", overflow="fold")
            for note in self.truth_notes:
                table.add_row(note)
            parts.append(table)
        return Group(*parts)


@dataclass
class _Truth:
    """Truth for one file: per field a value and the source it came from."""

    values: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)

    def offer(self, name: str, value: Any, source: str) -> None:
        if value is not None and name not in self.values:
            self.values[name] = value
            self.sources[name] = source


def _rational(text: str) -> float:
    numerator, _, denominator = text.strip().partition("/")
    if not denominator:
        return float(numerator)
    return 0.0 if int(denominator) == 0 else float(Fraction(int(numerator), int(denominator)))


def _dms(text: str) -> float | None:
    parts = text.strip().strip("[]").split(",")
    if len(parts) != 3:
        return None
    degrees, minutes, seconds = (_rational(part) for part in parts)
    return degrees + minutes / 60 + seconds / 3600


def _parse_dump(path: Path) -> dict[str, dict[str, str]]:
    """ExifRead's dump as {relative path: {"GROUP Tag": value}}."""
    entries: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("Opening: "):
            name = line.removeprefix("Opening: ").split("/", 1)[1]
            current = entries.setdefault("exif-samples/" + name, {})
            continue
        match = _DUMP_LINE.match(line)
        if current is not None and match:
            current[f"{match['group']} {match['tag']}"] = match["value"].strip()
    return entries


def _dump_fields(tags: dict[str, str]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    if "EXIF DateTimeOriginal" in tags:
        found["datetime_original"] = tags["EXIF DateTimeOriginal"]
    make, model = tags.get("Image Make"), tags.get("Image Model")
    if make is not None or model is not None:
        found["make_model"] = ((make or "").strip(), (model or "").strip())
    if tags.get("Image Orientation") in _EXIFREAD_ORIENTATION:
        found["orientation"] = _EXIFREAD_ORIENTATION[tags["Image Orientation"]]
    lat, lon = tags.get("GPS GPSLatitude"), tags.get("GPS GPSLongitude")
    if lat is not None and lon is not None:
        lat_value, lon_value = _dms(lat), _dms(lon)
        if lat_value is not None and lon_value is not None:
            if tags.get("GPS GPSLatitudeRef", "N").upper().startswith("S"):
                lat_value = -lat_value
            if tags.get("GPS GPSLongitudeRef", "E").upper().startswith("W"):
                lon_value = -lon_value
            found["gps"] = (lat_value, lon_value)
    return found


def _reference_fields(tags: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    if "DateTimeOriginal" in tags:
        found["datetime_original"] = str(tags["DateTimeOriginal"])
    if "Make" in tags or "Model" in tags:
        found["make_model"] = (
            str(tags.get("Make", "")).strip(),
            str(tags.get("Model", "")).strip(),
        )
    if "Orientation" in tags:
        found["orientation"] = tags["Orientation"]
    if "GPSLatitude" in tags or "GPSLongitude" in tags:
        found["gps"] = (tags.get("GPSLatitude"), tags.get("GPSLongitude"))
    return found


def _wall_clock(text: str | None) -> datetime | None:
    """The date and time as written, to the second, ignoring sub-seconds and zone."""
    if not text:
        return None
    match = re.match(r"^(\d{4})[:-](\d{2})[:-](\d{2})[ T](\d{2}):(\d{2}):(\d{2})", text.strip())
    if match is None:
        return None
    year, month, day, hour, minute, second = (int(group) for group in match.groups())
    try:
        return datetime(year, month, day, hour, minute, second)
    except ValueError:
        return None


def _is_position(value: Any) -> bool:
    if not isinstance(value, tuple) or None in value:
        return False
    try:
        lat, lon = float(value[0]), float(value[1])
    except (TypeError, ValueError):
        return False
    return abs(lat) <= 90 and abs(lon) <= 180


def _agrees(name: str, truth: Any, result: dict[str, Any] | None) -> bool:
    ours = _ours(name, result)
    if name == "gps":
        return _gps_agrees(truth, ours, result)
    if name == "datetime_original":
        wall = _wall_clock(truth)
        return wall is not None and wall == _wall_clock(ours)
    if name == "make_model":
        if ours is None:
            return False
        return bool(truth == ((ours["make"] or "").strip(), (ours["model"] or "").strip()))
    return bool(truth == ours)


def _gps_agrees(truth: Any, ours: Any, result: dict[str, Any] | None) -> bool:
    if not _is_position(truth):
        # The file holds GPS tags that are no position (Pillow's exif_gps.jpg: latitude
        # 0xFFFFFFFF, no longitude). Agreeing means keeping the raw value exactly and
        # refusing to turn it into a place.
        raw = (result or {}).get("raw", {})
        kept = {value for key, value in raw.items() if key.endswith(":GPSLatitude")}
        return ours is None and truth[0] in kept
    if ours is None:
        return False
    return bool(
        abs(float(truth[0]) - ours["lat"]) <= GPS_TOLERANCE_DEG
        and abs(float(truth[1]) - ours["lon"]) <= GPS_TOLERANCE_DEG
    )


def _ours(name: str, result: dict[str, Any] | None) -> Any:
    if result is None:
        return None
    if name == "gps":
        return result["gps"]
    if name == "datetime_original":
        return result["captured_at"]
    if name == "make_model":
        return result["device"]
    return result["orientation"]


def _show(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return ", ".join(f"{key}={item}" for key, item in value.items())
    if isinstance(value, tuple):
        return " / ".join("-" if item is None else str(item) for item in value)
    return str(value)


def _media_files(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.name not in _DOC_NAMES and path.suffix not in _DOC_SUFFIXES:
            yield path


def _images_root(corpus: Path) -> Path:
    root = corpus / "images_exif" if (corpus / "images_exif").is_dir() else corpus
    if not (root / "ground_truth.json").is_file():
        raise FileNotFoundError(
            f"no images_exif corpus with ground_truth.json under {corpus}; "
            "the evaluation needs ../shared/corpus (see its README)"
        )
    return root


def _build_truth(root: Path, files: list[str]) -> tuple[dict[str, _Truth], list[str]]:
    notes: list[str] = []
    by_lower = {name.lower(): name for name in files}
    truth = {name: _Truth() for name in files}

    for name in files:
        for pattern in _ORIENTATION_IN_NAME:
            if match := pattern.match(name):
                truth[name].offer("orientation", int(match[1]), "file-name assertion")

    dump_path = root / "exif-samples" / "dump"
    dump = _parse_dump(dump_path) if dump_path.is_file() else {}
    dump_fields: dict[str, dict[str, Any]] = {}
    for listed, tags in dump.items():
        actual = by_lower.get(listed.lower())
        if actual is None:
            stem = listed.lower().rsplit(".", 1)[0]
            alike = [name for name in files if name.lower().rsplit(".", 1)[0] == stem]
            note = f"dump lists {listed}, which is not in the corpus"
            if alike:
                note += f" (it has {alike[0]}, likely renamed; scored on the exiftool reference)"
            notes.append(note)
            continue
        if actual != listed:
            notes.append(f"dump lists {listed}; the corpus file is {actual} (case differs)")
        dump_fields[actual] = _dump_fields(tags)
        for name, value in dump_fields[actual].items():
            truth[actual].offer(name, value, "ExifRead dump")

    ground = json.loads((root / "ground_truth.json").read_text(encoding="utf-8"))
    reference: dict[str, dict[str, Any]] = ground.get("exiftool_12.57_numeric_reference", {})
    notes += _apply_reference(reference, truth, dump_fields)
    return truth, notes


def _apply_reference(
    reference: dict[str, dict[str, Any]],
    truth: dict[str, _Truth],
    dump_fields: dict[str, dict[str, Any]],
) -> list[str]:
    """Fill fields from the exiftool reference, noting where it and ExifRead's dump differ."""
    notes: list[str] = []
    for listed, tags in reference.items():
        if listed not in truth:
            notes.append(f"exiftool reference lists {listed}, which is not in the corpus")
            continue
        fields = _reference_fields(tags)
        for name, value in fields.items():
            from_dump = dump_fields.get(listed)
            if from_dump is not None and name not in from_dump:
                notes.append(
                    f"{listed}: {name} {_show(value)} is in the exiftool reference "
                    "but not in ExifRead's dump"
                )
            elif from_dump is not None and not _truths_match(name, from_dump[name], value):
                notes.append(
                    f"{listed}: {name} differs between ExifRead ({_show(from_dump[name])}) "
                    f"and exiftool ({_show(value)})"
                )
            truth[listed].offer(name, value, "exiftool reference")
    return notes


def _truths_match(name: str, first: Any, second: Any) -> bool:
    if name == "gps":
        return None not in second and all(
            abs(float(a) - float(b)) <= GPS_TOLERANCE_DEG
            for a, b in zip(first, second, strict=True)
        )
    if name == "datetime_original":
        return _wall_clock(first) == _wall_clock(second)
    return bool(first == second)


def evaluate_metadata(corpus: Path) -> MetadataEvaluation:
    """Run probe + metadata over the images_exif corpus and score agreement with its truth.

    `corpus` is the shared corpus root (or its `images_exif` folder). Files are read where
    they lie, read-only; nothing is copied into the project or written next to them.

    Raises:
        FileNotFoundError: the corpus is not there.
    """
    root = _images_root(corpus)
    paths = list(_media_files(root))
    names = [path.relative_to(root).as_posix() for path in paths]
    truth, notes = _build_truth(root, names)

    probe, metadata = ProbeStage(), MetadataStage()
    probe.setup()
    metadata.setup()
    results: dict[str, dict[str, Any] | None] = {}
    failures: list[tuple[str, str]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="qarina-eval-") as scratch:
            workdir = Path(scratch)
            for path, name in zip(paths, names, strict=True):
                sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
                try:
                    probed = result_to_json(
                        probe.run(StageInput(sha256, path, Kind.OTHER), workdir).result
                    )
                    item = StageInput(sha256, path, Kind(probed["kind"]), {"probe": probed})
                    results[name] = result_to_json(metadata.run(item, workdir).result)
                except (StageError, StageSkipped) as error:
                    results[name] = None
                    failures.append((name, str(error)))
    finally:
        metadata.teardown()

    scores: list[FieldScore] = []
    disagreements: list[Disagreement] = []
    for name in FIELDS:
        listed = agreed = 0
        for file in names:
            if name not in truth[file].values:
                continue
            listed += 1
            expected, ours = truth[file].values[name], _ours(name, results[file])
            if _agrees(name, expected, results[file]):
                agreed += 1
                continue
            disagreements.append(
                Disagreement(
                    file=file,
                    field=name,
                    truth=_show(expected),
                    ours=_show(ours),
                    truth_source=truth[file].sources[name],
                )
            )
        scores.append(FieldScore(name, listed, agreed))
    return MetadataEvaluation(
        corpus=root,
        files=len(names),
        failures=tuple(failures),
        scores=tuple(scores),
        disagreements=tuple(disagreements),
        truth_notes=tuple(notes),
    )
