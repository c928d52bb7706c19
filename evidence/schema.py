"""The evidence store's tables, in SQLAlchemy Core: one schema for SQLite and PostgreSQL.

Alembic migrations in `evidence/migrations` create exactly these tables; a test compares the
migrated database with this metadata so the two cannot drift apart.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import sqlalchemy as sa

from evidence.records import ResultKey

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
    }
)

SHA256 = sa.String(64)
#: The longest name an operator types (a source, a request reference, a reviewer) that the
#: name columns below hold; the CLI and the API refuse a longer one before anything is stored.
NAME_MAX_CHARS = 200
#: What such a name must match as a whole: one line without control characters (a newline
#: or a terminal escape has no place in a name that tables and custody show).
NAME_PATTERN = r"^[^\x00-\x1f\x7f]+$"


def name_refusal(value: str, max_chars: int = NAME_MAX_CHARS) -> str | None:
    """Why `value` cannot be a name (empty, past `max_chars`, a control character), or None.
    One rule for every place an operator's words become a name: the CLI's options, the
    operator's own name, the API's fields (by NAME_PATTERN)."""
    if not 1 <= len(value) <= max_chars:
        return f"a name of 1 to {max_chars} characters, not {len(value)}"
    if not re.match(NAME_PATTERN, value):
        return "a name without control characters (newlines, escapes)"
    return None


#: Timestamps are timezone-aware UTC everywhere; SQLite stores them as ISO text.
Timestamp = sa.DateTime(timezone=True)

items = sa.Table(
    "items",
    metadata,
    sa.Column("sha256", SHA256, primary_key=True),
    sa.Column("size_bytes", sa.BigInteger, nullable=False),
    # NULL until the probe stage has looked at the bytes; then photo | video | audio |
    # archive | other.
    sa.Column("kind", sa.String(16)),
    sa.Column("created_at", Timestamp, nullable=False),
)

acquisitions = sa.Table(
    "acquisitions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("sha256", SHA256, sa.ForeignKey("items.sha256"), nullable=False, index=True),
    sa.Column("source", sa.String(200), nullable=False),
    # File names are kept as the raw bytes the file system gave: they can be in any encoding
    # and are evidence themselves, so they are never decoded lossily nor written to logs.
    sa.Column("original_name", sa.LargeBinary, nullable=False),
    sa.Column("original_path", sa.LargeBinary, nullable=False),
    sa.Column("original_mtime", Timestamp),
    sa.Column("operator", sa.String(200), nullable=False),
    sa.Column("acquired_at", Timestamp, nullable=False),
    sa.Column("priority", sa.Integer, nullable=False, server_default="0"),
    sa.Column("request_ref", sa.String(200), index=True),
    # What makes an arrival happen once however often it is retried: a drop folder's file
    # seen again after a crash, an archive member registered again. NULL for plain ingests.
    sa.Column("intake_key", sa.String(300), unique=True),
)

#: A request for assistance: a named set of items (their acquisitions carry the reference)
#: with a priority its queued jobs take, and a deadline to report against.
requests = sa.Table(
    "requests",
    metadata,
    sa.Column("ref", sa.String(200), primary_key=True),
    sa.Column("priority", sa.Integer, nullable=False, server_default="0"),
    sa.Column("deadline", Timestamp),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("created_by", sa.String(200), nullable=False),
    sa.Column("updated_at", Timestamp, nullable=False),
)

#: Switches every driver and service reads before it leases (pause): in the store, so that
#: every node obeys the same one.
controls = sa.Table(
    "controls",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.JSON, nullable=False),
    sa.Column("updated_at", Timestamp, nullable=False),
    sa.Column("updated_by", sa.String(200), nullable=False),
)


def _stage_key() -> list[sa.Column[object]]:
    """(item, stage, version, options): what a job asks for and what its result is keyed by."""
    return [
        sa.Column("sha256", SHA256, sa.ForeignKey("items.sha256"), nullable=False),
        sa.Column("stage", sa.String(64), nullable=False),
        sa.Column("stage_version", sa.String(32), nullable=False),
        sa.Column("config_hash", sa.String(32), nullable=False),
    ]


def under_keys(table: sa.FromClause, keys: Iterable[ResultKey]) -> sa.ColumnElement[bool]:
    """Rows of `table` (jobs or results, or an alias of one) under any of these keys."""
    return sa.or_(
        sa.false(),
        *(
            sa.and_(
                table.c.stage == key.stage,
                table.c.stage_version == key.stage_version,
                table.c.config_hash == key.config_hash,
            )
            for key in keys
        ),
    )


jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    *_stage_key(),
    # queued -> leased -> done | failed (final reason) ; queued again on a retryable failure
    # until max_attempts, then dead; a queued job `qarina reprocess` replaces by one under
    # the current key is superseded (final, never leased).
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("priority", sa.Integer, nullable=False, server_default="0"),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("max_attempts", sa.Integer, nullable=False, server_default="3"),
    # Workers lost while the job ran alone: counted apart from attempts (migration 0007).
    sa.Column("worker_losses", sa.Integer, nullable=False, server_default="0"),
    sa.Column("lease_owner", sa.String(200)),
    sa.Column("lease_expires_at", Timestamp),
    # Incremented on every lease: a worker whose lease expired and was re-leased holds a stale
    # token, and its late commit is refused (the fencing token pattern).
    sa.Column("lease_token", sa.Integer, nullable=False, server_default="0"),
    sa.Column("error_reason", sa.String(32)),
    sa.Column("error_detail", sa.Text),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("updated_at", Timestamp, nullable=False),
    sa.Column("finished_at", Timestamp),
    sa.UniqueConstraint("sha256", "stage", "stage_version", "config_hash"),
    # Leasing takes the highest priority, oldest job of a state and key: one range scan;
    # status counts jobs per state and key from this index alone.
    sa.Index(
        "ix_jobs_lease_order",
        "state",
        "stage",
        "stage_version",
        "config_hash",
        sa.text("priority DESC"),
        "id",
    ),
    sa.Index("ix_jobs_finished_at", "finished_at"),
)

results = sa.Table(
    "results",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    *_stage_key(),
    # ok | skipped; failures live on the job and in custody, not here.
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("skip_reason", sa.String(64)),
    sa.Column("data", sa.JSON, nullable=False),
    sa.Column("data_sha256", SHA256, nullable=False),
    sa.Column("provenance", sa.JSON, nullable=False),
    sa.Column("created_at", Timestamp, nullable=False),
    # The idempotency key: the same job run twice, on any node, stores one result.
    sa.UniqueConstraint("sha256", "stage", "stage_version", "config_hash"),
)

artifacts = sa.Table(
    "artifacts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("sha256", SHA256, nullable=False, index=True),
    sa.Column("parent_sha256", SHA256, sa.ForeignKey("items.sha256"), nullable=False, index=True),
    sa.Column("result_id", sa.Integer, sa.ForeignKey("results.id"), nullable=False),
    sa.Column("stage", sa.String(64), nullable=False),
    sa.Column("role", sa.String(64), nullable=False),
    sa.Column("media_type", sa.String(100), nullable=False),
    sa.Column("size_bytes", sa.BigInteger, nullable=False),
    sa.Column("meta", sa.JSON, nullable=False),
    sa.UniqueConstraint("result_id", "sha256", "role"),
)

matches = sa.Table(
    "matches",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    # A pair is stored once, in order (a_sha256 < b_sha256), whichever item arrived first.
    sa.Column("a_sha256", SHA256, sa.ForeignKey("items.sha256"), nullable=False),
    sa.Column("b_sha256", SHA256, sa.ForeignKey("items.sha256"), nullable=False, index=True),
    # photo-photo | keyframe-photo | video-video: what was compared with what.
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("algorithm", sa.String(32), nullable=False),
    sa.Column("distance", sa.Float, nullable=False),
    # Seconds into a or b where the match was seen (a keyframe's time, a clip's start).
    sa.Column("a_time_s", sa.Float),
    sa.Column("b_time_s", sa.Float),
    # How it matched: hash variants and orientation, offsets, frames that agreed, threshold.
    sa.Column("details", sa.JSON, nullable=False),
    sa.Column("created_at", Timestamp, nullable=False),
    # Linking is idempotent: the matcher may meet the same pair again after a rebuild.
    sa.UniqueConstraint("a_sha256", "b_sha256", "kind"),
)

#: Items found inside an archive item: the path inside it (raw bytes, as the archive holds
#: it) and how deep (1: inside an archive that arrived as such), written with the result of
#: the expansion that found them.
archive_members = sa.Table(
    "archive_members",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("archive_sha256", SHA256, sa.ForeignKey("items.sha256"), nullable=False),
    sa.Column(
        "member_sha256", SHA256, sa.ForeignKey("items.sha256"), nullable=False, index=True
    ),
    sa.Column("path", sa.LargeBinary, nullable=False),
    sa.Column("depth", sa.Integer, nullable=False),
    sa.Column("result_id", sa.Integer, sa.ForeignKey("results.id"), nullable=False),
    sa.UniqueConstraint("archive_sha256", "path"),
)

custody_events = sa.Table(
    "custody_events",
    metadata,
    # Assigned by the writer as previous + 1 under the chain lock, so gaps are detectable.
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("at", Timestamp, nullable=False),
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("item_sha256", SHA256, index=True),
    sa.Column("stage", sa.String(64)),
    # Canonical JSON text (sorted keys), stored as text so the hashed bytes are the stored bytes.
    sa.Column("details", sa.Text, nullable=False),
    sa.Column("prev_hash", SHA256, nullable=False),
    sa.Column("event_hash", SHA256, nullable=False, unique=True),
)

#: Searchable transcript segments, derived from `transcript` results (rebuildable from them).
#: The full-text index itself is dialect-specific and lives outside this metadata: an FTS5
#: table `transcript_fts` on SQLite, a generated `search_vector` column with a GIN index on
#: PostgreSQL (migration 0003).
transcript_segments = sa.Table(
    "transcript_segments",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("result_id", sa.Integer, sa.ForeignKey("results.id"), nullable=False, index=True),
    sa.Column("sha256", SHA256, sa.ForeignKey("items.sha256"), nullable=False, index=True),
    sa.Column("start_s", sa.Float, nullable=False),
    sa.Column("end_s", sa.Float, nullable=False),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("normalised", sa.Text, nullable=False),
    sa.Column("flags", sa.JSON, nullable=False),
)

#: Results whose segments are in the search index, even when they had none (silence).
transcripts_indexed = sa.Table(
    "transcripts_indexed",
    metadata,
    sa.Column("result_id", sa.Integer, sa.ForeignKey("results.id"), primary_key=True),
)

#: Names the dialect-specific full-text index adds, which schema comparisons leave aside.
FULL_TEXT_NAMES = ("transcript_fts", "search_vector", "ix_transcript_segments_search")

#: Reviewers' labels (graphic | reviewed | not-relevant), one row per decision and never
#: overwritten: the newest is current. A label covers the item's whole near-duplicate
#: cluster, worked out from `matches` when read, so it is not stored per member.
reviews = sa.Table(
    "reviews",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("sha256", SHA256, sa.ForeignKey("items.sha256"), nullable=False, index=True),
    sa.Column("label", sa.String(32), nullable=False),
    sa.Column("reviewer", sa.String(200), nullable=False),
    sa.Column("note", sa.Text),
    sa.Column("at", Timestamp, nullable=False),
    sa.Column("custody_seq", sa.BigInteger, sa.ForeignKey("custody_events.seq"), nullable=False),
)
