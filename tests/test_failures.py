"""Failure classes that mean what they say: refusals are final at once, bugs are stage_error
(final, fingerprinted, counted apart), and only transient causes are retried."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
import sqlalchemy as sa

from evidence.schema import jobs
from evidence.store import Store
from pipelines.config import QarinaConfig
from pipelines.execute import bug_report
from pipelines.ingest import ingest_paths
from pipelines.metrics import StoreCollector
from pipelines.plan import Plan
from pipelines.samples import hostile, photos
from tests.flows import run_plan
from workers.base import JsonRecord, Kind, Stage, StageConfig, StageInput, StageOutput
from workers.probe import ProbeStage

SECRET = "witness-name"


@dataclass(frozen=True)
class BuggyConfig(StageConfig):
    pass


@dataclass(frozen=True)
class BuggyResult(JsonRecord):
    value: int


class BuggyStage(Stage[BuggyConfig, BuggyResult]):
    """A stage with a bug: it looks up a key that is not there, quoting item data."""

    name: ClassVar[str] = "buggy"
    version: ClassVar[str] = "1"
    kinds: ClassVar[frozenset[Kind]] = frozenset({Kind.PHOTO})
    requires: ClassVar[tuple[str, ...]] = ("probe",)

    def run(self, item: StageInput, workdir: Path) -> StageOutput[BuggyResult]:
        found: dict[str, int] = {}
        return StageOutput(BuggyResult(found[f"{SECRET}-{item.sha256}"]))


def _jobs(store: Store) -> list[sa.Row[tuple[str, str, str, str, int]]]:
    with store.database.reader.connect() as connection:
        return list(
            connection.execute(
                sa.select(
                    jobs.c.stage,
                    jobs.c.state,
                    jobs.c.error_reason,
                    jobs.c.error_detail,
                    jobs.c.attempts,
                ).order_by(jobs.c.id)
            )
        )


@pytest.mark.allow_logged_errors
def test_a_bug_in_stage_code_is_final_fingerprinted_and_counted_apart(
    store: Store, config: QarinaConfig, tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for seed in range(2):
        photos.photo(folder / f"{seed}.jpg", size=(64, 48), seed=seed)
    plan = Plan({"probe": ProbeStage(), "buggy": BuggyStage(BuggyConfig())})
    ingest_paths(store, plan, config, [folder], source="test")
    run_plan(store, plan, config)
    buggy = [row for row in _jobs(store) if row.stage == "buggy"]
    assert [(row.state, row.error_reason, row.attempts) for row in buggy] == [
        ("failed", "stage_error", 1),
        ("failed", "stage_error", 1),
    ]
    # One bug, one fingerprint, whichever item met it; nothing of the item in the detail.
    assert buggy[0].error_detail == buggy[1].error_detail
    assert re.fullmatch(
        r"KeyError in (tests\.)?test_failures:run \(fingerprint [0-9a-f]{16}\)",
        buggy[0].error_detail,
    )
    assert SECRET not in buggy[0].error_detail
    report = store.status(current=plan.current_keys())
    assert report.stage_errors == {"buggy": 2}
    bugs = {
        sample.labels["stage"]: sample.value
        for family in StoreCollector(store, plan.current_keys()).collect()
        if family.name == "qarina_stage_errors"
        for sample in family.samples
    }
    assert bugs == {"buggy": 2}


def test_fingerprints_tell_bugs_apart_and_ignore_messages() -> None:
    def fail(key: str) -> None:
        raise KeyError(key)

    def other(key: str) -> None:
        raise KeyError(key)

    reports = []
    for raiser, key in ((fail, "a.jpg"), (fail, "b.jpg"), (other, "a.jpg")):
        try:
            raiser(key)
        except KeyError as error:
            reports.append(bug_report(error))
    assert reports[0] == reports[1] != reports[2]
    assert all(".jpg" not in report for report in reports)


def test_a_bomb_judged_from_its_header_is_refused_at_the_first_attempt(
    store: Store, config: QarinaConfig, tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    hostile.png_bomb(folder / "huge.png")
    plan = Plan.default(["probe"], settings=config)
    ingest_paths(store, plan, config, [folder], source="test")
    run_plan(store, plan, config)
    [probe] = _jobs(store)
    assert (probe.state, probe.error_reason, probe.attempts) == ("failed", "resource_limit", 1)
    assert probe.error_detail.startswith("decompression bomb")
