"""`qarina eval dupes`: near-duplicate links against the corpus ground truth.

The corpus's `neardup_images` folder is ingested into a scratch store and processed by the
real pipeline (probe, hashes, the matcher with its keypoint checks), then every pair of
items is scored: a pair within one ground-truth group should be linked, a pair across groups
should not. Hard negatives (four different shots of one desk scene, distinct UKBench objects,
unrelated photos) are counted separately, since linking one of them is the error that
matters most: it would tell an analyst that two different events are one.

Besides the corpus's own copies, copies are made of its photos as channels re-post them:
cropped a little, with a caption strip (text on a flat strip) at the top or bottom, a flat
bar on one side (each added to the picture or laid over it), a logo or a watermark in a
corner. Each edit is made twice, with seeds of its own: one copy is ingested before the
corpus (the copy arrives first), the other after it (the original does). Each copy's link to
its original is scored per kind of edit, order of arrival and half of the photos it was made
from: the settings of the strip finder and of the keypoint check were chosen on the choosing
half, and the held-out half says whether that choice carries over to photos it was not made
on.
"""

from __future__ import annotations

import itertools
import string
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pdqhash
from PIL import Image, ImageDraw, ImageFont, ImageOps

from evidence import matches
from pipelines.config import QarinaConfig
from pipelines.dedup.config import MatchConfig
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


#: Edited copies: the prefix of their names, the orders they arrive in, the halves of the
#: photos they are made of (see the module docstring), and the longest side they are saved
#: at (platforms resize what is re-posted).
_EDIT_PREFIX = "edited/"
ORDERS = ("copy first", "original first")
HALVES = ("choosing", "held_out")
_EDIT_SIDE = 1280
#: What an edit covers of a side: the issue's findings were 8-12%; the stage promises 15%.
_COVER = (0.06, 0.15)
_WORDS = ("breaking", "news", "footage", "shows", "the", "scene", "after", "strike", "on",
          "market", "city", "centre", "witnesses", "say", "exclusive", "live", "video")  # fmt: skip
_FONT_SIZE_MIN = 8

Rng = np.random.Generator


def caption_strip(
    image: Image.Image, rng: Rng, *, side: str, added: bool, fraction: float | None = None
) -> Image.Image:
    """Text on a flat strip across the top or bottom, as channels caption what they re-post:
    added to the picture (it grows) or laid over it, covering `fraction` of the height
    (drawn at random when not given). One or two lines, dark on light or light on dark."""
    width, height = image.size
    fraction = float(rng.uniform(*_COVER)) if fraction is None else fraction
    colour = [(255, 255, 255), (0, 0, 0), (200, 20, 30), (20, 60, 160)][int(rng.integers(4))]
    ink = (0, 0, 0) if sum(colour) > 380 else (255, 255, 255)
    if added:
        strip = round(height * fraction / (1 - fraction))
        edited = Image.new("RGB", (width, height + strip), colour)
        edited.paste(image, (0, strip if side == "top" else 0))
        top = 0 if side == "top" else height
    else:
        strip = round(height * fraction)
        edited = image.copy()
        top = 0 if side == "top" else height - strip
        ImageDraw.Draw(edited).rectangle((0, top, width, top + strip - 1), fill=colour)
    lines = 1 + int(rng.uniform() < 0.4)
    font = ImageFont.load_default(size=max(_FONT_SIZE_MIN, int(strip * 0.55 / lines)))
    draw = ImageDraw.Draw(edited)
    for line in range(lines):
        text = " ".join(rng.choice(_WORDS, 4))
        at = (width * rng.uniform(0.03, 0.1), top + strip * (line + 0.5) / lines)
        draw.text(at, text, fill=ink, font=font, anchor="lm")
    return edited


