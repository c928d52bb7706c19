"""Run-time configuration: the one place that reads environment variables.

Everything else receives a `QarinaConfig`; tests build one directly instead of patching the
environment.
"""

from __future__ import annotations

import datetime as dt
import getpass
import os
from dataclasses import dataclass, replace
from pathlib import Path

DEFAULT_DATA_DIR = Path("qarina-data")


@dataclass(frozen=True)
class QarinaConfig:
    data_dir: Path
    db_url: str
    ray_address: str | None = None
    operator: str = "unknown"
    #: A lease outlives a normal job many times over; a live driver renews it at a third of this.
    lease_ttl: dt.timedelta = dt.timedelta(minutes=5)
    max_attempts: int = 3
    #: A PostgreSQL server (admin URL) on which `qarina bench backlog` also runs, when set.
    bench_pg_url: str | None = None
    #: Files copied in at once: each waits on its own fsyncs, so a few overlap well on two cores.
    ingest_threads: int = 4
    #: Batches in flight per actor: one running, one waiting, so an actor never idles.
    batches_per_actor: int = 2
    #: Near-duplicate linking: PDQ distance at most this (0-32), hashes of quality under
    #: `match_min_quality` never matched (QARINA_MATCH_THRESHOLD, QARINA_MATCH_MIN_QUALITY).
    match_threshold: int = 31
    match_min_quality: int = 50

    @property
    def blob_root(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def index_dir(self) -> Path:
        """The near-duplicate index: derived from the store, rebuilt when missing."""
        return self.data_dir / "index"

    @classmethod
    def from_env(cls, data_dir: Path | None = None, ray_address: str | None = None) -> QarinaConfig:
        """Resolve `--data`/QARINA_DATA, QARINA_DB_URL, `--address`/RAY_ADDRESS, QARINA_OPERATOR,
        QARINA_BENCH_PG_URL, QARINA_MATCH_THRESHOLD, QARINA_MATCH_MIN_QUALITY."""
        data = (data_dir or Path(os.environ.get("QARINA_DATA", str(DEFAULT_DATA_DIR)))).resolve()
        url = os.environ.get("QARINA_DB_URL") or f"sqlite:///{data / 'qarina.sqlite3'}"
        return cls(
            data_dir=data,
            db_url=url,
            ray_address=ray_address or os.environ.get("RAY_ADDRESS") or None,
            operator=os.environ.get("QARINA_OPERATOR") or getpass.getuser(),
            bench_pg_url=os.environ.get("QARINA_BENCH_PG_URL") or None,
            match_threshold=int(os.environ.get("QARINA_MATCH_THRESHOLD") or 31),
            match_min_quality=int(os.environ.get("QARINA_MATCH_MIN_QUALITY") or 50),
        )

    def with_overrides(self, **changes: object) -> QarinaConfig:
        return replace(self, **changes)  # type: ignore[arg-type]
