"""`qarina bench api`: many HTTP clients registering uploads at once on loopback, latency and
exactly-once, against the same registrations by one client and by `qarina ingest`.

The server is the API as `qarina serve` runs it (uvicorn, one process), started alone on a
fresh store with `python -m pipelines.api`, so no driver's work competes with intake. Clients
are threads of this process, each with one kept-alive connection, as an intake system's
workers would hold; latency is measured at the client, from the first byte sent to the last
byte of the answer read.

Every client also sends a tenth of its uploads a second time with the same Idempotency-Key,
as a client that timed out would; the store must then hold each upload exactly once.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import http.client
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote_from_bytes

import piexif
import sqlalchemy as sa

from evidence.schema import acquisitions
from evidence.store import Store
from pipelines.api.standalone import wait_until_serving
from pipelines.bench.report import (
    finish,
    latency_ms,
    machine_info,
    median,
    percentile,
    scratch_folder,
)
from pipelines.config import QarinaConfig
from pipelines.ingest import ingest_paths
from pipelines.local_cluster import free_port
from pipelines.plan import Plan
from pipelines.samples import photos
from workers.tools import package_version

#: A photo as messaging apps pass it on: 640x480, some 110 kB.
_PHOTO_SIZE = (640, 480)
_SOURCE = "bench-api"
#: Every tenth upload of a client is sent again with its key (a client's retry).
_RETRY_EVERY = 10
_TIMEOUT_S = 120.0
_START_TIMEOUT_S = 60.0


def make_uploads(folder: Path, count: int) -> list[Path]:
    """`count` distinct small JPEGs: one rendered picture, a different EXIF time and place in
    each (milliseconds each, where rendering a picture per file would dominate)."""
    folder.mkdir(parents=True, exist_ok=True)
    base = photos.photo(folder / "base.jpg", size=_PHOTO_SIZE, seed=7).read_bytes()
    (folder / "base.jpg").unlink()
    taken = dt.datetime(2024, 3, 12, 8, 0, tzinfo=dt.timezone(dt.timedelta(hours=3)))
    made = []
    for index in range(count):
        exif = photos.exif_bytes(
            datetime_original=taken + dt.timedelta(seconds=13 * index),
            gps=(36.2 + index * 1e-5, 37.1 - index * 1e-5, None),
        )
        path = folder / f"IMG-{index:06d}.jpg"
        piexif.insert(exif, base, str(path))
        made.append(path)
    return made


@dataclass(frozen=True)
class _Upload:
    key: str
    name: bytes
    content: bytes
    sha256: str


@dataclass
class _Outcome:
    """What one client saw."""

    latencies_s: list[float] = field(default_factory=list)
    retry_latencies_s: list[float] = field(default_factory=list)
    #: Per idempotency key: (sha256, acquisition id) of the first answer.
    registered: dict[str, tuple[str, int]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    wrong_hash: int = 0
    retries_not_replayed: int = 0


class _Client:
    """One kept-alive connection, reopened if the server closed it."""

    def __init__(self, port: int, token: str) -> None:
        self.port = port
        self.token = token
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=_TIMEOUT_S)

    def upload(self, upload: _Upload) -> tuple[float, int, dict[str, Any]]:
        """Seconds taken, status and answer of one upload."""
        try:
            return self._send(upload)
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            # A kept-alive connection the server closed: a client reconnects and sends
            # again, which the idempotency key makes safe.
            self.connection.close()
            self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=_TIMEOUT_S)
            return self._send(upload)

    def _send(self, upload: _Upload) -> tuple[float, int, dict[str, Any]]:
        headers = {
            "Authorization": f"Bearer {self.token}",
            "Content-Type": "application/octet-stream",
            "X-Original-Name": quote_from_bytes(upload.name),
            "Idempotency-Key": upload.key,
        }
        started = time.perf_counter()
        self.connection.request(
            "POST", f"/v1/items/upload?source={_SOURCE}", upload.content, headers
        )
        response = self.connection.getresponse()
        body = json.loads(response.read())
        return time.perf_counter() - started, response.status, body

    def close(self) -> None:
        self.connection.close()


def _client_work(
    port: int, token: str, mine: Sequence[_Upload], start: threading.Barrier, outcome: _Outcome
) -> None:
    client = _Client(port, token)
    try:
        start.wait()
        for upload in mine:
            seconds, status, body = client.upload(upload)
            if status != 200 or body.get("replayed"):
                outcome.errors.append(f"{status}: {body}")
                continue
            outcome.latencies_s.append(seconds)
            outcome.registered[upload.key] = (body["sha256"], body["acquisition_id"])
            outcome.wrong_hash += body["sha256"] != upload.sha256
        for upload in mine[::_RETRY_EVERY]:
            seconds, status, body = client.upload(upload)
            outcome.retry_latencies_s.append(seconds)
            first = outcome.registered.get(upload.key)
            same = first == (body.get("sha256"), body.get("acquisition_id"))
            outcome.retries_not_replayed += status != 200 or not body.get("replayed") or not same
    except Exception as error:  # a client's failure is a finding of the benchmark
        outcome.errors.append(type(error).__name__)
    finally:
        client.close()


@contextmanager
def _api_server(data: Path, tokens: Path) -> Iterator[int]:
    """The API alone on a fresh SQLite store in `data`, on a free loopback port."""
    port = free_port()
    env = dict(os.environ, QARINA_DB_URL=f"sqlite:///{data / 'qarina.sqlite3'}")
    process = subprocess.Popen(
        [
            sys.executable, "-m", "pipelines.api", "--data", str(data), "--port", str(port),
            "--tokens", str(tokens),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        try:
            wait_until_serving(process, port, _START_TIMEOUT_S)
        except RuntimeError as error:
            output = process.stderr.read().decode(errors="replace") if process.stderr else ""
            raise RuntimeError(f"{error}: {output.strip()}") from None
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()


def _stored_once(data: Path, uploads: Sequence[_Upload]) -> dict[str, Any]:
    """What the store holds: every upload exactly once, under its key."""
    store = Store.open(f"sqlite:///{data / 'qarina.sqlite3'}", data / "blobs")
    try:
        with store.database.reader.connect() as connection:
            rows = connection.execute(
                sa.select(acquisitions.c.sha256, acquisitions.c.intake_key).where(
                    acquisitions.c.source == _SOURCE
                )
            ).all()
    finally:
        store.close()
    by_sha: dict[str, int] = {}
    for row in rows:
        by_sha[row.sha256] = by_sha.get(row.sha256, 0) + 1
    expected = {upload.sha256 for upload in uploads}
    return {
        "acquisitions": len(rows),
        "lost": len(expected - set(by_sha)),
        "duplicated": sum(count - 1 for count in by_sha.values()),
        "unexpected": len(set(by_sha) - expected),
        "keys_distinct": len({row.intake_key for row in rows}),
    }


def _concurrent_round(
    data: Path, tokens: Path, token: str, uploads: Sequence[_Upload], clients: int
) -> dict[str, Any]:
    """All clients at once, each its share of the uploads, then its retries."""
    shares = [uploads[number::clients] for number in range(clients)]
    outcomes = [_Outcome() for _ in range(clients)]
    with _api_server(data, tokens) as port:
        barrier = threading.Barrier(clients + 1)
        threads = [
            threading.Thread(
                target=_client_work, args=(port, token, share, barrier, outcome), daemon=True
            )
            for share, outcome in zip(shares, outcomes, strict=True)
        ]
        for thread in threads:
            thread.start()
        barrier.wait()
        started = time.perf_counter()
        for thread in threads:
            thread.join()
        wall_s = time.perf_counter() - started
    latencies = [seconds for outcome in outcomes for seconds in outcome.latencies_s]
    retries = [seconds for outcome in outcomes for seconds in outcome.retry_latencies_s]
    return {
        "wall_s": round(wall_s, 3),
        "requests": len(latencies) + len(retries),
        "registrations_per_s": round(len(latencies) / wall_s, 1),
        "latency": _latency(latencies),
        "retry_latency": _latency(retries),
        "errors": [error for outcome in outcomes for error in outcome.errors][:20],
        "wrong_hash": sum(outcome.wrong_hash for outcome in outcomes),
        "retries_sent": len(retries),
        "retries_not_replayed": sum(outcome.retries_not_replayed for outcome in outcomes),
        "store": _stored_once(data, uploads),
    }


def _sequential_round(
    data: Path, tokens: Path, token: str, uploads: Sequence[_Upload]
) -> dict[str, Any]:
    """The same uploads by one client, one after the other."""
    outcome = _Outcome()
    with _api_server(data, tokens) as port:
        started = time.perf_counter()
        _client_work(port, token, uploads, threading.Barrier(1), outcome)
        wall_s = time.perf_counter() - started
    return {
        "wall_s": round(wall_s, 3),
        "registrations_per_s": round(len(outcome.latencies_s) / wall_s, 1),
        "latency": _latency(outcome.latencies_s),
        "errors": outcome.errors[:20],
        "store": _stored_once(data, uploads),
    }


def _ingest_round(config: QarinaConfig, data: Path, files: Sequence[Path]) -> dict[str, Any]:
    """The same files through `qarina ingest`'s code in this process: no HTTP at all."""
    data.mkdir()
    store = Store.open(f"sqlite:///{data / 'qarina.sqlite3'}", data / "blobs")
    try:
        started = time.perf_counter()
        summary = ingest_paths(store, Plan.default(settings=config), config, files, _SOURCE)
        wall_s = time.perf_counter() - started
    finally:
        store.close()
    return {
        "wall_s": round(wall_s, 3),
        "registrations_per_s": round(summary.new_items / wall_s, 1),
        "new_items": summary.new_items,
    }


