"""`qarina eval dupes`: near-duplicate links against the corpus ground truth.

The corpus's `neardup_images` folder is ingested into a scratch store and processed by the
real pipeline (probe, hashes, the matcher with its keypoint checks), then every pair of
items is scored: a pair within one ground-truth group should be linked, a pair across groups
should not. Hard negatives (four different shots of one desk scene, distinct UKBench objects,
unrelated photos) are counted separately, since linking one of them is the error that
matters most: it would tell an analyst that two different events are one.
"""

from __future__ import annotations

import itertools
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from evidence import matches
from pipelines.config import QarinaConfig
from pipelines.dedup.reports import clusters
from pipelines.ingest import ingest_paths
from pipelines.plan import Plan
from pipelines.runner import SequentialExecutor, run_queue
from pipelines.session import open_matcher, open_store
from workers.hashes import crop_sides

#: Ground-truth groups: files showing one picture. Everything else in a group of the ground
#: truth file is a distinct picture. Names are relative to `neardup_images`.
_BRIDGE = "pdq-bridge"
_GROUPS: dict[str, str] = {
    "pdq/bridge-mods/": _BRIDGE,
    "pdq/dih/": _BRIDGE,
    "python-threatexchange/sample-b.jpg": _BRIDGE,
    "python-threatexchange/letterboxed_sample-b.jpg": _BRIDGE,
    "imagededup/mixed_images/ukbench00120": "ukbench00120",
    "imagededup/ukbench00120_gray.jpg": "ukbench00120",
    "imagededup/base_images/ukbench00120.jpg": "ukbench00120",
    "imagededup/formats_images/ukbench09380": "ukbench09380",
    "imagededup/base_images/ukbench09380.jpg": "ukbench09380",
    "imagededup/mixed_images/ukbench09268.jpg": "ukbench09268",
    "imagededup/base_images/ukbench09268.jpg": "ukbench09268",
}
#: Folders whose files are all distinct pictures, and hard negatives of one another.
_HARD_NEGATIVE_FOLDERS = ("pdq/exif-rotn/",)
#: The ThreatExchange mode-conversion samples have no ground truth: reported, not scored.
_UNSCORED = ("python-threatexchange/I16.png", "python-threatexchange/LA.png",
             "python-threatexchange/rgb.jpeg")  # fmt: skip
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".heic", ".tif", ".tiff"}


#: Cropped copies made of one photo per group: (label, fraction cut from left, top, right,
#: bottom). Random crops use a fixed seed so every run scores the same copies.
_CROP_PREFIX = "cropped/"
_CROP_TO_ORIGINAL = "cropped copy to its original"
_CROP_RANDOM_COPIES = 2
_CROP_MAX = 0.05


def _crop_plan(seed: int) -> list[tuple[str, tuple[float, float, float, float]]]:
    rng = np.random.default_rng(seed)
    plan = [("sym5", (0.05, 0.05, 0.05, 0.05)), ("left5", (0.05, 0.0, 0.0, 0.0))]
    for copy in range(_CROP_RANDOM_COPIES):
        sides = tuple(round(float(rng.uniform(0, _CROP_MAX)), 4) for _ in range(4))
        plan.append((f"rand{copy}", sides))  # type: ignore[arg-type]
    return plan


def _cropped_copies(files: list[Path], root: Path, folder: Path) -> list[tuple[Path, str]]:
    """Cropped, recompressed copies of the first photo of each group (what an app does when
    a user trims a picture before forwarding it), named after their original's group."""
    folder.mkdir(parents=True)
    made: list[tuple[Path, str]] = []
    seen: set[str] = set()
    for number, path in enumerate(files):
        name = str(path.relative_to(root))
        group = _group_of(name)
        if group in seen or name in _UNSCORED:
            continue
        seen.add(group)
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened).convert("RGB")
        for label, sides in _crop_plan(number):
            target = folder / f"{number}-{label}.jpg"
            crop_sides(image, sides).save(target, "JPEG", quality=80)
            made.append((target, f"{_CROP_PREFIX}{label}/{name}"))
    return made


def _group_of(name: str) -> str:
    name = name.split("/", 2)[2] if name.startswith(_CROP_PREFIX) else name
    for prefix, group in _GROUPS.items():
        if name.startswith(prefix):
            return group
    return f"distinct:{name}"


