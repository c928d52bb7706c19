"""Links between items that show the same picture: stored once per pair, never deleting either.

The matcher in `pipelines` decides what matches and what a stage's results mean; this module
only reads the results it needs as stored, in pages so a rebuild over millions of results
never holds them all, and records links with a custody event each, in the same transaction:
a link shown in court must say when and by whom (which matcher, which threshold) it was made.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from evidence import custody
from evidence.custody import CustodyEntry
from evidence.db import Database, utc_now
from evidence.records import ResultKey
from evidence.schema import acquisitions, items, matches, results, under_keys


@dataclass(frozen=True)
class StoredHashes:
    """One stored result of the hashing stage, as stored."""

    result_id: int
    sha256: str
    data: dict[str, Any]


@dataclass(frozen=True)
class Link:
    """A match between two items, in stored order (a_sha256 < b_sha256)."""

    a_sha256: str
    b_sha256: str
    kind: str
    algorithm: str
    distance: float
    a_time_s: float | None = None
    b_time_s: float | None = None
    details: dict[str, Any] = field(default_factory=dict)


def _current(keys: Collection[ResultKey]) -> sa.ColumnElement[bool]:
    """Successful results under any of these keys."""
    return sa.and_(under_keys(results, keys), results.c.status == "ok")


def hashes_after(
    database: Database,
    keys: Collection[ResultKey],
    after_id: int,
    page: int = 200,
) -> Iterator[list[StoredHashes]]:
    """Successful results under the current keys with ids above `after_id`, oldest first, a
    page at a time (a long video's result alone holds thousands of hashes).

    Only the current keys are read: after a change of version or options an item has two
    results, and indexing both would count its frames twice.
    """
    last = after_id
    while True:
        with database.reader.connect() as connection:
            rows = connection.execute(
                sa.select(results.c.id, results.c.sha256, results.c.data)
                .where(_current(keys), results.c.id > last)
                .order_by(results.c.id)
                .limit(page)
            ).all()
        if not rows:
            return
        yield [StoredHashes(row.id, row.sha256, row.data) for row in rows]
        last = rows[-1].id


def record(database: Database, links: Sequence[Link], actor: str) -> int:
    """Store new links with a custody event for each of their items; a pair already linked
    is left as it is.

    Returns how many links were new.
    """
    if not links:
        return 0
    now = utc_now()
    entries: list[CustodyEntry] = []
    new = 0
    with database.writer.begin() as connection:
        for link in links:
            inserted = connection.execute(
                database.insert(matches)
                .values(
                    a_sha256=link.a_sha256,
                    b_sha256=link.b_sha256,
                    kind=link.kind,
                    algorithm=link.algorithm,
                    distance=link.distance,
                    a_time_s=link.a_time_s,
                    b_time_s=link.b_time_s,
                    details=link.details,
                    created_at=now,
                )
                .on_conflict_do_nothing()
                .returning(matches.c.id)
            ).scalar()
            if inserted is None:
                continue
            new += 1
            # One event in each item's history: either may be the one shown in court.
            entries += [
                CustodyEntry(
                    actor=actor,
                    action="link",
                    item_sha256=sha256,
                    details={
                        "match_id": inserted,
                        "a_sha256": link.a_sha256,
                        "b_sha256": link.b_sha256,
                        "kind": link.kind,
                        "algorithm": link.algorithm,
                        "distance": link.distance,
                        "a_time_s": link.a_time_s,
                        "b_time_s": link.b_time_s,
                        "details": link.details,
                    },
                )
                for sha256 in (link.a_sha256, link.b_sha256)
            ]
        custody.append(connection, entries)
    return new


def results_data(
    database: Database, keys: Collection[ResultKey], shas: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """Per item among `shas`: the data of its successful result under the current `keys` (a
    plan names one key per kind, so an item has one), as stored: what it means is for the
    stage's own result type to say, not the store."""
    with database.reader.connect() as connection:
        rows = connection.execute(
            sa.select(results.c.sha256, results.c.data)
            .where(results.c.sha256.in_(set(shas)), _current(keys))
            .order_by(results.c.id)
        )
        return {sha256: data for sha256, data in rows}


def _link(row: sa.Row[Any]) -> Link:
    return Link(
        row.a_sha256,
        row.b_sha256,
        row.kind,
        row.algorithm,
        row.distance,
        row.a_time_s,
        row.b_time_s,
        row.details,
    )


def links_of(database: Database, sha256: str) -> list[Link]:
    """Every link that has `sha256` on either side."""
    with database.reader.connect() as connection:
        rows = connection.execute(
            sa.select(matches)
            .where(sa.or_(matches.c.a_sha256 == sha256, matches.c.b_sha256 == sha256))
            .order_by(matches.c.distance, matches.c.id)
        )
        return [_link(row) for row in rows]


_INVERSE_TURN = {"r90": "r270", "r270": "r90"}


def _turned(details: dict[str, Any]) -> dict[str, Any]:
    """Details seen from the other side: the offset negated (and, for a copy played at
    another speed, their time = speed x mine + offset solved for mine), per-side pairs
    swapped."""
    turned = dict(details)
    speed = turned.get("speed", 1.0)
    if "speed" in turned:
        turned["speed"] = round(1.0 / speed, 3)
    if "offset_s" in turned:
        turned["offset_s"] = round(-turned["offset_s"] / speed, 3)
    # A quarter turn one way is a quarter turn the other way back; flips undo themselves.
    if "orientation" in turned:
        turned["orientation"] = _INVERSE_TURN.get(turned["orientation"], turned["orientation"])
    for key in ("via", "sources"):
        if key in turned:
            turned[key] = list(turned[key])[::-1]
    return turned


def link_between(
    mine: str,
    other: str,
    kind: str,
    algorithm: str,
    distance: float,
    times: tuple[float | None, float | None],
    details: dict[str, Any],
) -> Link:
    """A link in stored order from one item's point of view; `times` are (mine, other)."""
    if mine < other:
        return Link(mine, other, kind, algorithm, distance, times[0], times[1], details)
    return Link(other, mine, kind, algorithm, distance, times[1], times[0], _turned(details))


def as_seen_from(link: Link, sha256: str) -> dict[str, Any]:
    """A link as one of its two items sees it: the other item, and times and offset turned so
    that `time_s` is in this item and `other_time_s` in the other."""
    mine_first = link.a_sha256 == sha256
    return {
        "other": link.b_sha256 if mine_first else link.a_sha256,
        "kind": link.kind,
        "algorithm": link.algorithm,
        "distance": link.distance,
        "time_s": link.a_time_s if mine_first else link.b_time_s,
        "other_time_s": link.b_time_s if mine_first else link.a_time_s,
        "details": dict(link.details) if mine_first else _turned(link.details),
    }


def all_links(database: Database) -> list[Link]:
    with database.reader.connect() as connection:
        return [_link(row) for row in connection.execute(sa.select(matches).order_by(matches.c.id))]


@dataclass(frozen=True)
class ItemSummary:
    """What a list of duplicates shows of an item: its kind and where its copies came from."""

    sha256: str
    kind: str | None
    acquisitions: int
    sources: list[str]


def summaries(database: Database, shas: Sequence[str] | None = None) -> dict[str, ItemSummary]:
    """Kind, acquisition count and distinct sources of the given items (all items when None).

    With `shas` None only items acquired more than once are returned: the exact duplicates.
    """
    query = (
        sa.select(items.c.sha256, items.c.kind, acquisitions.c.source)
        .join(acquisitions, acquisitions.c.sha256 == items.c.sha256)
        .order_by(items.c.sha256, acquisitions.c.id)
    )
    if shas is not None:
        query = query.where(items.c.sha256.in_(set(shas)))
    else:
        repeated = (
            sa.select(acquisitions.c.sha256)
            .group_by(acquisitions.c.sha256)
            .having(sa.func.count() > 1)
        )
        query = query.where(items.c.sha256.in_(repeated))
    found: dict[str, tuple[str | None, list[str]]] = {}
    with database.reader.connect() as connection:
        for sha256, kind, source in connection.execute(query):
            found.setdefault(sha256, (kind, []))[1].append(source)
    return {
        sha256: ItemSummary(sha256, kind, len(sources), sorted(set(sources)))
        for sha256, (kind, sources) in found.items()
    }
