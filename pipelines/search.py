"""`qarina search`: find spoken words in transcripts, written with or without diacritics.

The index catches up with newly stored transcripts before every search and at the end of
every run, so it never needs a separate job and can always be rebuilt from the results.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from evidence import search
from evidence.store import Store
from workers.arabic import normalise
from workers.transcript import TranscriptStage


def update_search_index(store: Store) -> int:
    """Index every transcript result not indexed yet; how many results were added."""
    added = 0
    while pending := search.pending_results(store.database, TranscriptStage.name):
        for result in pending:
            segments = [
                search.IndexedSegment(
                    float(segment["start"]),
                    float(segment["end"]),
                    segment["text"],
                    normalise(segment["text"]),
                    list(segment.get("flags", [])),
                )
                for segment in result.data.get("segments", [])
            ]
            search.index_result(store.database, result, segments)
        added += len(pending)
    return added


def search_transcripts(store: Store, query: str, limit: int = 100) -> list[dict[str, Any]]:
    """Segments whose words contain the query's words in order, as plain JSON data.

    The same words in two results of one item (say, Arabic forced and detected) are shown once.
    """
    update_search_index(store)
    hits = search.search(store.database, normalise(query), limit)
    unique = {(hit.sha256, hit.start_s, hit.end_s, hit.text): hit for hit in hits}
    return [asdict(hit) for hit in unique.values()]
