"""Archive members as items: what an expansion found becomes evidence of its own.

A file found inside a zip or tar is an original, not a derived file: it gets an item (once per
content), an acquisition per arrival of the archive (same source, operator and request, the
path inside the archive as its name), a link to the archive with that path and its depth, a
custody event, and (queued by the caller, the job queue) its first jobs. All of it commits
with the archive stage's result, in one transaction, so a crash leaves either the whole
expansion or none of it; an expansion committed again (a retried job) adds nothing, through
the intake keys.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import sqlalchemy as sa

from evidence.custody import CustodyEntry
from evidence.db import Database, utc_now
from evidence.records import LeasedJob, MemberRecord
from evidence.schema import acquisitions, archive_members, items

#: The intake key prefix of a member's acquisition: it tells arrivals inside an archive from
#: arrivals as such (which set an item's depth to 0).
MEMBER_INTAKE = "member:"


def depths(database: Database, shas: Iterable[str]) -> dict[str, int]:
    """How many archives deep each item was found: 0 when any arrival was of the item itself
    (or it is in no archive), else the shallowest archive path to it."""
    wanted = set(shas)
    if not wanted:
        return {}
    with database.reader.connect() as connection:
        return _depths(connection, wanted)


def _depths(connection: sa.Connection, wanted: set[str]) -> dict[str, int]:
    inside = {
        sha256: int(depth)
        for sha256, depth in connection.execute(
            sa.select(archive_members.c.member_sha256, sa.func.min(archive_members.c.depth))
            .where(archive_members.c.member_sha256.in_(wanted))
            .group_by(archive_members.c.member_sha256)
        )
    }
    if inside:
        direct = set(
            connection.execute(
                sa.select(acquisitions.c.sha256)
                .where(
                    acquisitions.c.sha256.in_(inside),
                    sa.or_(
                        acquisitions.c.intake_key.is_(None),
                        ~acquisitions.c.intake_key.startswith(MEMBER_INTAKE),
                    ),
                )
                .distinct()
            ).scalars()
        )
        inside = {sha256: depth for sha256, depth in inside.items() if sha256 not in direct}
    return {sha256: inside.get(sha256, 0) for sha256 in wanted}


def register_members(
    database: Database,
    connection: sa.Connection,
    job: LeasedJob,
    members: Iterable[MemberRecord],
    result_id: int,
    actor: str,
) -> tuple[list[CustodyEntry], dict[str, bool]]:
    """Inside the commit of an archive stage's result: register what it found.

    Returns the custody events and, per member item, whether it is new (its first jobs are
    queued; a known one only has its queued jobs raised to the archive's priority).
    """
    _lock(database, connection, job.sha256)
    depth = _depths(connection, {job.sha256})[job.sha256] + 1
    arrivals = connection.execute(
        sa.select(acquisitions).where(acquisitions.c.sha256 == job.sha256)
    ).all()
    entries = []
    found: dict[str, bool] = {}
    for member in members:
        if member.sha256 == job.sha256:
            continue  # an archive that holds itself (a zip quine) is not its own member
        new_item = _register_item(database, connection, member)
        found[member.sha256] = found.get(member.sha256, False) or new_item
        linked = connection.execute(
            database.insert(archive_members)
            .values(
                archive_sha256=job.sha256,
                member_sha256=member.sha256,
                path=member.inner_path,
                depth=depth,
                result_id=result_id,
            )
            .on_conflict_do_nothing()
        ).rowcount
        path_sha256 = hashlib.sha256(member.inner_path).hexdigest()
        acquired = [
            acquisition_id
            for arrival in arrivals
            if (
                acquisition_id := _acquire(
                    database, connection, job.sha256, member.sha256, member.inner_path, arrival
                )
            )
            is not None
        ]
        if not (new_item or linked or acquired):
            continue  # an expansion committed again (a reprocess): nothing new to record
        entries.append(
            CustodyEntry(
                actor=actor,
                action="ingest",
                item_sha256=member.sha256,
                details={
                    "from_archive": job.sha256,
                    "archive_result_id": result_id,
                    # The path is evidence kept in the acquisition and the member link; the
                    # chain covers it by hash, as it does original names.
                    "path_sha256": path_sha256,
                    "depth": depth,
                    "size_bytes": member.size_bytes,
                    "acquisition_ids": acquired,
                    "duplicate_of_stored_item": not new_item,
                    "priority": job.priority,
                },
            )
        )
    return entries, found


def _lock(database: Database, connection: sa.Connection, archive_sha256: str) -> None:
    """On PostgreSQL, take the archive's item row for this transaction: an expansion being
    committed and a new arrival of the same archive then happen one after the other, so
    neither misses the other's rows (the arrival's members, or the expansion's links).
    SQLite's single writer already serialises them."""
    if not database.is_sqlite:
        connection.execute(
            sa.select(items.c.sha256).where(items.c.sha256 == archive_sha256).with_for_update()
        )


def _register_item(database: Database, connection: sa.Connection, member: MemberRecord) -> bool:
    return (
        connection.execute(
            database.insert(items)
            .values(sha256=member.sha256, size_bytes=member.size_bytes, created_at=utc_now())
            .on_conflict_do_nothing()
        ).rowcount
        == 1
    )


def propagate_arrival(
    database: Database,
    connection: sa.Connection,
    archive_sha256: str,
    arrival_id: int,
    actor: str,
    passed: frozenset[str] = frozenset(),
) -> list[CustodyEntry]:
    """A new arrival of an archive already expanded brings its members again: from that
    source, for that request, at that priority. Inside the caller's transaction; members
    that are archives pass the arrival on to theirs. The caller raises the members' queued
    jobs to the arrival's priority (every item in the returned events)."""
    _lock(database, connection, archive_sha256)
    arrival = connection.execute(
        sa.select(acquisitions).where(acquisitions.c.id == arrival_id)
    ).one()
    passed = passed | {archive_sha256}
    entries = []
    for member in connection.execute(
        sa.select(archive_members).where(archive_members.c.archive_sha256 == archive_sha256)
    ).all():
        if member.member_sha256 in passed:
            continue  # archives that hold each other: each brought once
        acquired = _acquire(
            database, connection, archive_sha256, member.member_sha256, member.path, arrival
        )
        if acquired is None:
            continue
        entries.append(
            CustodyEntry(
                actor=actor,
                action="ingest",
                item_sha256=member.member_sha256,
                details={
                    "from_archive": archive_sha256,
                    "archive_acquisition_id": arrival_id,
                    "path_sha256": hashlib.sha256(member.path).hexdigest(),
                    "depth": member.depth,
                    "acquisition_ids": [acquired],
                    "duplicate_of_stored_item": True,
                    "priority": arrival.priority,
                },
            )
        )
        entries += propagate_arrival(
            database, connection, member.member_sha256, acquired, actor, passed
        )
    return entries


def _acquire(
    database: Database,
    connection: sa.Connection,
    archive_sha256: str,
    member_sha256: str,
    inner_path: bytes,
    arrival: sa.Row[tuple[object, ...]],
) -> int | None:
    """One acquisition of a member per arrival of its archive: it came from the same source,
    for the same request; None when this arrival's member was registered before."""
    path_sha256 = hashlib.sha256(inner_path).hexdigest()
    inserted: int | None = connection.execute(
        database.insert(acquisitions)
        .values(
            sha256=member_sha256,
            source=arrival.source,
            original_name=inner_path.rstrip(b"/").rsplit(b"/", 1)[-1],
            original_path=inner_path,
            original_mtime=None,
            operator=arrival.operator,
            acquired_at=utc_now(),
            priority=arrival.priority,
            request_ref=arrival.request_ref,
            intake_key=f"{MEMBER_INTAKE}{archive_sha256}:{path_sha256[:32]}:{arrival.id}",
        )
        .on_conflict_do_nothing()
        .returning(acquisitions.c.id)
    ).scalar()
    return inserted
