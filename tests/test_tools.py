"""External tools run under a timeout, a memory limit, a clean environment and no shell."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from workers.base import FailureReason, StageError
from workers.tools import ToolLimits, ffprobe_json, run_tool


def test_a_hung_tool_is_killed_at_its_timeout() -> None:
    started = time.monotonic()
    with pytest.raises(StageError) as raised:
        run_tool(["sleep", "30"], ToolLimits(timeout_s=0.3))
    assert raised.value.reason is FailureReason.TOOL_TIMEOUT
    assert time.monotonic() - started < 5


def test_a_tool_over_its_memory_limit_is_a_resource_limit() -> None:
    hog = [sys.executable, "-c", "x = bytearray(1536 * 1024 * 1024)"]
    with pytest.raises(StageError) as raised:
        run_tool(hog, ToolLimits(timeout_s=30, memory_mb=512))
    assert raised.value.reason is FailureReason.RESOURCE_LIMIT


def test_a_tool_killed_by_a_signal_is_a_crash() -> None:
    with pytest.raises(StageError) as raised:
        run_tool([sys.executable, "-c", "import os; os.abort()"], ToolLimits(timeout_s=30))
    assert raised.value.reason is FailureReason.TOOL_CRASH


def test_tools_see_no_proxy_or_user_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("http_proxy", "http://10.0.0.1:3128")
    monkeypatch.setenv("EXIFTOOL_HOME", "/tmp/evil")
    run = run_tool(["env"], ToolLimits(timeout_s=10))
    names = {line.split("=", 1)[0] for line in run.stdout.decode().splitlines()}
    assert names <= {"PATH", "LANG", "HOME"}


def test_ffprobe_cannot_be_steered_to_the_network(tmp_path: Path) -> None:
    """A store path that looked like a URL or an option would still be read as a local file."""
    odd = tmp_path / "http:" / "example.org"
    odd.parent.mkdir()
    odd.write_bytes(b"not media")
    with pytest.raises(StageError) as raised:
        ffprobe_json(odd, ToolLimits(timeout_s=20))
    assert raised.value.reason is FailureReason.CORRUPT_MEDIA


def test_a_killed_worker_leaves_no_exiftool_behind(tmp_path: Path) -> None:
    """kill -9 of the process that owns `exiftool -stay_open` takes exiftool with it."""
    import os
    import signal
    import subprocess

    script = (
        "import sys, time\n"
        "from workers.tools import ExiftoolSession, ToolLimits\n"
        "session = ExiftoolSession(ToolLimits(timeout_s=30), ['-json'])\n"
        "session.start()\n"
        "print(session.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert owner.stdout is not None
    exiftool_pid = int(owner.stdout.readline())
    os.kill(owner.pid, signal.SIGKILL)
    owner.wait()
    deadline = time.monotonic() + 10
    while Path(f"/proc/{exiftool_pid}").exists() and time.monotonic() < deadline:
        status = Path(f"/proc/{exiftool_pid}/stat").read_text().split()
        if status[2] == "Z":  # a zombie has already exited; only its parent's reaping is left
            break
        time.sleep(0.1)
    else:
        assert not Path(f"/proc/{exiftool_pid}").exists(), "exiftool outlived its owner"
