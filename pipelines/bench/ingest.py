"""`qarina bench ingest`: ingest throughput against `openssl dgst -sha256`, `dd` and hashlib."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from evidence.blobs import BlobStore, StoredBlob
from pipelines.bench.report import finish, machine_info, median, scratch_folder, timed
from pipelines.config import QarinaConfig

MIB = 1024 * 1024
#: Throughput is reported in decimal megabytes, as disks and `dd` report it.
MB = 1_000_000
#: tmpfs on Linux: an ingest target with no disk behind it, to separate CPU cost from disk speed.
_TMPFS = Path("/dev/shm")  # noqa: S108 - a private mkdtemp folder is created inside it
_WRITE_CHUNK = 8 * MIB
_INGEST_TARGET_RATIO = 0.5


def _tool(name: str) -> str:
    """The absolute path of a command-line tool, so the benchmark runs the binary it reports."""
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found on PATH: the benchmark needs it as its peer")
    return found


def _mb_per_s(size_bytes: int, seconds: float) -> float:
    return round(size_bytes / MB / seconds, 1)


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
    dd_s = timed(
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
    return round(median([run[numerator] / run[denominator] for run in runs]), 3)


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
    with scratch_folder(config) as scratch:
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
            "seconds": round(median([run[f"{name}_s"] for run in measured]), 4),
            "mb_per_s": round(median([run[f"{name}_mb_per_s"] for run in measured]), 1),
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
    return finish(result, output, headline)
