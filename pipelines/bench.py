"""Benchmarks for hardware planners: `qarina bench ingest | photos | backlog`.

Planners size clusters from these numbers ("how many nodes clear 2 million items in 30
days?"), so every benchmark follows the same rules, on purpose:

- It measures against a named peer *in the same run* (`openssl dgst`, `dd`, the sequential
  runner) and reports the ratio: absolute MB/s or items/s mean little across machines, a ratio
  to a well-known tool on the same machine, cache state and disk does not.
- It repeats what it can, reports the median, and keeps every run in the JSON.
- It records the machine (CPU model, cores, RAM, the data folder's disk and file system,
  Python, Ray) next to the numbers, because a figure without its machine cannot be compared.
- Generated data lives in a temporary folder inside the data folder (the disk being
  measured), is never timed, and is removed afterwards.

Each benchmark writes its JSON to `output` (parents created), prints a short summary to
stderr, and returns the same dict.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np
import piexif
import ray
import sqlalchemy as sa

from evidence import jobs as jobq
from evidence import records
from evidence.blobs import BlobStore, StoredBlob
from evidence.db import utc_now
from evidence.schema import items as items_table
from evidence.schema import jobs as jobs_table
from evidence.schema import results as results_table
from evidence.store import Acquisition, Store
from pipelines import samples
from pipelines.config import QarinaConfig
from pipelines.ingest import ingest_paths
from pipelines.plan import Plan
from pipelines.ray_runtime import RayExecutor, start_ray
from pipelines.runner import Executor, SequentialExecutor, run_queue

MIB = 1024 * 1024
#: Throughput is reported in decimal megabytes, as disks and `dd` report it.
MB = 1_000_000
#: tmpfs on Linux: an ingest target with no disk behind it, to separate CPU cost from disk speed.
_TMPFS = Path("/dev/shm")  # noqa: S108 - a private mkdtemp folder is created inside it
_WRITE_CHUNK = 8 * MIB

#: 12 MP, the size of a typical phone photo.
PHOTO_SIZE = (4000, 3000)
#: Distinct base images rendered per photo run; every file is then made unique by its EXIF.
#: Rendering a 12 MP image takes seconds, splicing a new EXIF block into it milliseconds.
_PHOTO_BASES = 4
_DAMASCUS = dt.timezone(dt.timedelta(hours=3))
_DEVICES = (("Samsung", "SM-A515F"), ("Apple", "iPhone 11"), ("Xiaomi", "Redmi Note 8"))

#: Items registered one at a time through `Store.register` (what ingest does), the rest of the
#: backlog is inserted in bulk.
_REGISTER_SAMPLE = 2_000
_BULK_BATCH = 5_000
_LEASE_LIMIT = 16
_LEASE_CALLS = 200
_CYCLE_JOBS = 5_000
_STATUS_CALLS = 7
_STATUS_BUDGET_S = 1.0
_INGEST_TARGET_RATIO = 0.5


# --- shared helpers ----------------------------------------------------------------------------


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def _percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile: a value that was actually measured, never an interpolation."""
    ordered = sorted(values)
    rank = max(1, round(fraction * len(ordered) + 0.5))
    return float(ordered[min(rank, len(ordered)) - 1])


def _latency_ms(seconds: Sequence[float]) -> dict[str, Any]:
    """Median, p95 and max of a latency sample, in milliseconds."""
    return {
        "calls": len(seconds),
        "median_ms": round(_median(seconds) * 1000, 3),
        "p95_ms": round(_percentile(seconds, 0.95) * 1000, 3),
        "max_ms": round(max(seconds) * 1000, 3),
    }


def _timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def _tool(name: str) -> str:
    """The absolute path of a command-line tool, so the benchmark runs the binary it reports."""
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found on PATH: the benchmark needs it as its peer")
    return found


def _version(package: str) -> str | None:
    try:
        return importlib_metadata.version(package)
    except importlib_metadata.PackageNotFoundError:
        return None


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
        "ray": _version("ray"),
        "sqlalchemy": _version("sqlalchemy"),
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


def _finish(result: dict[str, Any], output: Path, headline: str) -> dict[str, Any]:
    """Write the JSON (creating its folder) and print the machine and the headline figures."""
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    print(_describe_machine(result["machine"]), file=sys.stderr)
    print(headline, file=sys.stderr)
    print(f"results written to {output}", file=sys.stderr)
    return result


