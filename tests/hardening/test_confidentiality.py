"""Confidentiality (issue 17): logs name items by hash, never by file name, GPS or transcript
text, and hostile text in any input reaches the store as data, never as SQL.

The log test runs `qarina ingest` and `qarina run` as an operator does (real subprocesses on a
private local Ray) on files named, located and spoken with canaries, at the most verbose
logging there is (`--verbose`, Ray's debug level, and Qarina's own loggers at debug in every
process, Ray's actors included), and searches every line they and Ray's session wrote. The
injection tests feed classic injection strings, terminal escapes, right-to-left overrides and
over-long names to every text input of the command line and of the HTTP API, on both backends:
each must be stored exactly as given or refused with a clear error, and nothing else may change.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote_from_bytes, urlencode

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner, Result

from evidence import requests, search
from evidence.controls import pause_state
from evidence.db import utc_now
from evidence.schema import acquisitions, jobs, metadata, results, reviews
from evidence.store import Store
from pipelines.cli import app
from pipelines.config import OPERATOR_MAX_CHARS, QarinaConfig
from pipelines.plan import Plan
from pipelines.samples import audio, hostile, photos, videos
from tests.browser.serving import REVIEWER_TOKEN, serving, write_tokens
from tests.flows import api_call
from workers.arabic import normalise

QARINA = str(Path(sys.executable).parent / "qarina")

#: In every file and folder name of the log test's material.
CANARY_NAME = "CANARY-witness-Qx7"
#: Where the canary photo and video say they were taken.
CANARY_GPS = (33.123456, 44.654321)

#: What attackers type into text fields. A NUL is not among them: an argument vector cannot
#: carry one (execve takes C strings), so only the HTTP API can receive it (`API_HOSTILE`).
HOSTILE: tuple[str, ...] = (
    "'); DROP TABLE items; --",
    "' OR '1'='1",
    '"; DELETE FROM custody_events; --',
    "x'); UPDATE jobs SET priority = 99, state = 'queued'; --",
    "%' OR 1=1 OR source LIKE '%_",
    "\\'; DROP TABLE acquisitions; --\\",
    "\u202eexe.gpj\u202c witness\u200f",  # right-to-left override, as in spoofed file names
    "\x1b[2J\x1b[31m cleared screen",  # terminal escapes: control characters
    "ب" * 200,  # the longest name the store keeps, two bytes a character in UTF-8
    "x" * 5000,
)
API_HOSTILE: tuple[str, ...] = (*HOSTILE, "nul\x00byte")

#: Words of the indexed segment planted for search: what an injected `OR` would return.
PLANTED_WORDS = "شاهد عيان"


# --- logs of a full run -----------------------------------------------------------------------


def _dms(value: float) -> str:
    """A coordinate as exiftool prints it by default: `33 deg 7' 24.44"`."""
    degrees = int(value)
    minutes = int((value - degrees) * 60)
    seconds = (value - degrees - minutes / 60) * 3600
    return f"{degrees} deg {minutes}' {seconds:.2f}\""


def _gps_patterns(coordinates: set[float]) -> set[str]:
    """Regular expressions for the ways a log could write these coordinates: decimals cut or
    rounded to 4-6 places (no digit or point before them, so a timestamp's `16:32:33.1234`
    does not count) and exiftool's degrees, minutes and seconds."""
    patterns = set()
    for value in coordinates:
        for places in (4, 5, 6):
            scale = 10**places
            cut = int(value * scale) / scale
            for form in (f"{cut:.{places}f}", f"{value:.{places}f}"):
                patterns.add(r"(?<![\d.:])" + re.escape(form))
        patterns.add(re.escape(_dms(value)))
        patterns.add(re.escape(_dms(value).split("' ")[0] + "'"))  # `33 deg 7'`
    return patterns


def _leaks(text: str, patterns: set[str]) -> list[str]:
    """Every match of any pattern in `text`, with a little context."""
    found = []
    for pattern in patterns:
        for match in re.finditer(pattern, text):
            found.append(text[max(0, match.start() - 60) : match.end() + 60])
    return found


def _session_logs(ray_temp: Path) -> dict[str, str]:
    """Every log file the run's Ray sessions wrote under `ray_temp` (the run's own folder)."""
    logs = {}
    for session in (ray_temp / "ray").glob("session_2*"):
        for path in (session / "logs").rglob("*"):
            if path.is_file() and not path.is_symlink():
                logs[str(path)] = path.read_bytes().decode("utf-8", errors="replace")
    return logs


