"""Results keyed by what made them: plan keys, upstream lookups, show and status per key."""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import replace
from pathlib import Path

import sqlalchemy as sa

from evidence import jobs, records, search
from evidence.records import ResultKey
from evidence.reprocess import Request, Selection, reprocess
from evidence.schema import custody_events
from evidence.store import Acquisition, Store
from pipelines.config import QarinaConfig
from pipelines.plan import Plan
from tests.flows import KeyframesNext
from workers.base import Kind
from workers.keyframes import KeyframesConfig

TTL = dt.timedelta(minutes=5)


def test_a_key_covers_options_and_the_keys_of_what_the_stage_reads(
    sqlite_config: QarinaConfig,
) -> None:
    plan = Plan.default(settings=sqlite_config)
    newer = replace(
        plan, stages={**plan.stages, "keyframes": KeyframesNext(KeyframesConfig(interval_s=5.0))}
    )
    detected = Plan.default(settings=sqlite_config.with_overrides(transcript_language="auto"))
    # The probe reads nothing: its key is its options' hash, as before keys covered reads.
    assert plan.key("probe").config_hash == plan.stages["probe"].config.config_hash()
    # Photos' hashes read no keyframes: a new keyframes version leaves them current.
    assert newer.key("hashes", Kind.PHOTO) == plan.key("hashes", Kind.PHOTO)
    assert newer.key("hashes", Kind.VIDEO) != plan.key("hashes", Kind.VIDEO)
    assert newer.key("keyframes").stage_version == KeyframesNext.version
    assert plan.keys("hashes") == {plan.key("hashes", Kind.PHOTO), plan.key("hashes", Kind.VIDEO)}
    # The language changes the transcript's key and nothing else's.
    changed = {
        name
        for name in plan.stages
        if plan.current_keys()[name] != detected.current_keys()[name]
    }
    assert changed == {"transcript"}
    # A job of hashes on a video is queued only once these exact results exist.
    assert plan.spec("hashes", Kind.VIDEO).requires == (
        plan.key("probe"),
        plan.key("keyframes", Kind.VIDEO),
    )


def test_a_plan_of_one_stage_still_names_the_keys_it_reads(sqlite_config: QarinaConfig) -> None:
    alone = Plan.default(["transcript"], settings=sqlite_config)
    assert list(alone.stages) == ["transcript"]
    assert alone.key("transcript") == Plan.default(settings=sqlite_config).key("transcript")


# --- the store answers by key ----------------------------------------------------------------

PROBE = records.JobSpec("probe", "1", "p")
OLD = records.JobSpec("keyframes", "1", "k1", requires=(PROBE.key,))
NEW = records.JobSpec("keyframes", "2", "k2", requires=(PROBE.key,))


def _item(store: Store, tmp_path: Path, content: bytes) -> str:
    path = tmp_path / "item"
    path.write_bytes(content)
    blob = store.blobs.put(path)
    acquisition = Acquisition("test", b"item", os.fsencode(path), "tester")
    store.register(blob, acquisition, [PROBE], actor="test", max_attempts=3)
    return blob.sha256


def _finish(
    store: Store,
    spec: records.JobSpec,
    data: dict[str, object],
    artifact: str | None = None,
    copies: int = 1,
) -> None:
    [job] = jobs.lease(store.database, "test", [spec.key], 1, TTL)
    record = records.ArtifactRecord(artifact, "keyframe", "image/jpeg", 1) if artifact else None
    made = [record] * copies if record else []
    outcome = records.Success(data, {"node": "test"}, artifacts=made)
    assert jobs.commit(store.database, [(job, outcome)], "test").committed == 1


def _artifact(store: Store, tmp_path: Path, content: bytes) -> str:
    path = tmp_path / "frame.jpg"
    path.write_bytes(content)
    return store.blobs.put(path).sha256


def test_a_result_naming_one_file_twice_stores_it_once(store: Store, tmp_path: Path) -> None:
    """Two keyframes of a still shot can be the same JPEG: the commit stores the result with
    one artifact row for that file, instead of failing on the unique key."""
    sha = _item(store, tmp_path, b"a still video")
    _finish(store, PROBE, {"kind": "video"})
    frame = _artifact(store, tmp_path, b"the same frame")
    with store.database.writer.begin() as connection:
        jobs.enqueue(store.database, connection, sha, [NEW], 0, 3)
    _finish(store, NEW, {"frames": [0.0, 4.0]}, frame, copies=2)

    found = jobs.upstream_results(store.database, [(sha, NEW.key)])
    assert found[(sha, NEW.key)].data == {"frames": [0.0, 4.0]}
    assert found[(sha, NEW.key)].artifacts == (frame,)