@contextmanager
def _scratch(config: QarinaConfig) -> Iterator[Path]:
    """A temporary folder inside the data folder, so generated data sits on the measured disk."""
    config.data_dir.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="bench-", dir=config.data_dir))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _mb_per_s(size_bytes: int, seconds: float) -> float:
    return round(size_bytes / MB / seconds, 1)


# --- ingest ------------------------------------------------------------------------------------


def _write_random(path: Path, size_bytes: int) -> None:
    """Incompressible bytes, fsynced so their write-back never overlaps a timed run."""
    generator = np.random.default_rng()
    with path.open("wb") as handle:
        remaining = size_bytes
        while remaining:
            chunk = min(remaining, _WRITE_CHUNK)
            handle.write(generator.bytes(chunk))
            remaining -= chunk
        handle.flush()
        os.fsync(handle.fileno())


def _warm_cache(cat: str, path: Path) -> None:
    """Read the file once so every contender reads it from the page cache, not the disk."""
    subprocess.run([cat, "--", str(path)], stdout=subprocess.DEVNULL, check=True)


def _tmpfs_root(size_bytes: int) -> Path | None:
    """A private folder on /dev/shm when it exists and has room for a copy (plus slack)."""
    if not _TMPFS.is_dir():
        return None
    try:
        if shutil.disk_usage(_TMPFS).free < 2 * size_bytes:
            return None
        return Path(tempfile.mkdtemp(prefix="qarina-bench-", dir=_TMPFS))
    except OSError:
        return None


def _put_fresh(root: Path, source: Path) -> tuple[float, StoredBlob]:
    """Time one `BlobStore.put` into an empty blob root; deleting it afterwards is not timed."""
    store = BlobStore(root)
    started = time.perf_counter()
    blob = store.put(source)
    elapsed = time.perf_counter() - started
    shutil.rmtree(root)
    return elapsed, blob