@pytest.fixture
def ray_temp() -> Iterator[Path]:
    """A private folder for the run's Ray sessions (RAY_TMPDIR), so its logs are told apart
    from every other Ray session on this machine; short, as Ray's socket paths must be."""
    folder = Path(tempfile.mkdtemp(prefix="qarina-ray-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


#: Imported by every Python process of the run (the command, Ray's workers and their actors):
#: `--verbose` sets the command's own log level, and actors keep Python's default (warnings)
#: however it is set, so without this the failure lines actors log would never be written.
_EVERY_PROCESS_LOGS = """
import logging
import sys

_handler = logging.StreamHandler(sys.stderr)
for _name in ("evidence", "models", "pipelines", "workers"):
    logging.getLogger(_name).setLevel(logging.DEBUG)
    logging.getLogger(_name).addHandler(_handler)
"""


def _canary_folder(root: Path) -> Path:
    """A photo and a short video located at the canary place, a voice note and a video
    speaking the greeting Whisper base hears well, and a broken video whose failure is logged,
    all under canary names."""
    folder = root / f"{CANARY_NAME}-drive"
    folder.mkdir()
    exif = photos.exif_bytes(gps=(*CANARY_GPS, 12.0))
    photos.photo(folder / f"{CANARY_NAME}-photo.jpg", size=(320, 240), exif=exif)
    videos.video_with_location(folder / f"{CANARY_NAME}-place.mp4", *CANARY_GPS)
    audio.speech(folder / f"{CANARY_NAME}-note.ogg", audio.GREETING, voice_format="ogg-opus")
    speech = audio.speech(root / "speech.wav", audio.GREETING)
    videos.video_with_speech(folder / f"{CANARY_NAME}-clip.mp4", speech)
    hostile.corrupt_video(folder / f"{CANARY_NAME}-broken.mp4")
    return folder


@pytest.mark.slow
def test_a_full_run_logs_no_file_name_gps_or_transcript_words(
    tmp_path: Path, models_dir: Path, ray_temp: Path
) -> None:
    folder = _canary_folder(tmp_path)
    data = tmp_path / "data"
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_EVERY_PROCESS_LOGS)
    env = dict(
        os.environ,
        RAY_TMPDIR=str(ray_temp),
        QARINA_MODELS_DIR=str(models_dir),
        QARINA_OPERATOR="tester",
        # Ray's own processes at their most verbose, every repeated line kept.
        RAY_BACKEND_LOG_LEVEL="debug",
        RAY_DEDUP_LOGS="0",
        PYTHONPATH=os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])),
    )
    for private in ("RAY_ADDRESS", "QARINA_DB_URL", "QARINA_DATA"):
        env.pop(private, None)
    captured: dict[str, str] = {}
    for command in (["ingest", str(folder), "--source", "S"], ["run"]):
        # --verbose: the most the command logs (one line per item and stage event).
        ran = subprocess.run(
            [QARINA, "--verbose", "--data", str(data), *command],
            env=env, capture_output=True, text=True, timeout=240, check=False,
        )  # fmt: skip
        assert ran.returncode == 0, ran.stderr[-3000:]
        captured[f"{command[0]} stdout"] = ran.stdout
        captured[f"{command[0]} stderr"] = ran.stderr
    assert "5 new items" in captured["ingest stdout"]
    assert "(1 failures)" in captured["run stdout"]
    assert "ingested item" in captured["ingest stderr"], "--verbose should log per item"
    sessions = list((ray_temp / "ray").glob("session_2*"))
    assert len(sessions) == 1, "the run should have started one private Ray session"
    ray_logs = _session_logs(ray_temp)
    actors = "".join(text for name, text in ray_logs.items() if "/worker-" in name)
    assert "stage probe failed: corrupt_media" in actors, "the actors' own lines are missing"
    captured |= ray_logs

    # What the run stored: the canaries as the store holds them, and proof the run worked.
    runner = CliRunner(env={"QARINA_DB_URL": None, "QARINA_OPERATOR": "tester"})
    engine = sa.create_engine(f"sqlite:///{data / 'qarina.sqlite3'}")
    try:
        with engine.connect() as connection:
            shas = connection.execute(sa.select(acquisitions.c.sha256)).scalars().all()
    finally:
        engine.dispose()
    shown = {}
    for sha in shas:
        result = runner.invoke(app, ["--data", str(data), "show", sha, "--json"])
        assert result.exit_code == 0, result.output
        shown[sha] = json.loads(result.stdout)
    coordinates = set(CANARY_GPS)
    spoken: dict[str, str] = {}
    located = 0
    for sha, item in shown.items():
        stored = item["results"]
        gps = stored.get("metadata", {}).get("data", {}).get("gps")
        if gps:
            located += 1
            coordinates |= {gps["lat"], gps["lon"]}
        if text := stored.get("transcript", {}).get("data", {}).get("text"):
            spoken[sha] = text
    assert located == 2, "the photo and the placed video should carry the canary GPS"
    assert {round(value, 3) for value in coordinates} == {33.123, 44.654}
    assert len(spoken) == 2, "the voice note and the clip should have transcripts"
    words = {
        word
        for text in spoken.values()
        for word in (*text.split(), *normalise(text).split())
        if len(word) > 1
    }
    # Whisper base hears the greeting (pipelines/samples/audio.py) in the note and the clip.
    assert set(normalise(audio.GREETING).split()) & {normalise(word) for word in words}

    name_patterns = {re.escape(CANARY_NAME), re.escape(CANARY_NAME.encode().hex())}
    patterns = {
        "file name": name_patterns,
        "GPS": _gps_patterns(coordinates),
        "transcript": {re.escape(word) for word in words},
    }
    # The patterns find what they look for: `show` may print all of it, and does.
    everything_shown = json.dumps(list(shown.values()), ensure_ascii=False)
    for what, looked_for in patterns.items():
        assert _leaks(everything_shown, looked_for), f"the {what} patterns match nothing"
    for source, text in captured.items():
        for what, looked_for in patterns.items():
            assert not _leaks(text, looked_for), f"{source} names the {what}"

    # Search with injection strings on the real transcripts: quotes are words, never SQL.
    base = ["--data", str(data)]
    # Each transcript is found by a word of its own (what Whisper heard differs by CPU: on
    # one machine the clip's transcript holds the whole greeting, on another not).
    for sha, text in spoken.items():
        word = max(re.findall(r"\w+", text), key=len)
        found = runner.invoke(app, [*base, "search", word, "--json"])
        assert found.exit_code == 0, found.output
        assert sha in {hit["sha256"] for hit in json.loads(found.stdout)}, word
    for query in HOSTILE:
        result = runner.invoke(app, [*base, "search", query, "--json"])
        assert result.exit_code == 0 and json.loads(result.stdout) == [], (query, result.output)


