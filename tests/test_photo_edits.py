"""Re-posted edits of photos: captions, banners, logos and watermarks link to their originals.

The copies are made from real corpus photos by `qarina eval dupes`'s own edits; the tests that
read the corpus skip when it is not beside us. Hashing each edit is tested on generated
pictures in test_hashes.py; here the whole flow (hashes stage, index, keypoint check) runs.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from evidence import matches
from evidence.matches import Link
from evidence.store import Store
from pipelines.config import QarinaConfig
from pipelines.dedup.keypoints import confirm_files
from pipelines.dupes_eval import (
    EDITS,
    HALVES,
    ORDERS,
    Copy,
    Original,
    _score,
    caption_strip,
    corner_logo,
    edited_copies,
    flat_bar,
)
from pipelines.ingest import ingest_paths
from pipelines.plan import Plan
from pipelines.session import open_matcher
from tests.flows import run_plan

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus" / "neardup_images"
needs_corpus = pytest.mark.skipif(not CORPUS.is_dir(), reason="../shared/corpus is not here")
#: One scene shot from four positions: the corpus's hard negatives.
DESK = [CORPUS / f"pdq/exif-rotn/exif-rotn-{number}.jpg" for number in (1, 3, 6, 8)]


def test_the_eval_scores_each_copy_against_its_original_by_kind_half_and_order() -> None:
    bridge = Original(0, Path("b.jpg"), "pdq/bridge-mods/aaa-orig.jpg", HALVES[0])
    desk = Original(1, Path("d.jpg"), "pdq/exif-rotn/exif-rotn-1.jpg", HALVES[1])
    names = {
        "a": [bridge.name],
        "d": [desk.name],
        "e": ["pdq/exif-rotn/exif-rotn-3.jpg"],
        "c1": [f"edited/corner logo, copy first/{bridge.name}"],
        "c2": [f"edited/corner logo, original first/{bridge.name}"],
        "c3": [f"edited/corner logo, copy first/{desk.name}"],
    }
    copies = {
        names["c1"][0]: Copy("corner logo", ORDERS[0], bridge),
        names["c2"][0]: Copy("corner logo", ORDERS[1], bridge),
        names["c3"][0]: Copy("corner logo", ORDERS[0], desk),
    }
    links = [Link(*pair, "photo-photo", "pdq", 3) for pair in (("a", "c1"), ("c3", "e"))]
    scored = _score(names, links, copies)
    assert scored.copies["corner logo"] == {
        "choosing": {"copy first": {"pairs": 1, "linked": 1},
                     "original first": {"pairs": 1, "linked": 0}},
        "held_out": {"copy first": {"pairs": 1, "linked": 0}},
    }  # fmt: skip
    assert scored.copy_recall()["corner logo"] == {"choosing": 0.5, "held_out": 0.0}
    # The corpus figures leave the copies out; a copy of one desk shot linked to another is
    # a false link between hard negatives.
    assert (scored.items, scored.positives, scored.hard_negatives) == (3, 0, 1)
    assert (scored.edit_false_links, scored.edit_hard_negative_links) == (1, 1)
    assert scored.edit_hard_negatives == 1  # c3 and e: d is c3's own original
    assert scored.edit_wrong == [[names["c3"][0], names["e"][0]]]


@needs_corpus
def test_keypoints_tell_edited_copies_from_other_shots_of_one_scene(tmp_path: Path) -> None:
    """Two shots of one desk fit one affine transform with up to 169 inliers; what tells
    them from a copy is how far the transform's axes are apart and how few matches fit."""
    for first, second in itertools.combinations(DESK, 2):
        assert not confirm_files(first, second).agrees, (first.name, second.name)
    original = CORPUS / "imagededup/base_images/ukbench09012.jpg"
    rng = np.random.default_rng(5)
    with Image.open(original) as opened:
        image = opened.convert("RGB")
    for number, edited in enumerate(
        [
            caption_strip(image, rng, side="bottom", added=True),
            flat_bar(image, rng, added=False),
            corner_logo(image, rng),
        ]
    ):
        edited.save(tmp_path / f"{number}.jpg", quality=80)
        check = confirm_files(original, tmp_path / f"{number}.jpg")
        assert check.agrees and check.scale_ratio > 0.99, check


def _links_between(store: Store, first: str, second: str) -> list[Link]:
    return [
        link
        for link in matches.links_of(store.database, first)
        if second in (link.a_sha256, link.b_sha256)
    ]


@pytest.mark.slow
@needs_corpus
def test_every_edit_links_to_its_original_whichever_arrives_first(
    sqlite_config: QarinaConfig, tmp_path: Path
) -> None:
    """Each kind of edit, once ingested before its original and once after, links to it;
    photos of other scenes stay unlinked."""
    name = "imagededup/base_images/ukbench09012.jpg"
    others = [CORPUS / "imagededup/base_images/ukbench09040.jpg", CORPUS / "imagehash/peppers.png"]
    made = edited_copies([Original(4, CORPUS / name, name, HALVES[0])], tmp_path / "edits")
    assert len(made) == len(EDITS) * len(ORDERS)
    rounds = [
        [path for path, _, copy in made if copy.order == ORDERS[0]],
        [CORPUS / name, *others],
        [path for path, _, copy in made if copy.order == ORDERS[1]],
    ]
    store = Store.open(sqlite_config.db_url, sqlite_config.blob_root)
    try:
        plan = Plan.default(["probe", "hashes"])
        matcher = open_matcher(sqlite_config, store, plan)
        sha: dict[Path, str] = {}
        for paths in rounds:
            for path in paths:
                summary = ingest_paths(store, plan, sqlite_config, [path], source="test")
                sha[path] = summary.sha256s[0]
            run_plan(store, plan, sqlite_config)
            matcher.update("test")
        for path, copy_name, _ in made:
            [link] = _links_between(store, sha[CORPUS / name], sha[path])
            via = link.details["via"]
            if len(set(via)) > 1:
                assert link.details["keypoints"]["agrees"], copy_name
        for other in others:
            assert not matches.links_of(store.database, sha[other])
    finally:
        store.close()