def _hashlib_pass(source: Path) -> str:
    """hashlib alone over the file, in 8 MiB reads: the CPU floor of ingest's own hashing."""
    digest = hashlib.sha256()
    with source.open("rb", buffering=0) as handle:
        while chunk := handle.read(_WRITE_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _ingest_round(
    source: Path, scratch: Path, tmpfs: Path | None, tools: dict[str, str], index: int
) -> dict[str, Any]:
    """One run of every contender on the same cached file, back to back."""
    size = source.stat().st_size
    _warm_cache(tools["cat"], source)
    started = time.perf_counter()
    openssl = subprocess.run(
        [tools["openssl"], "dgst", "-sha256", "-r", str(source)],
        capture_output=True,
        check=True,
        text=True,
    )
    openssl_s = time.perf_counter() - started
    openssl_sha = openssl.stdout.split()[0].lower()

    started = time.perf_counter()
    hashlib_sha = _hashlib_pass(source)
    hashlib_s = time.perf_counter() - started

    disk_s, blob = _put_fresh(scratch / f"blobs-{index}", source)

    copy = scratch / f"dd-{index}.bin"
    dd_s = _timed(
        lambda: subprocess.run(
            [tools["dd"], f"if={source}", f"of={copy}", "bs=8M", "conv=fsync", "status=none"],
            check=True,
        )
    )
    copy.unlink()

    timings: dict[str, float] = {
        "openssl_s": openssl_s,
        "hashlib_s": hashlib_s,
        "ingest_disk_s": disk_s,
        "dd_s": dd_s,
    }
    if tmpfs is not None:
        timings["ingest_tmpfs_s"], _ = _put_fresh(tmpfs / f"blobs-{index}", source)
    run: dict[str, Any] = {name: round(seconds, 4) for name, seconds in timings.items()}
    run.update(
        {
            name.removesuffix("_s") + "_mb_per_s": _mb_per_s(size, seconds)
            for name, seconds in timings.items()
        }
    )
    run["digests_agree"] = openssl_sha == hashlib_sha == blob.sha256
    return run


def _ratio(runs: list[dict[str, Any]], numerator: str, denominator: str) -> float:
    """Median over runs of the per-run throughput ratio: each pair measured moments apart."""
    return round(_median([run[numerator] / run[denominator] for run in runs]), 3)


def bench_ingest(config: QarinaConfig, size_mib: int, runs: int, output: Path) -> dict[str, Any]:
    """Ingest (`BlobStore.put`: hash, copy, read back, fsync) against `openssl dgst -sha256`.

    The peers, all reading the same file from the page cache:
    - `openssl dgst -sha256`: hashing only, the speed a careful operator would expect;
    - `dd ... conv=fsync`: the disk's own write+fsync speed, the floor of any durable copy;
    - hashlib alone in this process: the CPU cost of the hashing ingest itself does;
    - the same `put` into a blob root on tmpfs: ingest's CPU cost without the disk.

    On a disk slower than SHA-256 the on-disk ratio to openssl is bounded by the disk; the
    tmpfs ratio says what ingest costs by itself. Both are reported, not explained away.
    """
    if size_mib < 1 or runs < 1:
        raise ValueError("size_mib and runs must be at least 1")
    tools = {name: _tool(name) for name in ("openssl", "dd", "cat")}
    size = size_mib * MIB
    with _scratch(config) as scratch:
        machine = machine_info(scratch)
        source = scratch / "source.bin"
        _write_random(source, size)
        tmpfs = _tmpfs_root(size)
        try:
            measured = [
                _ingest_round(source, scratch, tmpfs, tools, index) for index in range(runs)
            ]
        finally:
            if tmpfs is not None:
                shutil.rmtree(tmpfs, ignore_errors=True)
    contenders = ["openssl", "hashlib", "ingest_disk", "dd"] + (["ingest_tmpfs"] if tmpfs else [])
    medians = {
        name: {
            "seconds": round(_median([run[f"{name}_s"] for run in measured]), 4),
            "mb_per_s": round(_median([run[f"{name}_mb_per_s"] for run in measured]), 1),
        }
        for name in contenders
    }
    ratios = {
        "ingest_disk_to_openssl": _ratio(measured, "ingest_disk_mb_per_s", "openssl_mb_per_s"),
        "ingest_disk_to_dd": _ratio(measured, "ingest_disk_mb_per_s", "dd_mb_per_s"),
        "dd_to_openssl": _ratio(measured, "dd_mb_per_s", "openssl_mb_per_s"),
        "ingest_disk_to_hashlib": _ratio(measured, "ingest_disk_mb_per_s", "hashlib_mb_per_s"),
    }
    if tmpfs is not None:
        ratios["ingest_tmpfs_to_openssl"] = _ratio(
            measured, "ingest_tmpfs_mb_per_s", "openssl_mb_per_s"
        )
        ratios["ingest_tmpfs_to_hashlib"] = _ratio(
            measured, "ingest_tmpfs_mb_per_s", "hashlib_mb_per_s"
        )
    result: dict[str, Any] = {
        "benchmark": "ingest",
        "machine": machine,
        "params": {"size_mib": size_mib, "size_bytes": size, "runs": runs, "mb": "10^6 bytes"},
        "peers": {
            "openssl": subprocess.run(
                [tools["openssl"], "version"], capture_output=True, text=True, check=True
            ).stdout.strip(),
            "dd": f"{tools['dd']} bs=8M conv=fsync",
            "tmpfs": str(_TMPFS) if tmpfs is not None else None,
        },
        "median": medians,
        "ratios": ratios,
        "target": {
            "ingest_to_openssl": _INGEST_TARGET_RATIO,
            "met_on_disk": ratios["ingest_disk_to_openssl"] >= _INGEST_TARGET_RATIO,
            "met_on_tmpfs": (
                ratios["ingest_tmpfs_to_openssl"] >= _INGEST_TARGET_RATIO if tmpfs else None
            ),
            # When dd itself is slower than the target, no durable copy on this disk can meet it.
            "disk_allows_target": ratios["dd_to_openssl"] >= _INGEST_TARGET_RATIO,
        },
        "all_digests_agree": all(run["digests_agree"] for run in measured),
        "runs": measured,
    }
    tmpfs_text = (
        f", tmpfs {medians['ingest_tmpfs']['mb_per_s']} MB/s"
        f" (x{ratios['ingest_tmpfs_to_openssl']} of openssl)"
        if tmpfs
        else ""
    )
    headline = (
        f"ingest {medians['ingest_disk']['mb_per_s']} MB/s on disk"
        f" (x{ratios['ingest_disk_to_openssl']} of openssl {medians['openssl']['mb_per_s']} MB/s,"
        f" x{ratios['ingest_disk_to_dd']} of dd {medians['dd']['mb_per_s']} MB/s){tmpfs_text}"
    )
    return _finish(result, output, headline)


# --- photos ------------------------------------------------------------------------------------


def _unique_exif(index: int) -> bytes:
    """A phone-like EXIF block whose time, place and description differ for every file."""
    make, model = _DEVICES[index % len(_DEVICES)]
    taken = dt.datetime(2024, 3, 12, 8, 0, tzinfo=_DAMASCUS) + dt.timedelta(seconds=37 * index)
    gps = (36.2021 + index * 1e-4, 37.1343 - index * 1e-4, 390.0 + index % 50)
    exif = piexif.load(samples.exif_bytes(make=make, model=model, datetime_original=taken, gps=gps))
    exif["0th"][piexif.ImageIFD.ImageDescription] = f"qarina bench photo {index:06d}".encode()
    return bytes(piexif.dump(exif))


def make_photos(folder: Path, count: int, size: tuple[int, int] = PHOTO_SIZE) -> dict[str, Any]:
    """`count` distinct JPEGs with EXIF and GPS: a few rendered bases, each file re-stamped.

    Every file has distinct bytes (its own EXIF), so each is a new item, while rendering stays
    at a few seconds in all. Returns what was made, for the report.
    """
    folder.mkdir(parents=True, exist_ok=True)
    bases_dir = folder.parent / f"{folder.name}-bases"
    bases_dir.mkdir(exist_ok=True)
    started = time.perf_counter()
    bases = [
        samples.photo(bases_dir / f"base-{seed}.jpg", size=size, seed=seed).read_bytes()
        for seed in range(min(count, _PHOTO_BASES))
    ]
    shutil.rmtree(bases_dir)
    total = 0
    for index in range(count):
        target = folder / f"IMG_{index:06d}.jpg"
        piexif.insert(_unique_exif(index), bases[index % len(bases)], str(target))
        total += target.stat().st_size
    return {
        "count": count,
        "width": size[0],
        "height": size[1],
        "distinct_bases": len(bases),
        "bytes_total": total,
        "generation_s": round(time.perf_counter() - started, 2),
    }


def _stage_work(store: Store) -> dict[str, dict[str, float]]:
    """Per stage: results and the sum of their `duration_s` (time inside the stage itself)."""
    work: dict[str, dict[str, float]] = {}
    with store.database.reader.connect() as connection:
        rows = connection.execute(sa.select(results_table.c.stage, results_table.c.provenance))
        for stage, provenance in rows:
            entry = work.setdefault(stage, {"results": 0, "duration_s_sum": 0.0})
            entry["results"] += 1
            entry["duration_s_sum"] += float(provenance.get("duration_s", 0.0))
    for entry in work.values():
        entry["duration_s_sum"] = round(entry["duration_s_sum"], 3)
    return work


def _completion(store: Store, count: int) -> dict[str, Any]:
    """Did every item end done in every stage? A benchmark of failed items measures nothing."""
    report = store.status()
    stages = {stage.stage: stage.counts for stage in report.stages}
    all_done = (
        report.items == count
        and report.open_jobs == 0
        and not report.failures_by_reason
        and bool(stages)
        and all(
            set(counts) == {jobq.DONE} and counts[jobq.DONE] == count for counts in stages.values()
        )
    )
    return {
        "items": report.items,
        "stages": stages,
        "failures_by_reason": report.failures_by_reason,
        "all_done": all_done,
    }


def _photo_run(
    config: QarinaConfig, scratch: Path, photos: Path, count: int, *, use_ray: bool
) -> dict[str, Any]:
    """Ingest the photos into a fresh SQLite store, then process the queue to the end."""
    name = "ray" if use_ray else "sequential"
    data = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=scratch))
    run_config = config.with_overrides(
        data_dir=data, db_url=f"sqlite:///{data / 'qarina.sqlite3'}", ray_address=None
    )
    plan = Plan.default()
    store = Store.open(run_config.db_url, run_config.blob_root)
    started_ray = False
    try:
        started = time.perf_counter()
        intake = ingest_paths(store, plan, run_config, [photos], source="bench-photos")
        ingest_s = time.perf_counter() - started
        startup_s = 0.0
        executor: Executor
        if use_ray:
            started_ray = not ray.is_initialized()
            # The embedded default, as `qarina run` starts it: a private local instance.
            startup_s = _timed(lambda: start_ray(None))
            executor = RayExecutor(plan, run_config)
        else:
            executor = SequentialExecutor(plan, run_config)
        try:
            summary = run_queue(store, plan, executor, run_config)
        finally:
            executor.close()
        processing_s = summary.wall_s
        completion = _completion(store, count)
        work = _stage_work(store)
    finally:
        store.close()
        if started_ray:
            ray.shutdown()
        shutil.rmtree(data, ignore_errors=True)
    stage_work_s = sum(entry["duration_s_sum"] for entry in work.values())
    wall_s = ingest_s + startup_s + processing_s
    return {
        "runner": name,
        "ray_started_here": started_ray if use_ray else None,
        "new_items": intake.new_items,
        "ingest_s": round(ingest_s, 3),
        "ray_startup_s": round(startup_s, 3),
        "processing_s": round(processing_s, 3),
        "wall_s": round(wall_s, 3),
        "wall_excl_startup_s": round(ingest_s + processing_s, 3),
        "items_per_s": round(count / wall_s, 2),
        "items_per_s_excl_startup": round(count / (ingest_s + processing_s), 2),
        "ingest_items_per_s": round(count / ingest_s, 2),
        "processing_items_per_s": round(count / processing_s, 2),
        "jobs_committed": summary.committed,
        "jobs_failed": summary.failed,
        "stage_work": work,
        "stage_work_s": round(stage_work_s, 3),
        # Above 1 means stages ran in parallel; the rest up to 1 is driver, store and transport.
        "stage_work_per_processing_s": round(stage_work_s / processing_s, 3),
        "completion": completion,
    }


