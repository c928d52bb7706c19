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

from evidence.schema import NAME_MAX_CHARS, name_refusal
from workers.base import StageEnvironment

DEFAULT_DATA_DIR = Path("qarina-data")
#: The operator's name goes into custody actors after a command's prefix
#: (`qarina-reprocess@NAME`), which must still fit a name column.
OPERATOR_MAX_CHARS = NAME_MAX_CHARS - 40


def checked_operator(name: str) -> str:
    """The operator's name, refused before anything is written where a store would refuse it
    (PostgreSQL: past the column's length, or holding a NUL) or a log would be garbled by it.

    Raises:
        ValueError: empty, past OPERATOR_MAX_CHARS characters, or holding a control character.
    """
    if (refusal := name_refusal(name, OPERATOR_MAX_CHARS)) is not None:
        raise ValueError(f"QARINA_OPERATOR: {refusal}")
    return name


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
    #: Where assembled model weights live, when not in the data folder (QARINA_MODELS_DIR):
    #: a node's local disk, or one folder that many test data folders share.
    models_root: Path | None = None
    #: A CTranslate2 Whisper folder to use instead of the packaged base (QARINA_WHISPER_MODEL).
    whisper_model: Path | None = None
    #: `auto`, `cpu` or `cuda` (QARINA_WHISPER_DEVICE).
    whisper_device: str = "auto"
    #: `auto`, `ctranslate2` or `torch` (QARINA_WHISPER_ENGINE): auto takes PyTorch only where
    #: CTranslate2 has no CUDA but PyTorch has, or for a Hugging Face checkpoint.
    whisper_engine: str = "auto"
    #: An ISO code, or `auto` to detect and record the language (QARINA_LANGUAGE).
    transcript_language: str = "ar"
    #: Review pages show every picture as a blurred greyscale thumbnail until a reviewer
    #: clicks it (QARINA_REVIEW_BLUR; "0", "false", "no" or "off" shows pictures clearly):
    #: repeated exposure to graphic material harms the staff who review it.
    review_blur: bool = True

    @property
    def blob_root(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def models_dir(self) -> Path:
        """Assembled model weights; by default on the shared root, so they are joined once."""
        return self.models_root or self.data_dir / "models"

    def stage_environment(self) -> StageEnvironment:
        return StageEnvironment(self.models_dir, self.whisper_device, self.whisper_engine)

    @property
    def index_dir(self) -> Path:
        """The near-duplicate index: derived from the store, rebuilt when missing."""
        return self.data_dir / "index"

    @classmethod
    def from_env(cls, data_dir: Path | None = None, ray_address: str | None = None) -> QarinaConfig:
        """Resolve `--data`/QARINA_DATA, QARINA_DB_URL, `--address`/RAY_ADDRESS, QARINA_OPERATOR,
        QARINA_BENCH_PG_URL, QARINA_MATCH_THRESHOLD, QARINA_MATCH_MIN_QUALITY, QARINA_MODELS_DIR,
        QARINA_WHISPER_MODEL, QARINA_WHISPER_DEVICE, QARINA_WHISPER_ENGINE, QARINA_LANGUAGE,
        QARINA_REVIEW_BLUR.

        Raises:
            ValueError: QARINA_OPERATOR is not a name the store can keep (`checked_operator`).
        """
        whisper_model = os.environ.get("QARINA_WHISPER_MODEL")
        models_root = os.environ.get("QARINA_MODELS_DIR")
        data = (data_dir or Path(os.environ.get("QARINA_DATA", str(DEFAULT_DATA_DIR)))).resolve()
        url = os.environ.get("QARINA_DB_URL") or f"sqlite:///{data / 'qarina.sqlite3'}"
        return cls(
            data_dir=data,
            db_url=url,
            ray_address=ray_address or os.environ.get("RAY_ADDRESS") or None,
            operator=checked_operator(os.environ.get("QARINA_OPERATOR") or getpass.getuser()),
            bench_pg_url=os.environ.get("QARINA_BENCH_PG_URL") or None,
            match_threshold=int(os.environ.get("QARINA_MATCH_THRESHOLD") or 31),
            match_min_quality=int(os.environ.get("QARINA_MATCH_MIN_QUALITY") or 50),
            models_root=Path(models_root).resolve() if models_root else None,
            whisper_model=Path(whisper_model).resolve() if whisper_model else None,
            whisper_device=os.environ.get("QARINA_WHISPER_DEVICE") or "auto",
            whisper_engine=os.environ.get("QARINA_WHISPER_ENGINE") or "auto",
            transcript_language=os.environ.get("QARINA_LANGUAGE") or "ar",
            review_blur=(os.environ.get("QARINA_REVIEW_BLUR") or "1").strip().lower()
            not in {"0", "false", "no", "off"},
        )

    def with_overrides(self, **changes: object) -> QarinaConfig:
        return replace(self, **changes)  # type: ignore[arg-type]
