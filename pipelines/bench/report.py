"""What every benchmark shares: the machine it ran on, medians and latencies, the scratch
folder on the measured disk, and writing the JSON report.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipelines.config import QarinaConfig
from workers.tools import package_version


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile: a value that was actually measured, never an interpolation."""
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return float(ordered[min(rank, len(ordered)) - 1])


def latency_ms(seconds: Sequence[float]) -> dict[str, Any]:
    """Median, p95 and max of a latency sample, in milliseconds."""
    return {
        "calls": len(seconds),
        "median_ms": round(median(seconds) * 1000, 3),
        "p95_ms": round(percentile(seconds, 0.95) * 1000, 3),
        "max_ms": round(max(seconds) * 1000, 3),
    }


def fresh_data(config: QarinaConfig, scratch: Path, name: str) -> QarinaConfig:
    """`config` on a new data folder under `scratch`: an embedded SQLite store of its own and
    a private local Ray, so one measurement never meets another's data."""
    data = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=scratch))
    return config.with_overrides(
        data_dir=data, db_url=f"sqlite:///{data / 'qarina.sqlite3'}", ray_address=None
    )


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _unescape_mount(field: str) -> str:
    """/proc/self/mounts writes spaces and the like as octal escapes."""
    return field.encode().decode("unicode_escape")


def filesystem_of(path: Path) -> dict[str, Any]:
    """The mount holding `path`: device, file system type, size, and whether it spins."""
    resolved = path.resolve()
    best: tuple[str, str, str] | None = None
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        mounts = []
    for line in mounts:
        fields = line.split()
        if len(fields) < 3:
            continue
        device, mount_point, fs_type = fields[0], _unescape_mount(fields[1]), fields[2]
        longer = best is None or len(mount_point) >= len(best[1])
        if resolved.is_relative_to(mount_point) and longer:
            best = (device, mount_point, fs_type)
    usage = shutil.disk_usage(resolved)
    info: dict[str, Any] = {
        "path": str(resolved),
        "device": best[0] if best else None,
        "mount_point": best[1] if best else None,
        "fs_type": best[2] if best else None,
        "size_bytes": usage.total,
        "free_bytes": usage.free,
    }
    if best and best[0].startswith("/dev/"):
        block = best[0].removeprefix("/dev/")
        rotational = Path("/sys/class/block") / block / "queue" / "rotational"
        if not rotational.exists():  # a partition: the flag lives on its parent disk
            rotational = Path("/sys/class/block") / block / ".." / "queue" / "rotational"
        try:
            info["rotational"] = rotational.read_text().strip() == "1"
        except OSError:
            info["rotational"] = None
    return info


def machine_info(data_dir: Path) -> dict[str, Any]:
    """What a number was measured on: without it, figures from two machines look comparable."""
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    return {
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(affinity) if affinity is not None else os.cpu_count(),
        "ram_bytes": _ram_bytes(),
        "data_dir": filesystem_of(data_dir),
        "python": platform.python_version(),
        "ray": package_version("ray"),
        "sqlalchemy": package_version("sqlalchemy"),
        "sqlite": sqlite3.sqlite_version,
        "platform": platform.platform(),
        "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def _describe_machine(machine: dict[str, Any]) -> str:
    disk = machine["data_dir"]
    ram = machine["ram_bytes"]
    ram_text = f"{ram / 2**30:.1f} GiB RAM" if ram else "RAM unknown"
    return (
        f"machine: {machine['cpu_model']}, {machine['cpus_usable']} cores, {ram_text}; data on"
        f" {disk['device']} ({disk['fs_type']}, rotational={disk.get('rotational')});"
        f" python {machine['python']}, ray {machine['ray']}"
    )


def finish(result: dict[str, Any], output: Path, headline: str) -> dict[str, Any]:
    """Write the JSON (creating its folder) and print the machine and the headline figures."""
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    print(_describe_machine(result["machine"]), file=sys.stderr)
    print(headline, file=sys.stderr)
    print(f"results written to {output}", file=sys.stderr)
    return result


@contextmanager
def scratch_folder(config: QarinaConfig) -> Iterator[Path]:
    """A temporary folder inside the data folder, so generated data sits on the measured disk."""
    config.data_dir.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="bench-", dir=config.data_dir))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