def _overheads(ray_run: dict[str, Any], sequential: dict[str, Any]) -> dict[str, float]:
    extra = ray_run["processing_s"] - sequential["processing_s"]
    return {
        "incl_startup": round((extra + ray_run["ray_startup_s"]) / ray_run["wall_s"], 3),
        "excl_startup": round(extra / ray_run["wall_excl_startup_s"], 3),
    }


def _warm_up(config: QarinaConfig, scratch: Path) -> None:
    """Process one photo untimed, so neither contender pays for cold imports and tool caches."""
    photos = scratch / "warm-up"
    make_photos(photos, 1, (640, 480))
    _photo_run(config, scratch, photos, 1, use_ray=False)
    shutil.rmtree(photos)


def bench_photos(
    config: QarinaConfig,
    count: int,
    output: Path,
    *,
    runs: int = 3,
    size: tuple[int, int] = PHOTO_SIZE,
) -> dict[str, Any]:
    """End-to-end photo throughput (ingest + probe + metadata), Ray against sequential.

    Each round ingests the same generated JPEGs into two fresh SQLite data folders and
    processes one on a private local Ray instance and one with the sequential runner; rounds
    alternate which goes first so neither always meets the warmer cache. Ray's startup
    (`ray.init`) is timed apart from its processing, and "Ray overhead" is the extra time the
    Ray run spent processing, as a share of its wall time:

        (ray_processing_s [+ ray_startup_s] - sequential_processing_s) / ray_wall_s

    Negative when Ray's parallelism wins. The per-stage sums of `duration_s` from the stored
    provenance show how much of the processing wall time was stage work at all.
    """
    if count < 1 or runs < 1:
        raise ValueError("count and runs must be at least 1")
    with _scratch(config) as scratch:
        machine = machine_info(scratch)
        photos = scratch / "photos"
        generated = make_photos(photos, count, size)
        _warm_up(config, scratch)
        rounds = []
        for index in range(runs):
            _warm_folder(photos)
            order = (True, False) if index % 2 == 0 else (False, True)
            measured: dict[str, Any] = {
                ("ray" if use_ray else "sequential"): _photo_run(
                    config, scratch, photos, count, use_ray=use_ray
                )
                for use_ray in order
            }
            measured["ray_overhead"] = _overheads(measured["ray"], measured["sequential"])
            measured["first"] = "ray" if order[0] else "sequential"
            rounds.append(measured)
    summary = _photo_summary(rounds)
    result: dict[str, Any] = {
        "benchmark": "photos",
        "machine": machine,
        "params": {"count": count, "runs": runs, "store": "sqlite", "ray_address": "local"},
        "generated": generated,
        "median": summary,
        "formulas": {
            "ray_overhead_incl_startup": "(ray.processing_s + ray.ray_startup_s"
            " - sequential.processing_s) / ray.wall_s",
            "ray_overhead_excl_startup": "(ray.processing_s - sequential.processing_s)"
            " / ray.wall_excl_startup_s",
            "wall_s": "ingest_s + ray_startup_s + processing_s",
        },
        "all_done": all(
            run[name]["completion"]["all_done"] for run in rounds for name in ("ray", "sequential")
        ),
        "runs": rounds,
    }
    headline = (
        f"photos: ray {summary['ray']['items_per_s']} items/s end to end"
        f" ({summary['ray']['items_per_s_excl_startup']} without startup),"
        f" sequential {summary['sequential']['items_per_s']} items/s;"
        f" ray overhead {summary['ray_overhead']['incl_startup']:+.1%} incl. startup,"
        f" {summary['ray_overhead']['excl_startup']:+.1%} excl."
    )
    return _finish(result, output, headline)