# --- hostile text in every input --------------------------------------------------------------


def _snapshot(store: Store) -> dict[str, int]:
    """Rows per table, and which tables exist (a dropped one is missing)."""
    with store.database.reader.connect() as connection:
        present = set(sa.inspect(connection).get_table_names())
        counts = {
            table.name: connection.execute(
                sa.select(sa.func.count()).select_from(table)
            ).scalar_one()
            for table in metadata.sorted_tables
            if table.name in present
        }
    return counts | {f"table {name}": 1 for name in present}


def _grew_only(before: dict[str, int], after: dict[str, int], allowed: set[str]) -> None:
    """No table dropped, no row removed, and rows added to the `allowed` tables only."""
    assert set(after) == set(before), "a table appeared or disappeared"
    for name, count in after.items():
        assert count >= before[name], f"rows removed from {name}"
        if name not in allowed:
            assert count == before[name], f"rows added to {name}"


def _is_name(value: str) -> bool:
    """Whether the store takes `value` as a name (source, request, reviewer): 1 to 200
    characters (its VARCHAR(200) columns), none of them a control character. Written out here
    rather than imported, so that the test states the rule the commands must keep."""
    return 0 < len(value) <= 200 and not re.search(r"[\x00-\x1f\x7f]", value)


def _is_reason(value: str) -> bool:
    """Whether the API takes `value` as free text kept in custody: 1 to 1000 characters, no NUL
    (PostgreSQL's text holds none)."""
    return 0 < len(value) <= 1000 and "\x00" not in value


