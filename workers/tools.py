"""Running external tools (ffprobe, ffmpeg, exiftool) on hostile input, safely.

Every call gets an argument list (never a shell), a wall-clock timeout, an address-space limit,
no core dumps, a minimal environment with no proxy variables, and store paths only. A hung or
exploding tool becomes a classified StageError instead of a hung worker.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import resource
import selectors
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from workers.base import FailureReason, StageError

_MIB = 1024 * 1024


@dataclass(frozen=True)
class ToolLimits:
    """Per-call limits. FFmpeg maps large thread stacks, so its address-space limit is generous."""

    timeout_s: float = 120.0
    memory_mb: int = 4096


def _tool_env() -> dict[str, str]:
    """A minimal environment: no proxies, no user configuration files, a stable locale."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "HOME": "/nonexistent",
    }


#: prctl(2) option: the kernel sends the child a signal when its parent dies.
_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _limit_child(memory_mb: int) -> Callable[[], None]:
    def apply() -> None:
        memory = memory_mb * _MIB
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        # A worker killed outright (kill -9, a lost Ray actor) must not leave its tools
        # behind: an orphaned `exiftool -stay_open` never sees EOF as a reason to exit.
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)

    return apply


@dataclass(frozen=True)
class ToolRun:
    """What a finished tool call produced; a non-zero exit is the caller's to classify."""

    returncode: int
    stdout: bytes
    stderr: bytes

    def stderr_summary(self) -> str:
        """The last stderr lines, trimmed: enough to classify, never a full dump into the store."""
        text = self.stderr.decode("utf-8", "replace")
        lines = [line for line in text.splitlines() if line.strip()]
        return " | ".join(lines[-3:])[:400]


def _ran_out_of_memory(stderr: bytes) -> bool:
    """How ffmpeg (ENOMEM), Perl (exiftool) and Python report hitting the address-space limit."""
    text = stderr[-4096:].decode("utf-8", "replace").lower()
    return any(sign in text for sign in ("cannot allocate memory", "out of memory", "memoryerror"))


#: Where the kernel counts the processes its out-of-memory killer took in this container's
#: memory cgroup: cgroup v2, then v1.
_OOM_COUNTERS = (
    (Path("/sys/fs/cgroup/memory.events"), "oom_kill"),
    (Path("/sys/fs/cgroup/memory/memory.oom_control"), "oom_kill"),
)


def oom_kills() -> int | None:
    """How many processes the kernel's out-of-memory killer has taken in this cgroup, or None
    where no counter can be read."""
    for path, field_name in _OOM_COUNTERS:
        try:
            lines = path.read_text(encoding="ascii").splitlines()
        except OSError:
            continue
        for line in lines:
            name, _, value = line.partition(" ")
            if name == field_name and value.strip().isdigit():
                return int(value)
    return None


def _classify_signal(
    tool: str, returncode: int, stderr: bytes, oom_before: int | None
) -> StageError:
    """A tool that died by a signal: out of memory where it said so or the kernel's
    out-of-memory killer took a process meanwhile; otherwise a crash. A SIGKILL alone does not
    mean memory: an operator, a watchdog or another tool's cleanup sends it too, and the
    address-space limit makes a tool fail to allocate long before the kernel steps in."""
    oom_now = oom_kills() if returncode == -signal.SIGKILL else None
    if _ran_out_of_memory(stderr) or (
        oom_before is not None and oom_now is not None and oom_now > oom_before
    ):
        return StageError(
            FailureReason.RESOURCE_LIMIT, f"{tool} ran out of memory (exit {returncode})"
        )
    return StageError(FailureReason.TOOL_CRASH, f"{tool} died with signal {-returncode}")