def flat_bar(image: Image.Image, rng: Rng, *, added: bool) -> Image.Image:
    """A bar of one colour on a side chosen at random (a channel's banner), added to the
    picture or laid over it."""
    width, height = image.size
    side = ("left", "top", "right", "bottom")[int(rng.integers(4))]
    fraction = float(rng.uniform(*_COVER))
    colour = tuple(int(value) for value in rng.integers(0, 256, 3))
    across = side in ("top", "bottom")
    length = height if across else width
    if added:
        bar = round(length * fraction / (1 - fraction))
        edited = Image.new(
            "RGB", (width, height + bar) if across else (width + bar, height), colour
        )
        edited.paste(image, (bar if side == "left" else 0, bar if side == "top" else 0))
        return edited
    bar = round(length * fraction)
    edited = image.copy()
    box = {
        "left": (0, 0, bar, height), "top": (0, 0, width, bar),
        "right": (width - bar, 0, width, height), "bottom": (0, height - bar, width, height),
    }[side]  # fmt: skip
    ImageDraw.Draw(edited).rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=colour)
    return edited


def _corner(image: Image.Image, rng: Rng, size: tuple[int, int]) -> tuple[int, int]:
    """Where a mark of `size` goes in a corner chosen at random, a small margin in."""
    width, height = image.size
    margin = round(min(width, height) * rng.uniform(0.015, 0.03))
    corner = int(rng.integers(4))
    left = margin if corner % 2 == 0 else width - margin - size[0]
    top = margin if corner < 2 else height - margin - size[1]
    return left, top