def test_upstream_show_and_status_use_the_planned_key(store: Store, tmp_path: Path) -> None:
    sha = _item(store, tmp_path, b"a video")
    _finish(store, PROBE, {"kind": "video"})
    old_frame = _artifact(store, tmp_path, b"old frame")
    new_frame = _artifact(store, tmp_path, b"new frame")
    for spec, frame in ((OLD, old_frame), (NEW, new_frame)):
        with store.database.writer.begin() as connection:
            jobs.enqueue(store.database, connection, sha, [spec], 0, 3)
        _finish(store, spec, {"frames": [spec.stage_version]}, frame)

    found = jobs.upstream_results(store.database, [(sha, NEW.key), (sha, OLD.key)])
    assert found[(sha, NEW.key)].data == {"frames": ["2"]}
    assert found[(sha, NEW.key)].artifacts == (new_frame,)
    assert found[(sha, OLD.key)].artifacts == (old_frame,)

    current = {"probe": frozenset({PROBE.key}), "keyframes": frozenset({NEW.key})}
    shown = store.show(sha, current)
    assert shown is not None
    assert shown["results"]["keyframes"]["stage_version"] == "2"
    assert [artifact["sha256"] for artifact in shown["artifacts"]] == [new_frame]
    [superseded] = shown["superseded"]
    assert (superseded["stage"], superseded["stage_version"], superseded["config_hash"]) == (
        "keyframes",
        "1",
        "k1",
    )
    assert [artifact["sha256"] for artifact in superseded["artifacts"]] == [old_frame]

    assert store.status(current=current).superseded_items == {}
    newest = ResultKey("keyframes", "3", "k3")
    behind = {"probe": frozenset({PROBE.key}), "keyframes": frozenset({newest})}
    report = store.status(current=behind)
    assert report.superseded_items == {"keyframes": 1}
    # Jobs under keys the plan does not name are not its queue.
    assert {stage.stage: stage.counts for stage in report.stages} == {
        "keyframes": {},
        "probe": {"done": 1},
    }


def test_search_finds_words_only_in_transcripts_under_the_planned_key(
    store: Store, tmp_path: Path
) -> None:
    sha = _item(store, tmp_path, b"a voice note")
    _finish(store, PROBE, {"kind": "audio"})
    forced = records.JobSpec("transcript", "1", "ar", requires=(PROBE.key,))
    detected = records.JobSpec("transcript", "1", "auto", requires=(PROBE.key,))
    for spec, words in ((forced, "كلمة اولى"), (detected, "كلمة ثانية")):
        with store.database.writer.begin() as connection:
            jobs.enqueue(store.database, connection, sha, [spec], 0, 3)
        _finish(store, spec, {"words": words})
        [pending] = search.pending_results(store.database, [spec.key])
        segment = search.IndexedSegment(0.0, 1.0, words, words, [])
        search.index_result(store.database, pending, [segment])
    assert [hit.text for hit in search.search(store.database, "كلمة", [detected.key])] == [
        "كلمة ثانية"
    ]
    assert [hit.text for hit in search.search(store.database, "كلمة", [forced.key])] == [
        "كلمة اولى"
    ]


def test_reprocess_queues_the_new_key_retires_old_queued_jobs_and_says_why(
    store: Store, tmp_path: Path
) -> None:
    done = _item(store, tmp_path, b"processed")
    (tmp_path / "other").mkdir()
    waiting = _item(store, tmp_path / "other", b"queued")
    for sha in (done, waiting):
        [job] = jobs.lease(store.database, "test", [PROBE.key], 1, TTL)
        jobs.commit(
            store.database, [(job, records.Success({"kind": "video"}, {}, item_kind="video"))], "t"
        )
        with store.database.writer.begin() as connection:
            jobs.enqueue(store.database, connection, sha, [OLD], 4, 3)
    _finish(store, OLD, {"frames": ["1"]})  # the first item's old job ran, the other's waits
    current = {"probe": frozenset({PROBE.key}), "keyframes": frozenset({NEW.key})}
    # A job queued under a key the plan does not name is shown, not lost from sight.
    before = store.status(current=current)
    assert before.superseded_items == {"keyframes": 2}
    assert before.other_key_jobs == {"keyframes": {"done": 1, "queued": 1}}
    request = Request(Selection(kind="video"), None, 3, "tester", "keyframes v2")

    def explain(provenance: object, old: ResultKey, spec: records.JobSpec) -> list[str]:
        return [f"{old.stage_version} -> {spec.stage_version}", f"result: {provenance is not None}"]

    # Acquisition times are UTC: a time with an offset is converted, not compared as written.
    hour = dt.timedelta(hours=1)
    east, west = dt.timezone(3 * hour), dt.timezone(-3 * hour)
    for since, found in ((dt.datetime.now(east) - hour, 2), (dt.datetime.now(west) + hour, 0)):
        timed = Request(Selection(kind="video", acquired_since=since), None, 3, "t", "t")
        assert reprocess(store.database, [("video", NEW)], timed, explain, True).queued == found
    dry = reprocess(store.database, [("video", NEW)], request, explain, dry_run=True)
    assert (dry.queued, dry.retired) == (2, 1)
    report = reprocess(store.database, [("video", NEW)], request, explain)
    assert (report.queued, report.retired, report.waiting_for_upstream) == (2, 1, {})
    again = reprocess(store.database, [("video", NEW)], request, explain)
    assert again.queued == 0
    after = store.status(current=current)
    assert after.superseded_items == {}
    assert after.other_key_jobs == {"keyframes": {"done": 1, "superseded": 1}}
    # The waiting item keeps the priority its queued job had; the other takes its arrival's.
    leased = jobs.lease(store.database, "test", [NEW.key, OLD.key], 5, TTL)
    assert sorted((job.sha256, job.key, job.priority) for job in leased) == sorted(
        [(done, NEW.key, 0), (waiting, NEW.key, 4)]
    )
    with store.database.reader.connect() as connection:
        events = {
            row.item_sha256: json.loads(row.details)
            for row in connection.execute(
                sa.select(custody_events).where(custody_events.c.action == "reprocess")
            )
        }
    assert events[done]["replaces"] == [
        {
            **OLD.key.as_json(),
            "state": "done",
            "had_result": True,
            "changed": ["1 -> 2", "result: True"],
        }
    ]
    assert events[waiting]["replaces"][0]["state"] == "superseded"
    assert events[waiting]["reason"] == "keyframes v2"
    assert store.verify(fixity=False, actor="t").ok