def _warm_folder(folder: Path) -> None:
    """Read every generated file once, so both runners ingest from the page cache."""
    for path in sorted(folder.iterdir()):
        path.read_bytes()


_PHOTO_FIELDS = (
    "ingest_s",
    "ray_startup_s",
    "processing_s",
    "wall_s",
    "items_per_s",
    "items_per_s_excl_startup",
    "processing_items_per_s",
    "stage_work_s",
    "stage_work_per_processing_s",
)


def _photo_summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {
        name: {
            field: round(_median([run[name][field] for run in rounds]), 4)
            for field in _PHOTO_FIELDS
        }
        for name in ("ray", "sequential")
    }
    for name in ("ray", "sequential"):
        stages = sorted({stage for run in rounds for stage in run[name]["stage_work"]})
        summary[name]["stage_work_by_stage_s"] = {
            stage: round(
                _median(
                    [
                        run[name]["stage_work"].get(stage, {}).get("duration_s_sum", 0.0)
                        for run in rounds
                    ]
                ),
                4,
            )
            for stage in stages
        }
    summary["ray_overhead"] = {
        key: round(_median([run["ray_overhead"][key] for run in rounds]), 4)
        for key in ("incl_startup", "excl_startup")
    }
    summary["speedup_ray_vs_sequential"] = {
        "end_to_end_incl_startup": round(
            _median([run["sequential"]["wall_s"] / run["ray"]["wall_s"] for run in rounds]), 3
        ),
        "processing_only": round(
            _median(
                [run["sequential"]["processing_s"] / run["ray"]["processing_s"] for run in rounds]
            ),
            3,
        ),
    }
    return summary