@dataclass
class DupesEvaluation:
    """Pair counts at the item level (byte-identical files are one item)."""

    items: int = 0
    positives: int = 0
    negatives: int = 0
    hard_negatives: int = 0
    true_links: int = 0
    #: Positive pairs that end up in one cluster, linked directly or through other copies.
    same_cluster: int = 0
    false_links: int = 0
    hard_negative_links: int = 0
    missed: list[list[str]] = field(default_factory=list)
    wrong: list[list[str]] = field(default_factory=list)
    unscored_links: list[list[str]] = field(default_factory=list)
    by_group: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def recall(self) -> float:
        return self.true_links / self.positives if self.positives else 1.0

    @property
    def precision(self) -> float:
        linked = self.true_links + self.false_links
        return self.true_links / linked if linked else 1.0

    def as_json(self) -> dict[str, Any]:
        return {
            **{key: value for key, value in self.__dict__.items()},
            "recall": round(self.recall, 4),
            "cluster_recall": round(self.same_cluster / max(1, self.positives), 4),
            "precision": round(self.precision, 4),
        }


def evaluate_dupes(corpus: Path, threshold: int = 31) -> DupesEvaluation:
    """Ingest, process and link the near-duplicate corpus in a scratch store; score the links."""
    root = corpus / "neardup_images"
    if not root.is_dir():
        raise FileNotFoundError(f"no neardup_images folder in {corpus}")
    files = sorted(
        path
        for path in root.rglob("*")
        if path.is_file() and path.suffix.lower() in _IMAGE_SUFFIXES
    )
    with tempfile.TemporaryDirectory(prefix="qarina-eval-dupes-") as scratch:
        data = Path(scratch)
        crops = _cropped_copies(files, root, data / "crops")
        config = QarinaConfig(
            data_dir=data, db_url=f"sqlite:///{data / 'eval.sqlite3'}", match_threshold=threshold
        )
        store = open_store(config)
        try:
            plan = Plan.default(["probe", "hashes"])
            names: dict[str, list[str]] = {}
            for path, name in [(path, str(path.relative_to(root))) for path in files] + crops:
                summary = ingest_paths(store, plan, config, [path], source="corpus")
                names.setdefault(summary.sha256s[0], []).append(name)
            executor = SequentialExecutor(plan, config)
            try:
                run_queue(store, plan, executor, config)
            finally:
                executor.close()
            open_matcher(config, store, plan).update("qarina-eval")
            links = matches.all_links(store.database)
        finally:
            store.close()
    return _score(names, links)


def _is_crop_of(names: list[str]) -> bool:
    """Whether one of two files is a cropped copy made of the other."""
    copies = [name for name in names if name.startswith(_CROP_PREFIX)]
    return len(copies) == 1 and copies[0].split("/", 2)[2] in names


def _score(names: dict[str, list[str]], links: list[matches.Link]) -> DupesEvaluation:
    group = {sha: _group_of(files[0]) for sha, files in names.items()}
    unscored = {sha for sha, files in names.items() if any(f in _UNSCORED for f in files)}
    hard = {
        sha
        for sha, files in names.items()
        if any(f.startswith(_HARD_NEGATIVE_FOLDERS) for f in files)
    }
    # imagededup's own "distinct" image sits 30 pHash bits from ukbench00120's group.
    near_lookalikes = {"ukbench09268", "ukbench00120"}
    linked = {(link.a_sha256, link.b_sha256) for link in links}
    cluster: dict[str, object] = {
        sha: number for number, members in enumerate(clusters(links)) for sha in members
    }
    result = DupesEvaluation(items=len(names))
    for a, b in itertools.combinations(sorted(names), 2):
        pair_names = [names[a][0], names[b][0]]
        is_linked = (a, b) in linked
        if a in unscored or b in unscored:
            if is_linked:
                result.unscored_links.append(pair_names)
            continue
        same = group[a] == group[b]
        tallies = [group[a] if same else "negatives"]
        if same and _is_crop_of(pair_names):
            tallies.append(_CROP_TO_ORIGINAL)
        for tally in tallies:
            counts = result.by_group.setdefault(tally, {"pairs": 0, "linked": 0})
            counts["pairs"] += 1
            counts["linked"] += is_linked
        if same:
            result.positives += 1
            result.true_links += is_linked
            result.same_cluster += cluster.get(a, a) == cluster.get(b, b)
            if not is_linked:
                result.missed.append(pair_names)
            continue
        result.negatives += 1
        is_hard = (a in hard and b in hard) or {group[a], group[b]} == near_lookalikes
        result.hard_negatives += is_hard
        if is_linked:
            result.false_links += 1
            result.hard_negative_links += is_hard
            result.wrong.append(pair_names)
    return result
