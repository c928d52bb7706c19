"""Stage results go to JSON and back unchanged, and their JSON is what it always was.

Stored results are hashed into the custody chain, so `to_json` must keep every byte: the
results that were stored with `dataclasses.asdict` still are, and a hash entry still leaves
out the keys that do not apply to it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from workers.base import JsonRecord, Kind, StageInput, result_to_json
from workers.hashes import HashEntry, HashesResult
from workers.keyframes import CutPoint, Keyframe, KeyframesResult, Shot
from workers.metadata import MetadataResult
from workers.probe import ProbeResult
from workers.transcript import ModelRef, Segment, TranscriptResult

PDQ = "f" * 64

PROBE = ProbeResult(
    kind="video",
    mime="video/mp4",
    format="mp4",
    size_bytes=1234,
    width=1920,
    height=1080,
    duration_s=12.5,
    has_video=True,
    has_audio=False,
    rotation=90,
    flags=[],
    ffprobe={"format": {"duration": "12.5"}, "streams": [{"codec_type": "video", "tags": {}}]},
)

ASDICT_RESULTS: list[JsonRecord] = [
    PROBE,
    dataclasses.replace(PROBE, kind="photo", duration_s=None, rotation=None, ffprobe=None),
    MetadataResult(
        captured_at="2024-05-01T10:00:00+03:00",
        captured_at_source="EXIF:DateTimeOriginal",
        gps={"lat": 33.5, "lon": 36.3, "alt": None},
        device={"make": "Qarina", "model": None},
        width=640,
        height=480,
        orientation=6,
        rotation=None,
        duration_s=None,
        codecs=[],
        flags=["dates_disagree"],
        raw={"EXIF:Make": "Qarina", "EXIF:Orientation": 6, "XMP:Subject": ["a", "b"]},
    ),
    KeyframesResult(
        shots=[Shot(0.0, 1.2), Shot(1.2, 3.6)],
        frames=[
            Keyframe(0.4, 10, 0, "a" * 64, 812.5, 160, 90),
            Keyframe(2.0, 50, 1, "b" * 64, 90.125, 160, 90),
        ],
        cuts=[CutPoint(1.2, 30, "hard")],
        duration_s=3.6,
        frames_decoded=40,
        frames_total=90,
        corrupt_frames=1,
        flags=["truncated"],
        decoder="cpu",
    ),
    TranscriptResult(
        language="ar",
        language_probability=None,
        model=ModelRef("base", "c" * 64),
        device="cpu",
        compute_type="int8",
        mode="sequential",
        duration_s=4.5,
        speech_s=3.25,
        segments=[
            Segment(0.0, 1.5, "مرحبا", -0.25, 0.01, 0.9),
            Segment(1.5, 4.0, "[موسيقى]", -1.5, 0.7, 1.1, ["low_confidence", "non_speech"]),
        ],
        text="مرحبا",
        flagged_segments=1,
        flags=["doubtful_segments"],
    ),
]

#: One of each kind of hash entry, as the stage has always stored it.
STORED_ENTRIES: list[dict[str, Any]] = [
    {
        "source": "photo",
        "variant": "full",
        "pdq": PDQ,
        "quality": 100,
        "phash": "0" * 16,
        "dihedral": ["1" * 64] * 7,
        "border": [0.0, 0.115, 0.0, 0.115],
        "probes": "2" * 64 * 80,
    },
    {"source": "photo", "variant": "crop5", "pdq": PDQ, "quality": 90},
    {
        "source": "keyframe",
        "variant": "full",
        "pdq": PDQ,
        "quality": 80,
        "phash": "3" * 16,
        "dihedral": ["4" * 64] * 7,
        "border": [0, 0, 0, 0],
        "t": 2.0,
        "artifact": "b" * 64,
    },
    {
        "source": "keyframe",
        "variant": "crop5",
        "pdq": PDQ,
        "quality": 70,
        "t": 2.0,
        "artifact": "b" * 64,
    },
    {"source": "sample", "variant": "full", "pdq": PDQ, "quality": 60, "t": 1.001},
]


def _through_json(record: JsonRecord) -> Any:
    return json.loads(json.dumps(result_to_json(record)))


@pytest.mark.parametrize("result", ASDICT_RESULTS, ids=lambda result: type(result).__name__)
def test_results_round_trip_and_keep_their_asdict_json(result: JsonRecord) -> None:
    assert result_to_json(result) == dataclasses.asdict(result)
    assert type(result).from_json(_through_json(result)) == result


def test_hash_entries_keep_their_stored_json_and_round_trip() -> None:
    stored: dict[str, Any] = {
        "hashes": STORED_ENTRIES, "keyframes": 1, "samples": 1, "corrupt_frames": 0, "flags": [],
    }  # fmt: skip
    result = HashesResult.from_json(stored)
    assert [entry.source for entry in result.hashes] == [
        "photo", "photo", "keyframe", "keyframe", "sample",
    ]  # fmt: skip
    assert result.hashes[0].border == (0.0, 0.115, 0.0, 0.115)
    assert result.hashes[4].t == 1.001 and result.hashes[4].phash is None
    # Same keys, same order, absent keys still absent (never null).
    assert json.dumps(result_to_json(result)) == json.dumps(stored)
    assert HashesResult.from_json(_through_json(result)) == result


def test_a_hash_entry_made_in_code_writes_only_what_applies() -> None:
    entry = HashEntry("sample", "full", PDQ, 55, t=3.0)
    assert entry.to_json() == {
        "source": "sample",
        "variant": "full",
        "pdq": PDQ,
        "quality": 55,
        "t": 3.0,
    }
    assert HashEntry.from_json(entry.to_json()) == entry


def test_unknown_or_missing_fields_are_refused() -> None:
    """A renamed field must fail loudly where it is read, not turn into a silent default."""
    with pytest.raises(TypeError):
        HashEntry.from_json({**STORED_ENTRIES[1], "pdq_hash": PDQ})
    with pytest.raises(TypeError):
        ProbeResult.from_json({"duration_s": 10.0})


def test_upstream_results_are_read_typed_or_are_none(tmp_path: Path) -> None:
    alone = StageInput("0" * 64, tmp_path / "item", Kind.VIDEO)
    assert alone.upstream_result("probe", ProbeResult) is None
    handed = StageInput("0" * 64, tmp_path / "item", Kind.VIDEO, {"probe": PROBE.to_json()})
    assert handed.upstream_result("probe", ProbeResult) == PROBE


def test_only_records_are_stage_results() -> None:
    @dataclasses.dataclass(frozen=True)
    class Plain:
        value: int

    with pytest.raises(TypeError):
        result_to_json(Plain(1))
