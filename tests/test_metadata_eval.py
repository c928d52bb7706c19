"""The metadata normaliser against the real corpus's ground truth (when the corpus is beside us)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.metadata_eval import evaluate_metadata

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"


@pytest.mark.slow
@pytest.mark.skipif(not (CORPUS / "images_exif").is_dir(), reason="../shared/corpus is not here")
def test_agreement_with_ground_truth_is_at_least_98_percent_per_field() -> None:
    evaluation = evaluate_metadata(CORPUS)
    assert evaluation.files >= 100
    for score in evaluation.scores:
        assert score.listed > 0, score
        assert score.agreed / score.listed >= 0.98, score
