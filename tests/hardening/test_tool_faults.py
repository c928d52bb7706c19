"""Tools that hang or die (issue 17): the item fails classified, the tool's whole process group
goes with it, and the worker goes on with the next item.

Stub tools on PATH stand in for ffprobe and exiftool and misbehave only on the item the test
names (store paths carry the item's SHA-256); every other item reaches the real tool.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import stat
import textwrap
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from evidence.schema import jobs
from evidence.store import Store
from pipelines.bench.hangs import HangMode, make_hanging, stand_in_ffprobe
from pipelines.config import QarinaConfig
from pipelines.ingest import ingest_paths
from pipelines.plan import Plan
from pipelines.runner import run_plan
from pipelines.samples import lying, photos
from workers.base import FailureReason, StageError
from workers.metadata import MetadataConfig, MetadataStage
from workers.probe import ProbeConfig, ProbeStage
from workers.tools import ToolLimits, ffprobe_json, run_tool

#: The marker a hanging stub's own child carries, so the test can find any left behind.
LINGER = "7777.25"


@pytest.fixture
def config(sqlite_config: QarinaConfig) -> QarinaConfig:
    """SQLite only: what is checked here is how stages and tools behave, which the backend
    does not change; the store's own faults run on both (test_store_faults.py)."""
    return sqlite_config


def _stub_folder(tmp_path: Path, tool: str) -> tuple[Path, str]:
    """A folder for stub tools, and where the real `tool` is (the stub hands work on to it)."""
    real = shutil.which(tool)
    assert real is not None, f"{tool} is not installed"
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    return stubs, real