# --- backlog -----------------------------------------------------------------------------------


def _fake_sha(prefix: str, index: int) -> str:
    return hashlib.sha256(f"qarina-bench-{prefix}-{index}".encode()).hexdigest()


def _bulk_enqueue(store: Store, spec: records.JobSpec, count: int, max_attempts: int) -> float:
    """Insert `count` items with a queued first job each, in batches; returns the seconds taken.

    This is how a migration of an existing backlog would load the queue, not what ingest does
    (that is `Store.register`, measured separately). One in twenty jobs is urgent, so leasing
    meets a priority mix.
    """
    started = time.perf_counter()
    for first in range(0, count, _BULK_BATCH):
        now = utc_now()
        indexes = range(first, min(first + _BULK_BATCH, count))
        shas = [_fake_sha("bulk", index) for index in indexes]
        with store.database.writer.begin() as connection:
            connection.execute(
                sa.insert(items_table),
                [{"sha256": sha, "size_bytes": 4_000_000, "created_at": now} for sha in shas],
            )
            connection.execute(
                sa.insert(jobs_table),
                [
                    {
                        "sha256": sha,
                        "stage": spec.stage,
                        "stage_version": spec.stage_version,
                        "config_hash": spec.config_hash,
                        "state": jobq.QUEUED,
                        "priority": 5 if index % 20 == 0 else 0,
                        "max_attempts": max_attempts,
                        "created_at": now,
                        "updated_at": now,
                    }
                    for index, sha in zip(indexes, shas, strict=True)
                ],
            )
    return time.perf_counter() - started


