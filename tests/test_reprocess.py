"""Reprocessing under new keys: two keyframes versions and two transcript configurations of
one item, each downstream result reading (and naming) the upstream result its plan names."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from typer.testing import CliRunner

from evidence.reprocess import Request, Selection
from evidence.schema import custody_events
from evidence.store import Store
from pipelines.cli import app
from pipelines.config import QarinaConfig
from pipelines.ingest import ingest_paths
from pipelines.plan import Plan
from pipelines.reprocess import reprocess_stage
from pipelines.samples import audio, videos
from tests.flows import KeyframesNext, run_plan
from workers.base import Kind
from workers.keyframes import KeyframesConfig, KeyframesStage


def _reads_what_its_plan_names(shown: dict[str, Any], plan: Plan) -> None:
    """The hashes result names the keyframes result it read, and hashed its frames only."""
    keyframes, hashes = shown["results"]["keyframes"], shown["results"]["hashes"]
    assert (keyframes["stage_version"], keyframes["config_hash"]) == (
        plan.key("keyframes").stage_version,
        plan.key("keyframes").config_hash,
    )
    assert hashes["config_hash"] == plan.key("hashes", Kind.VIDEO).config_hash
    read = hashes["provenance"]["reads"]["keyframes"]
    assert read == {
        "stage_version": keyframes["stage_version"],
        "config_hash": keyframes["config_hash"],
        "result_sha256": keyframes["data_sha256"],
    }
    frames = {frame["artifact"] for frame in keyframes["data"]["frames"]}
    hashed = {
        entry["artifact"] for entry in hashes["data"]["hashes"] if entry["source"] == "keyframe"
    }
    assert hashed == frames
    probe = shown["results"]["probe"]
    assert shown["results"]["transcript"]["provenance"]["reads"]["probe"]["result_sha256"] == (
        probe["data_sha256"]
    )


def test_reprocessed_results_read_the_upstream_their_plan_names(
    sqlite_config: QarinaConfig, tmp_path: Path
) -> None:
    folder = tmp_path / "intake"
    folder.mkdir()
    speech = audio.speech(tmp_path / "speech.wav")
    videos.video_with_cuts(
        folder / "clip.mp4", shots=2, seconds_per_shot=1.2, size="160x90", rate=25, audio=speech
    )
    first = Plan.default(settings=sqlite_config)
    detected = Plan.default(settings=sqlite_config.with_overrides(transcript_language="auto"))
    second = replace(
        detected,
        stages={**detected.stages, "keyframes": KeyframesNext(KeyframesConfig(interval_s=0.5))},
    )
    store = Store.open(sqlite_config.db_url, sqlite_config.blob_root)
    try:
        [sha] = ingest_paths(store, first, sqlite_config, [folder], source="phone").sha256s
        run_plan(store, first, sqlite_config)
        behind = store.status(current=second.current_keys()).superseded_items
        assert behind == {"keyframes": 1, "hashes": 1, "transcript": 1}

        request = Request(Selection(kind="video"), None, 3, "tester", "keyframes v2, language")
        # The hashes of the video read keyframes, whose current result does not exist yet.
        early = reprocess_stage(store, second, "hashes", request, dry_run=True)
        assert (early.queued, early.waiting_for_upstream) == (0, {"keyframes": 1})
        assert reprocess_stage(store, second, "keyframes", request).queued == 1
        assert reprocess_stage(store, second, "transcript", request).queued == 1
        # Queued once: a second request finds nothing behind.
        assert reprocess_stage(store, second, "keyframes", request).queued == 0
        run_plan(store, second, sqlite_config)

        new, old = store.show(sha, second.current_keys()), store.show(sha, first.current_keys())
        assert new is not None and old is not None
        _reads_what_its_plan_names(new, second)
        _reads_what_its_plan_names(old, first)
        assert len(new["results"]["keyframes"]["data"]["frames"]) > len(
            old["results"]["keyframes"]["data"]["frames"]
        )
        assert {result["stage"] for result in new["superseded"]} == {
            "keyframes",
            "hashes",
            "transcript",
        }
        transcripts = (new["results"]["transcript"], old["results"]["transcript"])
        assert [t["data"]["language_probability"] is None for t in transcripts] == [False, True]
        assert [t["provenance"]["params"]["language"] for t in transcripts] == ["auto", "ar"]
        assert new["results"]["probe"] == old["results"]["probe"]
        assert store.status(current=second.current_keys()).superseded_items == {}
        assert store.status(current=first.current_keys()).superseded_items == {}

        with store.database.reader.connect() as connection:
            events = connection.execute(
                sa.select(custody_events.c.stage, custody_events.c.details).where(
                    custody_events.c.action == "reprocess"
                )
            ).all()
    finally:
        store.close()
    why = {stage: json.loads(details) for stage, details in events}
    assert set(why) == {"keyframes", "transcript"}
    assert why["transcript"]["reason"] == "keyframes v2, language"
    assert why["transcript"]["to"] == second.key("transcript").as_json()
    [replaced] = why["transcript"]["replaces"]
    assert replaced["config_hash"] == first.key("transcript").config_hash
    assert "option language: ar -> auto" in replaced["changed"]
    change = f"stage_version: {KeyframesStage.version} -> {KeyframesNext.version}"
    assert change in why["keyframes"]["replaces"][0]["changed"]


def test_reprocess_and_status_commands(sqlite_config: QarinaConfig, tmp_path: Path) -> None:
    folder = tmp_path / "intake"
    folder.mkdir()
    audio.speech(folder / "note.ogg", voice_format="ogg-opus")
    plan = Plan.default(settings=sqlite_config)
    store = Store.open(sqlite_config.db_url, sqlite_config.blob_root)
    try:
        ingest_paths(store, plan, sqlite_config, [folder], source="phone")
        run_plan(store, plan, sqlite_config)
    finally:
        store.close()
    data = ["--data", str(sqlite_config.data_dir), "--language", "auto"]
    runner = CliRunner()
    status = runner.invoke(app, [*data, "status", "--json"])
    assert status.exit_code == 0, status.output
    assert json.loads(status.stdout)["superseded_items"] == {"transcript": 1}
    dry = runner.invoke(app, [*data, "reprocess", "--stage", "transcript", "--dry-run", "--json"])
    assert dry.exit_code == 0, dry.output
    assert json.loads(dry.stdout)["queued"] == 1
    wrong = runner.invoke(app, [*data, "reprocess", "--stage", "transcript", "--kind", "video"])
    assert wrong.exit_code == 0 and "for 0 items" in wrong.stdout
    done = runner.invoke(
        app, [*data, "reprocess", "--stage", "transcript", "--since", "2020-01-01"]
    )
    assert done.exit_code == 0 and "queued transcript for 1 items" in done.stdout
    status = runner.invoke(app, [*data, "status", "--json"])
    assert json.loads(status.stdout)["stages"]["transcript"] == {"queued": 1}
    unknown = runner.invoke(app, [*data, "reprocess", "--stage", "nonsense"])
    assert unknown.exit_code == 2
