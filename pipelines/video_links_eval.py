"""`qarina eval dupes`, videos: real corpus videos, the copies people make of them, and the links.

Every decodable real video of the corpus with a few seconds of footage (a slow pan, handheld
footage, a fast pan over a textured field) is cut, re-encoded at other frame rates, played
faster and slower, and has stills taken from it at times drawn with a fixed seed (as they
are, resized and recompressed, cropped a little). Originals and copies go through the real
pipeline (probe, keyframes, hashes, the matcher with its on-demand frame check); each copy
should link to its original saying what was done (offset, speed, the still's time), and no
copy of one video may link to another video's family.

Stills as they are and resized go in (and are processed) before the videos they come from,
the rest after: both directions of the search count, a photo querying stored frames and a
video's frames querying stored photos. A still cropped a little is found only by its own
crop probes, so only when it comes after its video (a video's frames carry no probes).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import numpy as np

from evidence import matches
from pipelines.config import QarinaConfig
from pipelines.ingest import ingest_paths
from pipelines.plan import Plan
from pipelines.runner import run_plan
from pipelines.samples import video_edits
from pipelines.samples.video_edits import Edit
from pipelines.session import open_matcher, open_store

#: Real videos of the corpus long enough to cut (corpus-relative), each its own family.
VIDEOS = (
    "video_meta/jcodec/test1.short.mkv",
    "video_meta/pixelprobe/valid.mp4",
    "video_meta/jcodec/out9_sm.webm",
)
#: A link's time (a still's, or a copy's offset) within this of the truth is right: a frame
#: and a half at 24-30 fps, as ffmpeg's seek lands on the frame at or after the time asked.
TIME_TOLERANCE_S = 0.07
#: A reported speed within this of the truth is right.
SPEED_TOLERANCE = 0.06


def _edits(source: Path, duration_s: float, folder: Path, seed: int) -> list[Edit]:
    """The copies made of one video: two cuts of different lengths, two frame rates, two
    speeds, and stills at three drawn times, as they are, resized and cropped."""
    rng = np.random.default_rng(seed)
    at = sorted(round(float(t), 2) for t in rng.uniform(0.3 * duration_s, 0.9 * duration_s, 3))
    return [
        video_edits.trimmed(source, folder / "trim-a.mp4", round(0.2 * duration_s, 2),
                            round(0.5 * duration_s, 2)),
        video_edits.trimmed(source, folder / "trim-b.mp4", round(0.35 * duration_s, 2),
                            round(0.6 * duration_s, 2)),
        video_edits.refps(source, folder / "fps15.mp4", 15),
        video_edits.refps(source, folder / "fps50.mp4", 50),
        video_edits.sped(source, folder / "fast.mp4", 1.25),
        video_edits.sped(source, folder / "slow.mp4", 0.8),
        video_edits.still(source, folder / "still.jpg", at[0]),
        video_edits.still(source, folder / "still-resized.jpg", at[1], scale=0.6, quality=6),
        video_edits.still(source, folder / "still-cropped.jpg", at[2], crop=0.03),
    ]  # fmt: skip


@dataclass
class VideoLinksEvaluation:
    """Per edit kind: copies made, linked to their original, and linked saying the truth."""

    by_kind: dict[str, dict[str, int]] = field(default_factory=dict)
    false_links: list[list[str]] = field(default_factory=list)
    copies: list[dict[str, Any]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        linked = sum(counts["linked"] for counts in self.by_kind.values())
        made = sum(counts["copies"] for counts in self.by_kind.values())
        return {
            "recall": round(linked / made, 4) if made else None,
            "by_kind": self.by_kind,
            "false_links": len(self.false_links),
            "wrong": self.false_links,
            "copies": self.copies,
        }


def evaluate_video_links(corpus: Path) -> VideoLinksEvaluation:
    """Make the copies, run them and their originals through the pipeline, score the links."""
    with tempfile.TemporaryDirectory(prefix="qarina-eval-videos-") as scratch:
        data = Path(scratch)
        config = QarinaConfig(data_dir=data, db_url=f"sqlite:///{data / 'eval.sqlite3'}")
        family: dict[str, str] = {}
        made: list[tuple[str, str, Edit]] = []
        originals: dict[str, str] = {}
        store = open_store(config)
        try:
            plan = Plan.default(["probe", "keyframes", "hashes"])

            def ingest(path: Path, name: str) -> str:
                sha256 = ingest_paths(store, plan, config, [path], source="corpus").sha256s[0]
                family.setdefault(sha256, name)
                return sha256

            # Stills before their video, the video, then the copies made by cutting.
            batches: tuple[list[tuple[Path, str, Edit | None]], ...] = ([], [], [])
            for number, name in enumerate(VIDEOS):
                source = corpus / name
                if not source.is_file():
                    raise FileNotFoundError(f"no {name} in {corpus}")
                folder = data / f"copies-{number}"
                folder.mkdir()
                batches[1].append((source, name, None))
                for edit in _edits(source, _duration(source), folder, seed=number):
                    before = edit.at_s is not None and not edit.crop
                    batches[0 if before else 2].append((edit.path, name, edit))
            matcher = open_matcher(config, store, plan)
            for batch in batches:
                for path, name, made_by in batch:
                    sha256 = ingest(path, name)
                    if made_by is None:
                        originals[name] = sha256
                    else:
                        made.append((sha256, name, made_by))
                run_plan(store, plan, config)
                matcher.update("qarina-eval")
            links = matches.all_links(store.database)
        finally:
            store.close()
    return _score(links, family, originals, made)


def _duration(path: Path) -> float:
    with av.open(str(path)) as container:
        return float(container.duration or 0) / av.time_base


def _score(
    links: list[matches.Link],
    family: dict[str, str],
    originals: dict[str, str],
    made: list[tuple[str, str, Edit]],
) -> VideoLinksEvaluation:
    result = VideoLinksEvaluation()
    for link in links:
        if family.get(link.a_sha256) != family.get(link.b_sha256):
            result.false_links.append([family[link.a_sha256], family[link.b_sha256], link.kind])
    for sha256, name, edit in made:
        original = originals[name]
        direct = [
            matches.as_seen_from(link, sha256)
            for link in links
            if {link.a_sha256, link.b_sha256} == {sha256, original}
        ]
        counts = result.by_kind.setdefault(edit.kind, {"copies": 0, "linked": 0, "right": 0})
        counts["copies"] += 1
        seen = direct[0] if direct else None
        right = seen is not None and _says_the_truth(seen, edit)
        counts["linked"] += seen is not None
        counts["right"] += right
        result.copies.append(
            {
                "video": name,
                "edit": edit.kind,
                "truth": {"offset_s": edit.offset_s, "speed": edit.speed, "at_s": edit.at_s},
                "linked": seen is not None,
                "right": right,
                "kind": None if seen is None else seen["kind"],
                "other_time_s": None if seen is None else seen["other_time_s"],
                "offset_s": None if seen is None else seen["details"].get("offset_s"),
                "speed": None if seen is None else seen["details"].get("speed", 1.0),
            }
        )
    return result


def _says_the_truth(seen: dict[str, Any], edit: Edit) -> bool:
    """Whether a link, seen from the copy, gives the edit's time, offset and speed."""
    if edit.at_s is not None:
        found: float | None = seen["other_time_s"]
        return found is not None and abs(found - edit.at_s) <= TIME_TOLERANCE_S
    details = seen["details"]
    speed = float(details.get("speed", 1.0))
    offset = float(details.get("offset_s", 0.0))
    return (
        abs(speed - edit.speed) <= SPEED_TOLERANCE
        and abs(offset - edit.offset_s) <= 2 * TIME_TOLERANCE_S + 0.5 * abs(edit.speed - 1)
    )