def _register_sample(
    store: Store, spec: records.JobSpec, count: int, config: QarinaConfig
) -> list[float]:
    """`Store.register` one item at a time, as ingest does (the blob copy is not included)."""
    latencies = []
    for index in range(count):
        blob = StoredBlob(_fake_sha("register", index), 4_000_000, created=True)
        acquisition = Acquisition(
            source="bench-backlog",
            original_name=f"IMG_{index:06d}.jpg".encode(),
            original_path=f"/intake/bench/IMG_{index:06d}.jpg".encode(),
            operator=config.operator,
        )
        started = time.perf_counter()
        store.register(blob, acquisition, [spec], "qarina-bench", config.max_attempts)
        latencies.append(time.perf_counter() - started)
    return latencies


def _lease_latencies(store: Store, spec: records.JobSpec, ttl: dt.timedelta) -> list[float]:
    """Time `lease(limit=16)` calls on the full queue, then hand every lease back."""
    owner = f"bench-lease-{uuid.uuid4().hex[:8]}"
    latencies = []
    for _ in range(_LEASE_CALLS):
        started = time.perf_counter()
        leased = jobq.lease(store.database, owner, spec, _LEASE_LIMIT, ttl)
        latencies.append(time.perf_counter() - started)
        if not leased:
            break
    jobq.release_owners(store.database, [owner])
    return latencies


def _probe_like_success(
    job: records.LeasedJob, follow_ups: Sequence[records.JobSpec]
) -> records.Success:
    """An outcome shaped like a real probe result: a photo, with its metadata job to queue."""
    now = dt.datetime.now(dt.UTC).isoformat()
    return records.Success(
        data={
            "kind": "photo",
            "mime": "image/jpeg",
            "format": "jpeg",
            "size_bytes": 4_000_000,
            "width": 4000,
            "height": 3000,
            "duration_s": None,
            "has_video": False,
            "has_audio": False,
            "rotation": None,
            "flags": [],
            "ffprobe": None,
        },
        provenance={
            "stage": job.stage,
            "stage_version": job.stage_version,
            "config_hash": job.config_hash,
            "params": {"max_image_pixels": 200_000_000},
            "tools": {"ffprobe": "bench", "pillow": "bench"},
            "host": platform.node(),
            "worker_pid": os.getpid(),
            "started_at": now,
            "finished_at": now,
            "duration_s": 0.0,
        },
        item_kind="photo",
        follow_ups=follow_ups,
    )


def _lease_commit_cycle(
    store: Store, spec: records.JobSpec, follow_ups: Sequence[records.JobSpec], config: QarinaConfig
) -> dict[str, Any]:
    """Lease 16, commit 16 probe-like successes, repeat: the driver loop without the stages."""
    owner = f"bench-cycle-{uuid.uuid4().hex[:8]}"
    lease_times: list[float] = []
    commit_times: list[float] = []
    committed = 0
    while committed < _CYCLE_JOBS:
        started = time.perf_counter()
        leased = jobq.lease(store.database, owner, spec, _LEASE_LIMIT, config.lease_ttl)
        lease_times.append(time.perf_counter() - started)
        if not leased:
            break
        outcomes: list[tuple[records.LeasedJob, records.Outcome]] = [
            (job, _probe_like_success(job, follow_ups)) for job in leased
        ]
        started = time.perf_counter()
        report = jobq.commit(store.database, outcomes, f"qarina-bench@{owner}")
        commit_times.append(time.perf_counter() - started)
        committed += report.committed
    total = sum(lease_times) + sum(commit_times)
    return {
        "jobs_committed": committed,
        "batch_size": _LEASE_LIMIT,
        "seconds": round(total, 3),
        "jobs_per_s": round(committed / total, 1) if total else None,
        "lease_share": round(sum(lease_times) / total, 3) if total else None,
        "lease_latency": _latency_ms(lease_times),
        "commit_latency_per_batch": _latency_ms(commit_times) if commit_times else None,
        "follow_ups_per_job": len(follow_ups),
    }


