"""Reviewers' decisions about items, and how far each one reaches.

Staff who review atrocity material are harmed by seeing the same graphic picture again, and a
picture often arrives from many sources. A label given to one item therefore covers every
item of its near-duplicate cluster: the connected component over the `matches` table, every
link kind. The cluster is worked out when read, never stored with the label, because links
keep arriving: a copy that arrives next week must show the label given today.

A label is never overwritten: a later review adds a row, and the newest one is current.
Each review is a custody event naming the reviewer, written in the same transaction.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from evidence import custody
from evidence.custody import CustodyEntry
from evidence.db import Database, as_utc
from evidence.schema import acquisitions, items, matches, reviews

LABELS: tuple[str, ...] = ("graphic", "reviewed", "not-relevant")

#: Kinds of item a person looks at or listens to; archives and other files are not reviewed.
REVIEWED_KINDS: tuple[str, ...] = ("photo", "video", "audio")

#: Items per query: within every backend's limit on bound parameters.
_CHUNK = 1000


@dataclass(frozen=True)
class Review:
    sha256: str  # the item the reviewer looked at
    label: str
    reviewer: str
    note: str | None
    at: dt.datetime  # UTC
    custody_seq: int  # the custody event that records it


class UnknownItem(LookupError):
    """No item has this hash."""


def _clusters(seeds: sa.Select[Any]) -> sa.CTE:
    """Every item in the near-duplicate clusters of the `seeds` items: a select whose last
    column, `sha256`, names an item, and whose other columns (a root) are carried along.

    One recursive query, whatever the clusters' size; UNION (not UNION ALL) drops rows
    already reached, so cycles among links end the walk. Each step looks a member up on
    both sides of a link through the indexes on `matches`.
    """
    walk = seeds.cte("cluster_walk", recursive=True)
    other = sa.case(
        (matches.c.a_sha256 == walk.c.sha256, matches.c.b_sha256), else_=matches.c.a_sha256
    )
    carried = [column for column in walk.c if column.key != "sha256"]
    step = sa.select(*carried, other).join(
        matches,
        sa.or_(matches.c.a_sha256 == walk.c.sha256, matches.c.b_sha256 == walk.c.sha256),
    )
    return walk.union(step)


def _seeds(shas: Sequence[str]) -> sa.Select[Any]:
    return sa.select(items.c.sha256.label("root"), items.c.sha256.label("sha256")).where(
        items.c.sha256.in_(shas)
    )


@contextmanager
def _reading(database: Database) -> Iterator[sa.Connection]:
    """A read transaction for the cluster walks. PostgreSQL cannot estimate how far a
    recursive walk goes and guesses millions of rows, enough to compile the query to
    machine code first: that costs ~200 ms on a walk that takes a few, on every call."""
    with database.reader.begin() as connection:
        if not database.is_sqlite:
            connection.execute(sa.text("SET LOCAL jit = off"))
        yield connection


def _review(row: sa.Row[Any]) -> Review:
    return Review(
        row.sha256, row.label, row.reviewer, row.note, as_utc(row.at), int(row.custody_seq)
    )


def _cluster_members(connection: sa.Connection, sha256: str) -> list[str]:
    cluster = _clusters(_seeds([sha256]))
    return list(
        connection.execute(sa.select(cluster.c.sha256).order_by(cluster.c.sha256)).scalars()
    )


def cluster_members(database: Database, sha256: str) -> list[str]:
    """The items of this item's near-duplicate cluster, itself included, as linked now (a
    label given to any of them covers them all); empty for an unknown item."""
    with _reading(database) as connection:
        return _cluster_members(connection, sha256)


def record_review(
    database: Database,
    sha256: str,
    label: str,
    reviewer: str,
    note: str | None,
    *,
    operator: str | None = None,
) -> Review:
    """Record a reviewer's label for an item, with its custody event in the same transaction.

    The event names the cluster members the label reaches at this moment; members linked
    later are covered too, since the cluster is worked out when read. A `graphic` label hides
    a whole cluster's pictures from everyone, so the event's actor is whoever recorded it
    (`operator`: the account that ran the command), and the reviewer they name is kept
    beside it in the details; the two are one person unless `operator` says otherwise.

    Raises:
        ValueError: `label` is not one of LABELS, or the note holds a NUL (PostgreSQL's text
            cannot, SQLite's can: refused here, both backends answer alike).
        UnknownItem: no item has this hash.
    """
    if label not in LABELS:
        raise ValueError(f"unknown label {label!r}; labels: {', '.join(LABELS)}")
    if note is not None and "\x00" in note:
        raise ValueError("a note cannot hold a NUL character")
    with database.writer.begin() as connection:
        members = _cluster_members(connection, sha256)
        if not members:
            raise UnknownItem(sha256)
        custody.append(
            connection,
            [
                CustodyEntry(
                    actor=f"qarina-review@{operator or reviewer}",
                    action="review",
                    item_sha256=sha256,
                    details={
                        "label": label,
                        "note": note,
                        "reviewer": reviewer,
                        "cluster": [member for member in members if member != sha256],
                    },
                )
            ],
        )
        event = custody.chain_head(connection)
        assert event is not None  # appended just above
        row = (
            connection.execute(
                sa.insert(reviews)
                .values(
                    sha256=sha256,
                    label=label,
                    reviewer=reviewer,
                    note=note,
                    at=dt.datetime.fromisoformat(event.at_iso),
                    custody_seq=event.seq,
                )
                .returning(*reviews.c)
            )
        ).one()
    return _review(row)


def cluster_reviews(database: Database, sha256: str) -> list[Review]:
    """The reviews of this item and of every item in its near-duplicate cluster, newest
    first: what its page shows instead of offering the picture again."""
    return cluster_reviews_many(database, [sha256])[sha256]


def cluster_reviews_many(database: Database, shas: Sequence[str]) -> dict[str, list[Review]]:
    """`cluster_reviews` for many items, one query per thousand of them (a report over
    10,000 items makes ten). Every requested hash has an entry, empty when unreviewed.

    Each item's cluster is walked on its own: items that share one large cluster cost its
    size each (500 items of one 500-member cluster: under a second on either backend)."""
    found: dict[str, list[Review]] = {sha256: [] for sha256 in shas}
    wanted = list(found)
    with _reading(database) as connection:
        for start in range(0, len(wanted), _CHUNK):
            cluster = _clusters(_seeds(wanted[start : start + _CHUNK]))
            rows = connection.execute(
                sa.select(cluster.c.root, reviews)
                .join(reviews, reviews.c.sha256 == cluster.c.sha256)
                .order_by(cluster.c.root, reviews.c.custody_seq.desc())
            )
            for row in rows:
                found[row.root].append(_review(row))
    return found


def unreviewed_count(database: Database, request_ref: str | None = None) -> int:
    """Items a person would look at (photo, video, audio) that neither they nor any member
    of their cluster have a review for; with `request_ref`, among that request's items.

    The walk starts from the reviewed items, so it reads only the links of reviewed
    clusters, never the whole links table: `qarina status --watch` calls this often.
    """
    covered = _clusters(sa.select(reviews.c.sha256))
    query = (
        sa.select(sa.func.count())
        .select_from(items)
        .where(
            items.c.kind.in_(REVIEWED_KINDS),
            ~sa.exists().where(covered.c.sha256 == items.c.sha256),
        )
    )
    if request_ref is not None:
        query = query.where(
            items.c.sha256.in_(
                sa.select(acquisitions.c.sha256).where(acquisitions.c.request_ref == request_ref)
            )
        )
    with _reading(database) as connection:
        return int(connection.execute(query).scalar_one())