def _assert_refused(result: Result, *options: str) -> None:
    """The command refused its input as a usage error naming one of the options, not with a
    traceback or a database error."""
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Invalid value" in result.output, result.output
    assert any(option in result.output for option in options), result.output


def _assert_answered(result: Result) -> None:
    """The command ended on its own terms (a result, or "no such request"), not a traceback."""
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code in (0, 1), result.output


def _plant_transcript(store: Store, config: QarinaConfig, sha: str) -> None:
    """A transcript result of `sha`, indexed for search, that says PLANTED_WORDS: without one,
    a query whose quotes reached the SQL would have nothing to give away."""
    key = next(iter(Plan.default(settings=config).keys("transcript")))
    with store.database.writer.begin() as connection:
        inserted = connection.execute(
            sa.insert(results).values(
                sha256=sha,
                stage=key.stage,
                stage_version=key.stage_version,
                config_hash=key.config_hash,
                status="ok",
                data={},
                data_sha256="0" * 64,
                provenance={},
                created_at=utc_now(),
            )
        )
        (result_id,) = inserted.inserted_primary_key or (None,)
    assert isinstance(result_id, int)
    segment = search.IndexedSegment(0.0, 1.0, PLANTED_WORDS, normalise(PLANTED_WORDS), [])
    search.index_result(store.database, search.PendingResult(result_id, sha, {}), [segment])


def _job(store: Store, sha: str) -> tuple[str, int]:
    with store.database.reader.connect() as connection:
        row = connection.execute(
            sa.select(jobs.c.state, jobs.c.priority).where(jobs.c.sha256 == sha)
        ).one()
    return row.state, row.priority


def _file(folder: Path, name: str, content: bytes) -> tuple[Path, str]:
    folder.mkdir()
    (folder / name).write_bytes(content)
    return folder, hashlib.sha256(content).hexdigest()


@pytest.fixture
def bystanders(store: Store, config: QarinaConfig, tmp_path: Path) -> dict[str, str]:
    """Items outside every hostile request, whose jobs an injection would reach: one failed
    (an HTML page the probe refuses), one queued at priority 0, with a planted transcript."""
    runner = CliRunner(env={"QARINA_DB_URL": config.db_url, "QARINA_OPERATOR": "tester"})
    base = ["--data", str(config.data_dir)]
    failed = tmp_path / "failed"
    failed.mkdir()
    page = hostile.html_page(failed / "page.html")
    for args in (["ingest", str(failed), "--source", "bystander"], ["run", "--sequential"]):
        assert runner.invoke(app, [*base, *args]).exit_code == 0
    queued, queued_sha = _file(tmp_path / "queued", "queued.bin", b"a bystander's bytes")
    assert (
        runner.invoke(app, [*base, "ingest", str(queued), "--source", "bystander"]).exit_code == 0
    )
    failed_sha = hashlib.sha256(page.read_bytes()).hexdigest()
    assert _job(store, failed_sha) == ("failed", 0)
    assert _job(store, queued_sha) == ("queued", 0)
    _plant_transcript(store, config, queued_sha)
    return {"failed": failed_sha, "queued": queued_sha}