def corner_logo(image: Image.Image, rng: Rng) -> Image.Image:
    """An opaque round logo with letters, 8-13% of the shorter side, in a corner."""
    side = round(min(image.size) * rng.uniform(0.08, 0.13))
    left, top = _corner(image, rng, (side, side))
    edited = image.copy()
    draw = ImageDraw.Draw(edited)
    colour = tuple(int(value) for value in rng.integers(0, 256, 3))
    draw.ellipse((left, top, left + side, top + side), fill=colour, outline=(255, 255, 255),
                 width=max(1, side // 20))  # fmt: skip
    font = ImageFont.load_default(size=max(_FONT_SIZE_MIN, side // 3))
    letters = "".join(rng.choice(list(string.ascii_uppercase), 2))
    draw.text((left + side / 2, top + side / 2), letters, fill=(255, 255, 255), font=font,
              anchor="mm")  # fmt: skip
    return edited


def corner_watermark(image: Image.Image, rng: Rng) -> Image.Image:
    """A channel's handle in half-transparent white, 4-7% of the height, in a corner."""
    font = ImageFont.load_default(
        size=max(_FONT_SIZE_MIN, round(image.height * rng.uniform(0.04, 0.07)))
    )
    handle = "@" + "".join(rng.choice(list(string.ascii_lowercase), 9))
    layer = Image.new("RGBA", image.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    left, top, right, bottom = draw.textbbox((0, 0), handle, font=font)
    at = _corner(image, rng, (round(right - left), round(bottom - top)))
    opacity = int(255 * rng.uniform(0.4, 0.7))
    draw.text((at[0] - left, at[1] - top), handle, fill=(255, 255, 255, opacity), font=font)
    return Image.alpha_composite(image.convert("RGBA"), layer).convert("RGB")


#: The kinds of edit scored, each made from a photo with a random generator.
EDITS: dict[str, Callable[[Image.Image, Rng], Image.Image]] = {
    "caption top, added": partial(caption_strip, side="top", added=True),
    "caption bottom, added": partial(caption_strip, side="bottom", added=True),
    "caption top, laid over": partial(caption_strip, side="top", added=False),
    "caption bottom, laid over": partial(caption_strip, side="bottom", added=False),
    "flat bar, added": partial(flat_bar, added=True),
    "flat bar, laid over": partial(flat_bar, added=False),
    "corner logo": corner_logo,
    "corner watermark": corner_watermark,
}
#: Cropped copies are scored per half beside the edits, under this kind.
_CROPPED = "cropped up to 5% per side"


@dataclass(frozen=True)
class Original:
    """A corpus photo copies are made of: its number among the corpus files (the seed of
    its copies), its name, and its half of the split (None: a flat picture, see
    `originals`)."""

    number: int
    path: Path
    name: str
    half: str | None


@dataclass(frozen=True)
class Copy:
    """A copy made of a corpus photo: what was done to it, when it arrives, of what."""

    kind: str
    order: str
    original: Original


def originals(files: Sequence[Path], root: Path) -> list[Original]:
    """The first photo of each ground-truth group (the others are copies already). In name
    order they go to the choosing and the held-out half in turn, the first to the choosing
    half; a flat picture (PDQ quality under 50, which the matcher never matches, so a copy
    of it measures nothing) goes to neither."""
    found: list[Original] = []
    seen: set[str] = set()
    halved = 0
    for number, path in enumerate(files):
        name = str(path.relative_to(root))
        group = _group_of(name)
        if group in seen or name in _UNSCORED:
            continue
        seen.add(group)
        image = _upright(path)
        image.thumbnail((512, 512))
        textured = pdqhash.compute(np.asarray(image))[1] >= MatchConfig().min_quality
        found.append(Original(number, path, name, HALVES[halved % 2] if textured else None))
        halved += textured
    return found


def _upright(path: Path) -> Image.Image:
    with Image.open(path) as opened:
        return ImageOps.exif_transpose(opened).convert("RGB")


def _cropped_copies(photos: Sequence[Original], folder: Path) -> list[tuple[Path, str, Copy]]:
    """Cropped, recompressed copies of each photo (what an app does when a user trims a
    picture before forwarding it), named after their original's group."""
    folder.mkdir(parents=True)
    made = []
    for original in photos:
        image = _upright(original.path)
        for label, sides in _crop_plan(original.number):
            target = folder / f"{original.number}-{label}.jpg"
            crop_sides(image, sides).save(target, "JPEG", quality=80)
            name = f"{_CROP_PREFIX}{label}/{original.name}"
            made.append((target, name, Copy(_CROPPED, ORDERS[1], original)))
    return made


def edited_copies(photos: Sequence[Original], folder: Path) -> list[tuple[Path, str, Copy]]:
    """Every edit of each photo in a half, twice (once for each order of arrival), with
    seeds fixed by photo, edit and order; resized as platforms do and recompressed."""
    folder.mkdir(parents=True)
    made = []
    for original in photos:
        if original.half is None:
            continue
        image = _upright(original.path)
        for (number, (kind, edit)), (turn, order) in itertools.product(
            enumerate(EDITS.items()), enumerate(ORDERS)
        ):
            edited = edit(image, np.random.default_rng([original.number, number, turn]))
            edited.thumbnail((_EDIT_SIDE, _EDIT_SIDE))
            target = folder / f"{original.number}-{number}-{turn}.jpg"
            edited.save(target, "JPEG", quality=80)
            made.append((target, f"{_EDIT_PREFIX}{kind}, {order}/{original.name}",
                         Copy(kind, order, original)))  # fmt: skip
    return made


@dataclass
class DupesEvaluation:
    """Pair counts at the item level (byte-identical files are one item).

    The corpus figures (recall, cluster recall, precision and the counts behind them) are
    over the corpus files and their cropped copies, as before edited copies were made; the
    edited copies are scored apart: each against its original (`copies`, per kind, half
    and order of arrival, cropped copies included), and every pair of an edited copy with a
    picture of another group as a negative (`edit_*`).
    """

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
    #: kind of copy -> half -> order of arrival -> {"pairs": copies, "linked": to original}.
    copies: dict[str, dict[str, dict[str, dict[str, int]]]] = field(default_factory=dict)
    copies_missed: list[str] = field(default_factory=list)
    edit_negatives: int = 0
    edit_hard_negatives: int = 0
    edit_false_links: int = 0
    edit_hard_negative_links: int = 0
    edit_wrong: list[list[str]] = field(default_factory=list)

    @property
    def recall(self) -> float:
        return self.true_links / self.positives if self.positives else 1.0

    @property
    def precision(self) -> float:
        linked = self.true_links + self.false_links
        return self.true_links / linked if linked else 1.0

    def copy_recall(self) -> dict[str, dict[str, float]]:
        """Per kind of copy and half, the share linked to its original (both orders)."""
        return {
            kind: {
                half: round(
                    sum(order["linked"] for order in orders.values())
                    / max(1, sum(order["pairs"] for order in orders.values())),
                    4,
                )
                for half, orders in halves.items()
            }
            for kind, halves in self.copies.items()
        }

    def as_json(self) -> dict[str, Any]:
        return {
            **{key: value for key, value in self.__dict__.items()},
            "recall": round(self.recall, 4),
            "cluster_recall": round(self.same_cluster / max(1, self.positives), 4),
            "precision": round(self.precision, 4),
            "copy_recall": self.copy_recall(),
        }


def evaluate_dupes(corpus: Path, threshold: int = 31) -> DupesEvaluation:
    """Ingest, process and link the near-duplicate corpus and the copies made of it in a
    scratch store, in three rounds: edited copies that arrive before their originals, the
    corpus with its cropped copies, then edited copies that arrive after; score the links."""
    root = corpus / "neardup_images"
    if not root.is_dir():
        raise FileNotFoundError(f"no neardup_images folder in {corpus}")
    files = sorted(
        path
        for path in root.rglob("*")
        if path.is_file() and path.suffix.lower() in _IMAGE_SUFFIXES
    )
    photos = originals(files, root)
    with tempfile.TemporaryDirectory(prefix="qarina-eval-dupes-") as scratch:
        data = Path(scratch)
        crops = _cropped_copies(photos, data / "crops")
        edits = edited_copies(photos, data / "edits")
        copies = {name: copy for _, name, copy in crops + edits}
        rounds = [
            [(path, name) for path, name, copy in edits if copy.order == ORDERS[0]],
            [(path, str(path.relative_to(root))) for path in files]
            + [(path, name) for path, name, _ in crops],
            [(path, name) for path, name, copy in edits if copy.order == ORDERS[1]],
        ]
        config = QarinaConfig(
            data_dir=data, db_url=f"sqlite:///{data / 'eval.sqlite3'}", match_threshold=threshold
        )
        store = open_store(config)
        try:
            plan = Plan.default(["probe", "hashes"])
            matcher = open_matcher(config, store, plan)
            names: dict[str, list[str]] = {}
            executor = SequentialExecutor(plan, config)
            try:
                for arrivals in rounds:
                    for path, name in arrivals:
                        summary = ingest_paths(store, plan, config, [path], source="corpus")
                        names.setdefault(summary.sha256s[0], []).append(name)
                    run_queue(store, plan, executor, config)
                    matcher.update("qarina-eval")
            finally:
                executor.close()
            links = matches.all_links(store.database)
        finally:
            store.close()
    return _score(names, links, copies)


def _original_name(name: str) -> str:
    """The corpus file a name stands for: itself, or the photo a copy was made of."""
    return name.split("/", 2)[2] if name.startswith((_CROP_PREFIX, _EDIT_PREFIX)) else name


def _group_of(name: str) -> str:
    name = _original_name(name)
    for prefix, group in _GROUPS.items():
        if name.startswith(prefix):
            return group
    return f"distinct:{name}"


def _is_crop_of(names: list[str]) -> bool:
    """Whether one of two files is a cropped copy made of the other."""
    copies = [name for name in names if name.startswith(_CROP_PREFIX)]
    return len(copies) == 1 and _original_name(copies[0]) in names


@dataclass(frozen=True)
class _Truth:
    """What the ground truth says of each item: its group, whether its picture is one of
    the hard negatives (copies inherit it from their originals), whether it is scored."""

    group: dict[str, str]
    hard: set[str]
    unscored: set[str]

    @classmethod
    def of(cls, names: dict[str, list[str]]) -> _Truth:
        return cls(
            {sha: _group_of(files[0]) for sha, files in names.items()},
            {
                sha
                for sha, files in names.items()
                if any(_original_name(f).startswith(_HARD_NEGATIVE_FOLDERS) for f in files)
            },
            {sha for sha, files in names.items() if any(f in _UNSCORED for f in files)},
        )

    def is_hard(self, a: str, b: str) -> bool:
        # imagededup's own "distinct" image sits 30 pHash bits from ukbench00120's group.
        near_lookalikes = {"ukbench09268", "ukbench00120"}
        both = a in self.hard and b in self.hard
        return both or {self.group[a], self.group[b]} == near_lookalikes


def _score(
    names: dict[str, list[str]], links: list[matches.Link], copies: dict[str, Copy]
) -> DupesEvaluation:
    edited = {sha for sha, files in names.items() if files[0].startswith(_EDIT_PREFIX)}
    truth = _Truth.of(names)
    linked = {(link.a_sha256, link.b_sha256) for link in links}
    corpus_links = [
        link for link in links if link.a_sha256 not in edited and link.b_sha256 not in edited
    ]
    corpus = sorted(sha for sha in names if sha not in edited)
    result = DupesEvaluation(items=len(corpus))
    _score_corpus(result, corpus, names, truth, corpus_links)
    _score_copies(result, names, linked, copies)
    for a, b in itertools.combinations(sorted(names), 2):
        if (a in edited or b in edited) and truth.group[a] != truth.group[b]:
            is_linked = (a, b) in linked
            if a in truth.unscored or b in truth.unscored:
                if is_linked:
                    result.unscored_links.append([names[a][0], names[b][0]])
                continue
            is_hard = truth.is_hard(a, b)
            result.edit_negatives += 1
            result.edit_hard_negatives += is_hard
            if is_linked:
                result.edit_false_links += 1
                result.edit_hard_negative_links += is_hard
                result.edit_wrong.append([names[a][0], names[b][0]])
    return result


def _score_copies(
    result: DupesEvaluation,
    names: dict[str, list[str]],
    linked: set[tuple[str, str]],
    copies: dict[str, Copy],
) -> None:
    """Each copy made of a photo in a half against that photo."""
    sha_of = {name: sha for sha, files in names.items() for name in files}
    for name, copy in copies.items():
        half = copy.original.half
        if half is None:
            continue
        pair = tuple(sorted((sha_of[name], sha_of[copy.original.name])))
        counts = result.copies.setdefault(copy.kind, {}).setdefault(half, {})
        tally = counts.setdefault(copy.order, {"pairs": 0, "linked": 0})
        tally["pairs"] += 1
        tally["linked"] += pair in linked
        if pair not in linked:
            result.copies_missed.append(name)


def _score_corpus(
    result: DupesEvaluation,
    corpus: list[str],
    names: dict[str, list[str]],
    truth: _Truth,
    links: list[matches.Link],
) -> None:
    """Every pair of corpus items (files and cropped copies): the figures reported before
    edited copies were made, with clusters of the links among these items only."""
    linked = {(link.a_sha256, link.b_sha256) for link in links}
    cluster: dict[str, object] = {
        sha: number for number, members in enumerate(clusters(links)) for sha in members
    }
    group = truth.group
    for a, b in itertools.combinations(corpus, 2):
        pair_names = [names[a][0], names[b][0]]
        is_linked = (a, b) in linked
        if a in truth.unscored or b in truth.unscored:
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
        is_hard = truth.is_hard(a, b)
        result.hard_negatives += is_hard
        if is_linked:
            result.false_links += 1
            result.hard_negative_links += is_hard
            result.wrong.append(pair_names)
