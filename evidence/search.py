"""Full-text search over transcript segments, on SQLite (FTS5) and PostgreSQL (tsvector).

The index is derived from stored results and can be rebuilt from them; it is filled in pages
of results, each page in one transaction with its "indexed" markers, so a crash leaves either
a whole result indexed or none of it. Text arrives already normalised by the caller (the
Arabic rules live with the workers); this module only stores and matches words.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from evidence.db import Database
from evidence.records import ResultKey
from evidence.schema import results, transcript_segments, transcripts_indexed, under_keys


@dataclass(frozen=True)
class PendingResult:
    """A stored result not yet in the search index."""

    result_id: int
    sha256: str
    data: dict[str, Any]


@dataclass(frozen=True)
class IndexedSegment:
    start_s: float
    end_s: float
    text: str
    normalised: str
    flags: list[str]


@dataclass(frozen=True)
class SegmentHit:
    sha256: str
    start_s: float
    end_s: float
    text: str
    flags: list[str]


def pending_results(
    database: Database, keys: Collection[ResultKey], page: int = 200
) -> list[PendingResult]:
    """Successful results under `keys` whose segments are not indexed yet, oldest first."""
    indexed = sa.select(transcripts_indexed.c.result_id).where(
        transcripts_indexed.c.result_id == results.c.id
    )
    query = (
        sa.select(results.c.id, results.c.sha256, results.c.data)
        .where(under_keys(results, keys), results.c.status == "ok", ~sa.exists(indexed))
        .order_by(results.c.id)
        .limit(page)
    )
    with database.reader.connect() as connection:
        return [PendingResult(row.id, row.sha256, row.data) for row in connection.execute(query)]


def index_result(
    database: Database, result: PendingResult, segments: Sequence[IndexedSegment]
) -> None:
    """Add one result's segments and mark it indexed, in one transaction."""
    with database.writer.begin() as connection:
        for segment in segments:
            inserted = connection.execute(
                sa.insert(transcript_segments).values(
                    result_id=result.result_id,
                    sha256=result.sha256,
                    start_s=segment.start_s,
                    end_s=segment.end_s,
                    text=segment.text,
                    normalised=segment.normalised,
                    flags=segment.flags,
                )
            )
            if database.is_sqlite:
                (segment_id,) = inserted.inserted_primary_key or (None,)
                connection.execute(
                    sa.text("INSERT INTO transcript_fts (rowid, normalised) VALUES (:id, :words)"),
                    {"id": segment_id, "words": segment.normalised},
                )
        connection.execute(sa.insert(transcripts_indexed).values(result_id=result.result_id))


def search(
    database: Database, normalised_query: str, keys: Collection[ResultKey], limit: int = 100
) -> list[SegmentHit]:
    """Segments of results under `keys` containing the query's words as a phrase, in item
    and time order: a transcript made by a superseded model is not what search shows."""
    if not normalised_query.strip():
        return []
    if database.is_sqlite:
        # The normalised query holds only word characters and spaces: safe inside quotes.
        matching = sa.text(
            "transcript_segments.id IN"
            " (SELECT rowid FROM transcript_fts WHERE transcript_fts MATCH :phrase)"
        ).bindparams(phrase=f'"{normalised_query}"')
    else:
        matching = sa.text(
            "transcript_segments.search_vector @@ phraseto_tsquery('simple', :phrase)"
        ).bindparams(phrase=normalised_query)
    query = (
        sa.select(
            transcript_segments.c.sha256,
            transcript_segments.c.start_s,
            transcript_segments.c.end_s,
            transcript_segments.c.text,
            transcript_segments.c.flags,
        )
        .join(results, results.c.id == transcript_segments.c.result_id)
        .where(matching, under_keys(results, keys))
        .order_by(transcript_segments.c.sha256, transcript_segments.c.start_s)
        .limit(limit)
    )
    with database.reader.connect() as connection:
        return [
            SegmentHit(row.sha256, row.start_s, row.end_s, row.text, list(row.flags))
            for row in connection.execute(query)
        ]