def run_tool(argv: Sequence[str], limits: ToolLimits) -> ToolRun:
    """Run one tool to completion under limits.

    Raises:
        StageError: tool_timeout when the wall clock runs out (the whole process group is
            killed), resource_limit when the memory limit stops it, tool_crash on a signal.
    """
    tool = Path(argv[0]).name
    oom_before = oom_kills()
    try:
        process = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=_tool_env(),
            preexec_fn=_limit_child(limits.memory_mb),  # noqa: PLW1509 - setrlimit only, no locks taken
            start_new_session=True,
        )
    except FileNotFoundError as error:
        raise StageError(FailureReason.TOOL_CRASH, f"{tool} is not installed") from error
    try:
        stdout, stderr = process.communicate(timeout=limits.timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise StageError(
            FailureReason.TOOL_TIMEOUT, f"{tool} exceeded {limits.timeout_s:g} s"
        ) from None
    if process.returncode < 0:
        raise _classify_signal(tool, process.returncode, stderr, oom_before)
    if process.returncode != 0 and _ran_out_of_memory(stderr):
        raise StageError(FailureReason.RESOURCE_LIMIT, f"{tool} could not allocate memory")
    return ToolRun(process.returncode, stdout, stderr)


def ffmpeg_input(path: Path) -> str:
    """An input URL that ffmpeg cannot mistake for an option or a network protocol.

    FFmpeg takes no `--`; the explicit `file:` protocol plus `-protocol_whitelist file` is its
    equivalent, and store paths are absolute anyway.
    """
    return f"file:{path.resolve()}"


def ffprobe_json(path: Path, limits: ToolLimits) -> dict[str, Any]:
    """ffprobe's container and stream description as parsed JSON.

    Raises:
        StageError: corrupt_media when ffprobe cannot read the file, plus run_tool's errors.
    """
    run = run_tool(
        [
            "ffprobe",
            "-hide_banner",
            "-v",
            "error",
            "-protocol_whitelist",
            "file",
            "-print_format",
            "json",
            "-show_format",
            "-show_streams",
            ffmpeg_input(path),
        ],
        limits,
    )
    if run.returncode != 0:
        raise StageError(
            FailureReason.CORRUPT_MEDIA, f"ffprobe could not read it: {run.stderr_summary()}"
        )
    try:
        parsed: dict[str, Any] = json.loads(run.stdout)
    except json.JSONDecodeError as error:
        raise StageError(FailureReason.CORRUPT_MEDIA, "ffprobe printed no JSON") from error
    return parsed


@cache
def package_version(package: str) -> str | None:
    """An installed Python distribution's version, None when it is not installed."""
    try:
        return importlib_metadata.version(package)
    except importlib_metadata.PackageNotFoundError:
        return None


def tool_version(tool: str) -> str:
    """The first line a tool prints about its version, cached per process."""
    flag = "-ver" if tool == "exiftool" else "-version"
    try:
        run = run_tool([tool, flag], ToolLimits(timeout_s=20))
    except StageError:
        return "unknown"
    first = run.stdout.decode("utf-8", "replace").strip().splitlines()
    return first[0] if first else "unknown"


class ExiftoolSession:
    """One long-lived `exiftool -stay_open` process: starting Perl per file costs ~0.2 s.

    Each request is written as an argument file on stdin and answered up to a `{readyN}` line.
    A request that outlives its timeout kills the process; the next request starts a new one.
    """

    _READ_CHUNK = 65536

    def __init__(self, limits: ToolLimits, common_args: Sequence[str]) -> None:
        self._limits = limits
        self._common_args = list(common_args)
        self._process: subprocess.Popen[bytes] | None = None
        self._stderr: list[bytes] = []
        self._stderr_lock = threading.Lock()
        self._counter = 0
        self._oom_before = oom_kills()

    def start(self) -> None:
        """Start the process now (setup time) rather than on the first item."""
        self._ensure_started()

    @property
    def pid(self) -> int | None:
        """The running exiftool's process id, or None when none runs (health checks, tests)."""
        if self._process is None or self._process.poll() is not None:
            return None
        return self._process.pid

    def _ensure_started(self) -> subprocess.Popen[bytes]:
        if self._process is not None and self._process.poll() is None:
            return self._process
        try:
            self._process = subprocess.Popen(
                ["exiftool", "-stay_open", "True", "-@", "-"],  # noqa: S607 - PATH from _tool_env
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=_tool_env(),
                preexec_fn=_limit_child(self._limits.memory_mb),  # noqa: PLW1509 - setrlimit only
                start_new_session=True,
            )
        except FileNotFoundError as error:
            raise StageError(FailureReason.TOOL_CRASH, "exiftool is not installed") from error
        threading.Thread(target=self._drain_stderr, args=(self._process,), daemon=True).start()
        return self._process

    def _drain_stderr(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stderr is not None
        for line in process.stderr:
            with self._stderr_lock:
                self._stderr.append(line)

    def close(self) -> None:
        """Ask exiftool to exit, and kill it if it does not."""
        process, self._process = self._process, None
        if process is None:
            return
        try:
            assert process.stdin is not None
            process.stdin.write(b"-stay_open\nFalse\n")
            process.stdin.close()
            process.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def _kill(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def query(self, path: Path) -> dict[str, Any]:
        """exiftool's JSON for one file.

        Raises:
            StageError: tool_timeout (the process is killed and restarted next time),
                tool_crash when exiftool dies, corrupt_media when it prints no JSON.
        """
        process = self._ensure_started()
        assert process.stdin is not None and process.stdout is not None
        self._counter += 1
        self._oom_before = oom_kills()
        marker = f"{{ready{self._counter}}}".encode()
        with self._stderr_lock:
            self._stderr.clear()
        # No `--` here: exiftool reads every argument after `--` as a file name, `-execute`
        # included, so the request would never finish. A resolved path starts with "/" and
        # cannot be mistaken for an option, which is what `--` would have guarded against.
        request = [*self._common_args, str(path.resolve()), f"-execute{self._counter}"]
        # The clock starts before the request is sent: time this worker spent descheduled
        # after sending counts against the limit, as it does for a tool run to completion.
        deadline = time.monotonic() + self._limits.timeout_s
        try:
            process.stdin.write(("\n".join(request) + "\n").encode())
            process.stdin.flush()
        except BrokenPipeError as error:
            self._kill()
            raise StageError(FailureReason.TOOL_CRASH, "exiftool exited") from error
        output = self._read_until(process, marker, deadline)
        body = output[: output.rfind(marker)].strip()
        if not body:
            with self._stderr_lock:
                errors = b" ".join(self._stderr).decode("utf-8", "replace").strip()
            raise StageError(FailureReason.CORRUPT_MEDIA, f"exiftool read nothing: {errors[:300]}")
        try:
            parsed = json.loads(body)
        except json.JSONDecodeError as error:
            raise StageError(
                FailureReason.CORRUPT_MEDIA, "exiftool printed invalid JSON"
            ) from error
        if not isinstance(parsed, list) or not parsed or not isinstance(parsed[0], dict):
            raise StageError(FailureReason.CORRUPT_MEDIA, "exiftool printed no record")
        record: dict[str, Any] = parsed[0]
        return record

    def _read_until(
        self, process: subprocess.Popen[bytes], marker: bytes, deadline: float
    ) -> bytes:
        assert process.stdout is not None
        buffer = bytearray()
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            while not buffer.rstrip().endswith(marker):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not selector.select(remaining):
                    self._kill()
                    raise StageError(
                        FailureReason.TOOL_TIMEOUT,
                        f"exiftool exceeded {self._limits.timeout_s:g} s",
                    )
                chunk = os.read(process.stdout.fileno(), self._READ_CHUNK)
                if not chunk:
                    returncode = process.wait()
                    self._process = None
                    if returncode < 0:
                        raise _classify_signal("exiftool", returncode, b"", self._oom_before)
                    raise StageError(FailureReason.TOOL_CRASH, f"exiftool exited with {returncode}")
                buffer += chunk
        return bytes(buffer)
