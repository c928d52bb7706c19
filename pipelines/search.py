"""`qarina search`: find spoken words in transcripts, written with or without diacritics.

The index catches up with newly stored transcripts before every search and at the end of
every run, so it never needs a separate job and can always be rebuilt from the results.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from evidence import search
from evidence.store import Store
from pipelines.plan import Plan
from workers.arabic import normalise
from workers.transcript import TranscriptResult, TranscriptStage


def update_search_index(store: Store, plan: Plan) -> int:
    """Index every transcript result under the plan's keys not indexed yet; how many results
    were added."""
    added = 0
    keys = plan.keys(TranscriptStage.name)
    while pending := search.pending_results(store.database, keys):
        for result in pending:
            segments = [
                search.IndexedSegment(
                    segment.start,
                    segment.end,
                    segment.text,
                    normalise(segment.text),
                    list(segment.flags),
                )
                for segment in TranscriptResult.from_json(result.data).segments
            ]
            search.index_result(store.database, result, segments)
        added += len(pending)
    return added


def search_transcripts(
    store: Store, plan: Plan, query: str, limit: int = 100
) -> list[dict[str, Any]]:
    """Segments of the transcripts the plan names whose words contain the query's words in
    order, as plain JSON data."""
    update_search_index(store, plan)
    hits = search.search(
        store.database, normalise(query), plan.keys(TranscriptStage.name), limit
    )
    return [asdict(hit) for hit in hits]
