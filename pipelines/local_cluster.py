"""A multi-node Ray cluster on one machine, started with `ray start` as cluster.yaml starts
real nodes: a head that only coordinates, worker raylets with the CPU-node resource, token
authentication, node addresses on loopback. For tests and for `qarina bench cluster`.

Everything it starts runs under its own temporary folder, so stopping it kills exactly its
own processes (never another Ray on the machine, as `ray stop` would).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from workers.base import CPU_NODE

_RAY = str(Path(sys.executable).parent / "ray")
_START_TIMEOUT_S = 120


@dataclass(frozen=True)
class LocalCluster:
    """How to reach the cluster (`env` carries the token settings) and its worker raylets."""

    address: str
    env: dict[str, str]
    worker_raylets: list[int]


def free_port() -> int:
    """A TCP port free on loopback now (for a head node, or a metrics endpoint in a test)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _processes() -> Iterator[tuple[int, Path, bytes]]:
    """(pid, /proc folder, raw command line) of every process still there to be read."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            yield int(entry.name), entry, (entry / "cmdline").read_bytes()
        except OSError:
            continue


def _pids_mentioning(text: str, program: str = "") -> set[int]:
    """Processes whose command line contains `text` (and whose program path ends `program`)."""
    found = set()
    for pid, _, cmdline in _processes():
        argv = cmdline.split(b"\0")
        named = argv[0].decode(errors="replace").endswith(program)
        if named and any(text.encode() in arg for arg in argv):
            found.add(pid)
    return found


def stage_actor_pids(cluster: LocalCluster, busy: bool = False) -> list[int]:
    """Ray worker processes hosting a stage actor on this cluster (`busy`: running a batch
    now): titled after the actor and its running method by Ray, and holding the cluster's
    token path in their environment. Another Ray on the machine holds another, so a test or a
    soak that kills them never touches a cluster not its own."""
    title = b"ray::StageActor.run_batch" if busy else b"ray::StageActor"
    token = f"RAY_AUTH_TOKEN_PATH={cluster.env['RAY_AUTH_TOKEN_PATH']}".encode()
    found = []
    for pid, entry, cmdline in _processes():
        if not cmdline.startswith(title):
            continue
        with suppress(OSError):
            if token in (entry / "environ").read_bytes().split(b"\0"):
                found.append(pid)
    return found


def _stop(root: Path) -> None:
    pids = _pids_mentioning(str(root)) - {os.getpid()}
    for signum in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with suppress(ProcessLookupError):
                os.kill(pid, signum)
        time.sleep(1.0)


@contextmanager
def local_cluster(
    workers: int, cpus_per_worker: int, extra_env: Mapping[str, str] | None = None
) -> Iterator[LocalCluster]:
    """Start a head and `workers` raylets; stop every process of it on exit."""
    root = Path(tempfile.mkdtemp(prefix="qr-", dir="/tmp"))  # Unix socket paths are short
    token = root / "token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    env = {
        **os.environ,
        **(extra_env or {}),
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token),
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    env.pop("RAY_ADDRESS", None)
    port = free_port()
    common = ["--node-ip-address=127.0.0.1", "--disable-usage-stats"]
    try:
        subprocess.run(
            [_RAY, "start", "--head", f"--port={port}", "--num-cpus=0",
             "--include-dashboard=false", f"--temp-dir={root / 'ray'}", *common],
            env=env, check=True, capture_output=True, timeout=_START_TIMEOUT_S,
        )  # fmt: skip
        raylets = []
        for _ in range(workers):
            before = _pids_mentioning(str(root), "/raylet")
            subprocess.run(
                [_RAY, "start", f"--address=127.0.0.1:{port}", f"--num-cpus={cpus_per_worker}",
                 f"--resources={json.dumps({CPU_NODE: 1})}", *common],
                env=env, check=True, capture_output=True, timeout=_START_TIMEOUT_S,
            )  # fmt: skip
            (raylet,) = _pids_mentioning(str(root), "/raylet") - before
            raylets.append(raylet)
        yield LocalCluster(f"127.0.0.1:{port}", env, raylets)
    finally:
        _stop(root)
        shutil.rmtree(root, ignore_errors=True)