def _latency(seconds: Sequence[float]) -> dict[str, Any] | None:
    if not seconds:
        return None
    return latency_ms(seconds) | {"p99_ms": round(percentile(seconds, 0.99) * 1000, 3)}


def bench_api(
    config: QarinaConfig, output: Path, clients: int = 50, uploads: int = 20, runs: int = 3
) -> dict[str, Any]:
    """`clients` concurrent clients uploading `uploads` photos each, `runs` times, each run
    on fresh stores, against one client sending the same uploads and `ingest_paths`.

    Reports per run and the median over runs: registrations per second, latency (median,
    p95, p99, max) at the client, and what the store holds (lost, duplicated).
    """
    if clients < 1 or uploads < 1 or runs < 1:
        raise ValueError("clients, uploads and runs must be at least 1")
    total = clients * uploads
    token = os.urandom(32).hex()
    with scratch_folder(config) as scratch:
        machine = machine_info(scratch)
        tokens = scratch / "tokens"
        tokens.touch(mode=0o600)
        tokens.write_text(f"bench {token}\n")
        started = time.perf_counter()
        files = make_uploads(scratch / "uploads", total)
        generation_s = time.perf_counter() - started
        loaded = []
        for number, path in enumerate(files):
            content = path.read_bytes()
            loaded.append(
                _Upload(
                    f"bench-{number:06d}",
                    os.fsencode(path.name),
                    content,
                    hashlib.sha256(content).hexdigest(),
                )
            )
        measured = []
        for run in range(runs):
            folder = scratch / f"run-{run}"
            measured.append(
                {
                    "concurrent": _concurrent_round(
                        folder / "concurrent", tokens, token, loaded, clients
                    ),
                    "sequential": _sequential_round(folder / "sequential", tokens, token, loaded),
                    "ingest": _ingest_round(config, folder / "ingest", files),
                }
            )
    summary = _summary(measured)
    result: dict[str, Any] = {
        "benchmark": "api",
        "machine": machine,
        "params": {
            "clients": clients,
            "uploads_per_client": uploads,
            "uploads": total,
            "retries_per_client": len(range(0, uploads, _RETRY_EVERY)),
            "runs": runs,
            "photo": {
                "width": _PHOTO_SIZE[0],
                "height": _PHOTO_SIZE[1],
                "mean_bytes": round(sum(len(u.content) for u in loaded) / total),
                "generation_s": round(generation_s, 2),
            },
            "store": "SQLite (WAL, synchronous=FULL) on the data folder's disk",
        },
        "server": {
            "how": "python -m pipelines.api: uvicorn, one process, the API alone",
            "fastapi": package_version("fastapi"),
            "uvicorn": package_version("uvicorn"),
        },
        "peers": {
            "sequential": "the same uploads by one client on one connection",
            "ingest": "the same files through ingest_paths (qarina ingest) in-process",
        },
        "median": summary,
        "exactly_once": all(
            run["concurrent"]["store"]["lost"] == run["concurrent"]["store"]["duplicated"] == 0
            and run["concurrent"]["store"]["acquisitions"] == total
            and not run["concurrent"]["errors"]
            and not run["concurrent"]["wrong_hash"]
            and not run["concurrent"]["retries_not_replayed"]
            for run in measured
        ),
        "runs": measured,
    }
    concurrent = summary["concurrent"]
    headline = (
        f"{clients} clients: {concurrent['registrations_per_s']} registrations/s, latency median"
        f" {concurrent['median_ms']} ms, p99 {concurrent['p99_ms']} ms"
        f" (x{summary['ratios']['concurrent_to_sequential']} of one client's throughput,"
        f" x{summary['ratios']['concurrent_to_ingest']} of ingest's);"
        f" exactly once: {result['exactly_once']}"
    )
    return finish(result, output, headline)