def test_hostile_text_in_every_command_line_input_is_kept_verbatim_or_refused(
    store: Store, config: QarinaConfig, bystanders: dict[str, str], tmp_path: Path
) -> None:
    runner = CliRunner(env={"QARINA_DB_URL": config.db_url, "QARINA_OPERATOR": "tester"})
    base = ["--data", str(config.data_dir)]

    def qarina(*args: str) -> Result:
        return runner.invoke(app, [*base, *args])

    planted = json.loads(qarina("search", PLANTED_WORDS, "--json").stdout)
    assert [hit["sha256"] for hit in planted] == [bystanders["queued"]]
    for number, value in enumerate(HOSTILE):
        # Intake: the source and the request of a new arrival.
        folder, sha = _file(tmp_path / f"in{number}", "item.bin", f"item {number}".encode())
        before = _snapshot(store)
        ingested = qarina("ingest", str(folder), "--source", value, "--request", value)
        if not _is_name(value):
            _assert_refused(ingested, "--source", "--request")
            _grew_only(before, _snapshot(store), set())
            assert not list(config.blob_root.rglob(sha)), "a refused file was copied in"
        else:
            assert ingested.exit_code == 0, ingested.output
            with store.database.reader.connect() as connection:
                arrival = connection.execute(
                    sa.select(acquisitions).where(acquisitions.c.sha256 == sha)
                ).one()
            assert (arrival.source, arrival.request_ref) == (value, value)
            _grew_only(
                before,
                _snapshot(store),
                {"items", "acquisitions", "jobs", "custody_events", "requests"},
            )

        # Requests: created, re-prioritised (only their own jobs move), listed.
        before = _snapshot(store)
        created = qarina("request", "create", value, "--priority", "1")
        if not _is_name(value):
            _assert_refused(created, "'ref'")
            _grew_only(before, _snapshot(store), set())
        else:
            assert created.exit_code == 0, created.output
            request = requests.get(store.database, value)
            assert request is not None and (request.ref, request.priority) == (value, 1)
            moved = qarina("request", "priority", value, "99", "--json")
            assert moved.exit_code == 0, moved.output
            assert json.loads(moved.stdout)["ref"] == value
            assert _job(store, sha) == ("queued", 99)
            listed = json.loads(qarina("request", "list", "--json").stdout)
            assert value in {found["ref"] for found in listed}
        assert _job(store, bystanders["queued"]) == ("queued", 0)

        # Reviews: the note is free text, kept as typed; the reviewer is a name.
        for option in ("--note", "--reviewer"):
            before = _snapshot(store)
            reviewed = qarina(
                "review", bystanders["queued"], "--label", "reviewed", option, value, "--json"
            )
            if option == "--reviewer" and not _is_name(value):
                _assert_refused(reviewed, option)
                _grew_only(before, _snapshot(store), set())
                continue
            assert reviewed.exit_code == 0, reviewed.output
            with store.database.reader.connect() as connection:
                latest = connection.execute(
                    sa.select(reviews.c.note, reviews.c.reviewer).order_by(reviews.c.id.desc())
                ).first()
            assert latest is not None
            assert (latest.note if option == "--note" else latest.reviewer) == value
            _grew_only(before, _snapshot(store), {"reviews", "custody_events"})

        # Pausing: the reason is kept as typed.
        assert qarina("pause", "--reason", value).exit_code == 0
        assert pause_state(store.database).reason == value
        assert qarina("resume").exit_code == 0

        # Reading and filtering change nothing and reach nothing else.
        before = _snapshot(store)
        for args in (
            ["search", value, "--json"],
            ["status", "--request", value, "--json"],
            ["requeue", "--failed", "--request", value, "--note", value],
            ["reprocess", "--stage", "probe", "--request", value, "--reason", value, "--dry-run"],
        ):
            result = qarina(*args)
            _assert_answered(result)
            if args[0] == "search":
                assert json.loads(result.stdout) == []
            if args[0] == "requeue" and _is_name(value):  # the request exists, with no failures
                assert "requeued 0" in result.stdout, result.output
        _grew_only(before, _snapshot(store), set())
        assert _job(store, bystanders["failed"]) == ("failed", 0)

    verified = qarina("verify", "--fixity")
    assert verified.exit_code == 0, verified.output


def test_an_operator_named_with_injection_strings_is_recorded_as_named(
    store: Store, config: QarinaConfig, tmp_path: Path
) -> None:
    """QARINA_OPERATOR enters every custody actor (`qarina-ingest@OPERATOR`)."""
    for number, value in enumerate(HOSTILE[:6]):
        runner = CliRunner(env={"QARINA_DB_URL": config.db_url, "QARINA_OPERATOR": value})
        folder, sha = _file(tmp_path / f"in{number}", "item.bin", f"item {number}".encode())
        result = runner.invoke(
            app, ["--data", str(config.data_dir), "ingest", str(folder), "--source", "s"]
        )
        assert result.exit_code == 0, result.output
        with store.database.reader.connect() as connection:
            operator = connection.execute(
                sa.select(acquisitions.c.operator).where(acquisitions.c.sha256 == sha)
            ).scalar_one()
        assert operator == value
    assert store.verify(False, actor="tester").ok