def _backlog_on(url: str, blob_root: Path, count: int, config: QarinaConfig) -> dict[str, Any]:
    """Every backlog measurement on one fresh database at `url`."""
    plan = Plan.default()
    probe = plan.spec("probe")
    follow_ups = plan.follow_ups("probe", "photo")
    sample = min(_REGISTER_SAMPLE, max(1, count // 10))
    bulk = count - sample
    store = Store.open(url, blob_root)
    try:
        enqueue_s = _bulk_enqueue(store, probe, bulk, config.max_attempts)
        register = _register_sample(store, probe, sample, config)
        queued = jobq.open_jobs(store.database, [probe])
        lease = _lease_latencies(store, probe, config.lease_ttl)
        cycle = _lease_commit_cycle(store, probe, follow_ups, config)
        status_times = [_timed(store.status) for _ in range(_STATUS_CALLS)]
        final = store.status()
        backend = store.database.writer.dialect.name
        with store.database.reader.connect() as connection:
            server = (
                sqlite3.sqlite_version
                if store.database.is_sqlite
                else str(connection.execute(sa.text("SELECT version()")).scalar_one())
            )
    finally:
        store.close()
    status = _latency_ms(status_times)
    return {
        "backend": backend,
        "server_version": server,
        "enqueue_bulk": {
            "jobs": bulk,
            "batch": _BULK_BATCH,
            "seconds": round(enqueue_s, 3),
            "jobs_per_s": round(bulk / enqueue_s, 1) if bulk else None,
        },
        "register_per_item": {
            "items": sample,
            "seconds": round(sum(register), 3),
            "items_per_s": round(sample / sum(register), 1),
            "latency": _latency_ms(register),
        },
        "queued_before_lease": queued,
        "lease_limit_16": _latency_ms(lease),
        "lease_commit_cycle": cycle,
        "status": {
            **status,
            "under_1s": status["median_ms"] < _STATUS_BUDGET_S * 1000,
            "jobs_in_table": sum(sum(stage.counts.values()) for stage in final.stages),
            "open_jobs": final.open_jobs,
        },
    }


@contextmanager
def _postgres_database(admin_url: str) -> Iterator[str]:
    """A database of our own on the server at `admin_url`, dropped afterwards whatever happens."""
    name = f"qarina_bench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
        try:
            yield sa.make_url(admin_url).set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as connection:
                connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def bench_backlog(
    config: QarinaConfig, jobs: int, output: Path, *, pg_url: str | None = None
) -> dict[str, Any]:
    """Enqueue, lease, commit and status timings with a backlog of `jobs` queued jobs.

    Runs on a fresh SQLite store in the data folder and, when `pg_url` (or the environment
    variable QARINA_BENCH_PG_URL) names a PostgreSQL server, also on a database created there
    for the run and dropped after it. The peer in the same run is the other path into the same
    table: bulk inserts (what the table can take) against `Store.register` (what ingest pays
    per item), and lease+commit cycles against lease alone.
    """
    if jobs < 2:
        raise ValueError("jobs must be at least 2")
    admin_url = pg_url if pg_url is not None else config.bench_pg_url
    backends: dict[str, Any] = {}
    with _scratch(config) as scratch:
        machine = machine_info(scratch)
        sqlite_url = f"sqlite:///{scratch / 'backlog.sqlite3'}"
        backends["sqlite"] = _backlog_on(sqlite_url, scratch / "blobs", jobs, config)
        if admin_url:
            with _postgres_database(admin_url) as url:
                backends["postgresql"] = _backlog_on(url, scratch / "blobs", jobs, config)
    result: dict[str, Any] = {
        "benchmark": "backlog",
        "machine": machine,
        "params": {
            "jobs": jobs,
            "register_sample": min(_REGISTER_SAMPLE, max(1, jobs // 10)),
            "lease_limit": _LEASE_LIMIT,
            "lease_calls": _LEASE_CALLS,
            "cycle_jobs": _CYCLE_JOBS,
            "status_calls": _STATUS_CALLS,
        },
        "backends": backends,
    }
    headline = "; ".join(
        f"{name}: enqueue {figures['enqueue_bulk']['jobs_per_s']} jobs/s,"
        f" register {figures['register_per_item']['items_per_s']} items/s,"
        f" lease p50 {figures['lease_limit_16']['median_ms']} ms"
        f" p95 {figures['lease_limit_16']['p95_ms']} ms,"
        f" lease+commit {figures['lease_commit_cycle']['jobs_per_s']} jobs/s,"
        f" status {figures['status']['median_ms']} ms"
        for name, figures in backends.items()
    )
    return _finish(result, output, headline)