def _summary(measured: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over runs; ratios are per run (peers measured minutes apart at most)."""

    def over_runs(phase: str, *path: str) -> float:
        values = []
        for run in measured:
            value: Any = run[phase]
            for step in path:
                value = value[step]
            values.append(float(value))
        return round(median(values), 3)

    def ratio(numerator: str, denominator: str) -> float:
        return round(
            median(
                [
                    run[numerator]["registrations_per_s"] / run[denominator]["registrations_per_s"]
                    for run in measured
                ]
            ),
            3,
        )

    return {
        "concurrent": {
            "registrations_per_s": over_runs("concurrent", "registrations_per_s"),
            "median_ms": over_runs("concurrent", "latency", "median_ms"),
            "p95_ms": over_runs("concurrent", "latency", "p95_ms"),
            "p99_ms": over_runs("concurrent", "latency", "p99_ms"),
            "max_ms": over_runs("concurrent", "latency", "max_ms"),
            "retry_median_ms": over_runs("concurrent", "retry_latency", "median_ms"),
        },
        "sequential": {
            "registrations_per_s": over_runs("sequential", "registrations_per_s"),
            "median_ms": over_runs("sequential", "latency", "median_ms"),
            "p99_ms": over_runs("sequential", "latency", "p99_ms"),
        },
        "ingest": {"registrations_per_s": over_runs("ingest", "registrations_per_s")},
        "ratios": {
            "concurrent_to_sequential": ratio("concurrent", "sequential"),
            "concurrent_to_ingest": ratio("concurrent", "ingest"),
            "sequential_to_ingest": ratio("sequential", "ingest"),
        },
    }