@pytest.mark.parametrize("operator", ["x" * (OPERATOR_MAX_CHARS + 1), "line\nbreak"], ids=repr)
def test_an_operator_name_no_store_could_keep_is_refused_before_anything_is_written(
    operator: str, store: Store, config: QarinaConfig, tmp_path: Path
) -> None:
    """PostgreSQL refuses an over-long actor only when the first custody event is written,
    and a newline would forge log lines; both backends refuse the name at the start instead,
    with the reason. (An environment variable cannot carry a NUL.)"""
    runner = CliRunner(env={"QARINA_DB_URL": config.db_url, "QARINA_OPERATOR": operator})
    folder, sha = _file(tmp_path / "in", "item.bin", b"an item")
    result = runner.invoke(
        app, ["--data", str(config.data_dir), "ingest", str(folder), "--source", "s"]
    )
    assert result.exit_code == 2 and "QARINA_OPERATOR" in result.output
    assert not store.blobs.path_for(sha).exists()
    assert runner.invoke(app, ["--data", str(config.data_dir), "status"]).exit_code == 2


def _call(
    base: str, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    """One API request with the reviewer's token; the status and the parsed JSON reply."""
    sent = {"Authorization": f"Bearer {REVIEWER_TOKEN}", **(headers or {})}
    status, _, reply = api_call(base, method, path, body, sent)
    return status, reply


def test_hostile_text_in_every_api_input_is_kept_verbatim_or_refused(
    store: Store, config: QarinaConfig, bystanders: dict[str, str], tmp_path: Path
) -> None:
    """The API's own checks (`pipelines/api/models.py`) decide what is refused with 422; what
    they let through must be stored as sent, and nothing may end in a 500."""
    tokens = write_tokens(tmp_path / "tokens")
    with serving(store, config, tokens) as base:
        status, planted = _call(base, "GET", "/v1/search?" + urlencode({"q": PLANTED_WORDS}))
        assert status == 200 and [hit["sha256"] for hit in planted] == [bystanders["queued"]]
        for number, value in enumerate(API_HOSTILE):
            name_status = 200 if _is_name(value) else 422
            # Intake: the source, the request and the original name (raw bytes) of an upload.
            before = _snapshot(store)
            content = f"upload {number}".encode()
            status, reply = _call(
                base,
                "POST",
                "/v1/items/upload?" + urlencode({"source": value, "request": value}),
                content,
                {"X-Original-Name": quote_from_bytes(value.encode())},
            )
            assert status == name_status, (status, reply)
            if status == 200:
                with store.database.reader.connect() as connection:
                    arrival = connection.execute(
                        sa.select(acquisitions).where(
                            acquisitions.c.sha256 == hashlib.sha256(content).hexdigest()
                        )
                    ).one()
                assert (arrival.source, arrival.request_ref) == (value, value)
                assert arrival.original_name == value.encode()
            else:
                _grew_only(before, _snapshot(store), set())

            # Requests: created and re-prioritised; only their own jobs move.
            status, reply = _call(base, "POST", "/v1/requests", {"ref": value, "priority": 2})
            assert status == name_status, (status, reply)
            if status == 200:
                request = requests.get(store.database, value)
                assert request is not None and (request.ref, request.priority) == (value, 2)
            status, reply = _call(
                base, "POST", "/v1/requests/priority", {"ref": value, "priority": 77}
            )
            assert status == name_status, (status, reply)
            assert _job(store, bystanders["queued"]) == ("queued", 0)

            status, reply = _call(base, "POST", "/v1/pause", {"reason": value})
            assert status == (200 if _is_reason(value) else 422), (status, reply)
            if status == 200:
                assert pause_state(store.database).reason == value
            assert _call(base, "POST", "/v1/resume")[0] == 200

            # Filters and searches change nothing and reach nothing else.
            before = _snapshot(store)
            status, reply = _call(base, "POST", "/v1/requeue", {"note": value, "request": value})
            if _is_name(value) and _is_reason(value):
                assert (status, reply) == (200, {"requeued": 0})
            else:
                assert status == 422, (status, reply)
            status, reply = _call(base, "GET", "/v1/search?" + urlencode({"q": value}))
            searchable = len(value) <= 500 and "\x00" not in value
            assert (status, reply if status == 200 else []) == (200 if searchable else 422, [])
            status, reply = _call(base, "GET", "/v1/status?" + urlencode({"request": value}))
            assert status == name_status, (status, reply)
            _grew_only(before, _snapshot(store), set())
            assert _job(store, bystanders["failed"]) == ("failed", 0)
    assert store.verify(True, actor="tester").ok