def _stub(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text(textwrap.dedent(body).lstrip())
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def _running(needle: str) -> list[int]:
    """Live processes whose command line holds `needle`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if needle.encode() in argv and state != "Z":
            found.append(int(entry.name))
    return found


def _states(store: Store) -> dict[tuple[str, str], tuple[str, str | None, int]]:
    with store.database.reader.connect() as connection:
        rows = connection.execute(
            sa.select(
                jobs.c.sha256, jobs.c.stage, jobs.c.state, jobs.c.error_reason, jobs.c.attempts
            )
        ).all()
    return {(row.sha256, row.stage): (row.state, row.error_reason, row.attempts) for row in rows}


@pytest.fixture
def items(tmp_path: Path) -> dict[str, Path]:
    folder = tmp_path / "in"
    folder.mkdir()
    return {
        "hang": lying.phone_video(folder / "a.mp4"),
        "crash": lying.phone_video(folder / "b.mkv", container="matroska"),
        "good": lying.phone_video(folder / "c.mov", container="mov"),
        "photo": photos.photo(folder / "d.jpg", size=(320, 240)),
    }


@pytest.mark.allow_logged_errors
def test_a_hanging_or_dying_ffprobe_fails_its_item_alone(
    items: dict[str, Path],
    store: Store,
    config: QarinaConfig,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sha = {name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path in items.items()}
    stubs, real = _stub_folder(tmp_path, "ffprobe")
    # The hanging stub leaves a child of its own: only a kill of the whole group ends both.
    _stub(
        stubs,
        "ffprobe",
        f"""
        #!/bin/sh
        for arg in "$@"; do
          case "$arg" in
            *{sha["hang"]}*) sleep {LINGER} & sleep {LINGER}; exit 0 ;;
            *{sha["crash"]}*) kill -9 $$ ;;
          esac
        done
        exec {real} "$@"
    """,
    )
    monkeypatch.setenv("PATH", f"{stubs}{os.pathsep}{os.environ['PATH']}")
    probe = ProbeStage(ProbeConfig(tool=ToolLimits(timeout_s=1.5, memory_mb=1024)))
    plan = Plan({"probe": probe})
    ingest_paths(store, plan, config, [items["hang"].parent], source="faults")

    started = time.monotonic()
    run_plan(store, plan, config)
    elapsed = time.monotonic() - started

    states = _states(store)
    hang_state, hang_reason, hang_attempts = states[sha["hang"], "probe"]
    assert (hang_state, hang_reason) == ("dead", "tool_timeout")
    # A kill, not a memory limit: the kernel's out-of-memory killer took nothing.
    assert states[sha["crash"], "probe"][:2] == ("dead", "tool_crash")
    assert states[sha["good"], "probe"][0] == "done"
    assert states[sha["photo"], "probe"][0] == "done"
    # Each attempt ends at the timeout, not at the stub's 7,777 s.
    assert elapsed < hang_attempts * 1.5 + 30
    assert not _running(LINGER)


def test_an_ffmpeg_killed_alone_mid_decode_is_a_crash_and_the_next_call_runs() -> None:
    """The tool dies under the worker (an operator's kill, a watchdog): `tool_crash` for that
    call, and the worker's next call gets a fresh ffmpeg."""
    source = "testsrc2=size=320x240:rate=25:duration=3600.5"
    decode = ["ffmpeg", "-hide_banner", "-nostdin", "-f", "lavfi", "-i", source, "-f", "null", "-"]
    raised: list[BaseException] = []

    def run() -> None:
        try:
            run_tool(decode, ToolLimits(timeout_s=60))
        except StageError as error:
            raised.append(error)

    worker = threading.Thread(target=run)
    worker.start()
    deadline = time.monotonic() + 20
    while not (running := _running(source)):
        assert time.monotonic() < deadline, "ffmpeg did not start"
        time.sleep(0.05)
    os.kill(running[0], signal.SIGKILL)
    worker.join(timeout=20)

    assert len(raised) == 1 and isinstance(raised[0], StageError)
    assert raised[0].reason is FailureReason.TOOL_CRASH
    assert (
        run_tool(["ffmpeg", "-hide_banner", "-version"], ToolLimits(timeout_s=30)).returncode == 0
    )


@pytest.mark.allow_logged_errors
def test_an_exiftool_killed_mid_request_fails_that_item_and_the_next_one_gets_a_new_one(
    items: dict[str, Path],
    store: Store,
    config: QarinaConfig,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The stub speaks exiftool's -stay_open protocol by handing each request to the real
    exiftool, and kills itself when a request names the chosen item."""
    doomed = hashlib.sha256(items["crash"].read_bytes()).hexdigest()
    stubs, real = _stub_folder(tmp_path, "exiftool")
    _stub(
        stubs,
        "exiftool",
        f"""
        #!{shutil.which("python3")}
        import os, signal, subprocess, sys
        request = []
        for line in sys.stdin:
            if "{doomed}" in line:
                os.kill(os.getpid(), signal.SIGKILL)
            if line.startswith("-execute"):
                number = line.strip().removeprefix("-execute")
                argv = [a for a in request if a] + ["-echo3", "{{ready" + number + "}}"]
                done = subprocess.run(["{real}", *argv], capture_output=True)
                sys.stdout.buffer.write(done.stdout)
                sys.stdout.flush()
                request = []
            else:
                request.append(line.rstrip("\\n"))
    """,
    )
    monkeypatch.setenv("PATH", f"{stubs}{os.pathsep}{os.environ['PATH']}")
    plan = Plan(
        {
            "probe": ProbeStage(),
            "metadata": MetadataStage(MetadataConfig(tool=ToolLimits(timeout_s=20))),
        }
    )
    ingest_paths(store, plan, config, [items["crash"].parent], source="faults")
    run_plan(store, plan, config)

    states = _states(store)
    shas = {hashlib.sha256(path.read_bytes()).hexdigest() for path in items.values()}
    assert states[doomed, "metadata"][:2] == ("dead", "tool_crash")
    for other in shas - {doomed}:
        assert states[other, "metadata"][0] == "done", other


@pytest.mark.parametrize("mode", ["spin", "sleep"])
def test_the_hang_bench_stand_in_hangs_on_marked_copies_only(
    mode: HangMode, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`qarina bench hangs` rests on its stand-in ffprobe: the real answer for a file, a hang
    for a marked copy of it, ended with its process group at the probe's timeout."""
    good = lying.phone_video(tmp_path / "good.mp4")
    make_hanging([good], tmp_path / "hanging", 1)
    marked = next((tmp_path / "hanging").iterdir())
    stand_in = stand_in_ffprobe(tmp_path / "tools", mode)
    monkeypatch.setenv("PATH", f"{stand_in.parent}{os.pathsep}{os.environ['PATH']}")
    limits = ToolLimits(timeout_s=1.0, memory_mb=1024)

    assert ffprobe_json(good, limits)["streams"]
    started = time.monotonic()
    with pytest.raises(StageError) as raised:
        ffprobe_json(marked, limits)
    assert raised.value.reason is FailureReason.TOOL_TIMEOUT
    assert time.monotonic() - started < 10
    assert not _running(str(stand_in))
