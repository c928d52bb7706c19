"""The evidence store: database plus blob folder, and the questions operators ask of them."""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from evidence import archives, custody, jobs, records, requests
from evidence import matches as match_links
from evidence.blobs import BlobStore, StoredBlob
from evidence.custody import CustodyEntry
from evidence.db import Database, as_utc, connect, migrate, utc_now, write_retrying
from evidence.records import CurrentKeys
from evidence.schema import (
    acquisitions,
    archive_members,
    artifacts,
    items,
    results,
    under_keys,
)
from evidence.schema import jobs as jobs_table
from evidence.status import StatusReport, status_report


@dataclass(frozen=True)
class Acquisition:
    """One arrival of bytes: who brought them, from where, under what name, how urgent."""

    source: str
    original_name: bytes
    original_path: bytes
    operator: str
    original_mtime: dt.datetime | None = None
    priority: int = 0
    request_ref: str | None = None
    #: Makes the arrival happen once however often intake is retried (a drop folder's file
    #: seen again after a crash): a second registration with the same key records nothing.
    intake_key: str | None = None


@dataclass(frozen=True)
class Registered:
    sha256: str
    new_item: bool
    #: None when the intake key had already been registered: nothing new was recorded.
    acquisition_id: int | None


@dataclass(frozen=True)
class FixityProblem:
    sha256: str
    problem: str


@dataclass(frozen=True)
class VerifyReport:
    chain: custody.ChainReport
    blobs_checked: int
    fixity_problems: list[FixityProblem]

    @property
    def ok(self) -> bool:
        return self.chain.first_break is None and not self.fixity_problems


class _AlreadyArrived(Exception):
    """An arrival whose intake key was registered before: nothing of it may be recorded."""


@dataclass(frozen=True)
class _Arrival:
    """What one registration records, kept together for its retries."""

    blob: StoredBlob
    acquisition: Acquisition
    initial_jobs: Sequence[records.JobSpec]
    actor: str
    max_attempts: int


#: The intake key an arrival is given when its caller gave none (a folder ingested from the
#: command line): it tells a retried registration whether the first try landed.
ARRIVAL_KEY = "arrival:"


def _landed(connection: sa.Connection, sha256: str, arrival: Acquisition) -> Registered | None:
    """What an earlier try of this registration recorded, if its COMMIT landed; None if it
    did not. The item was new to the store if this arrival is its first."""
    found = connection.execute(
        sa.select(acquisitions.c.id, acquisitions.c.sha256).where(
            acquisitions.c.intake_key == arrival.intake_key
        )
    ).first()
    if found is None:
        return None
    if found.sha256 != sha256:
        raise _AlreadyArrived  # the key was someone else's all along
    first = connection.execute(
        sa.select(sa.func.min(acquisitions.c.id)).where(acquisitions.c.sha256 == sha256)
    ).scalar_one()
    return Registered(sha256, first == found.id, int(found.id))


class Store:
    """Opened once per process; migrates the database to the current schema on open."""

    def __init__(self, database: Database, blobs: BlobStore) -> None:
        self.database = database
        self.blobs = blobs

    @classmethod
    def open(cls, url: str, blob_root: Path) -> Store:
        database = connect(url)
        migrate(database)
        return cls(database, BlobStore(blob_root))

    def close(self) -> None:
        self.database.dispose()

    def register(
        self,
        blob: StoredBlob,
        acquisition: Acquisition,
        initial_jobs: Sequence[records.JobSpec],
        actor: str,
        max_attempts: int,
    ) -> Registered:
        """Record an arrival: item (once per content), acquisition, custody, first jobs.

        An arrival for a request takes the request's priority when that is higher (a request
        named for the first time is created with the arrival's). A lost connection or a
        locked store is retried; an arrival without an intake key is given one of its own
        (`ARRIVAL_KEY`) so that a retry after a COMMIT whose answer was lost finds what
        landed instead of recording the arrival twice.
        """
        keyed = (
            acquisition
            if acquisition.intake_key is not None
            else replace(acquisition, intake_key=f"{ARRIVAL_KEY}{uuid.uuid4().hex}")
        )
        arrival = _Arrival(blob, keyed, initial_jobs, actor, max_attempts)
        tries = 0

        def record(connection: sa.Connection) -> Registered:
            nonlocal tries
            tries += 1
            landed = None if tries == 1 else _landed(connection, blob.sha256, keyed)
            return landed or self._record_arrival(connection, arrival)

        try:
            return write_retrying(self.database, record, "registration")
        except _AlreadyArrived:
            return Registered(blob.sha256, False, None)

    def _record_arrival(self, connection: sa.Connection, arrival: _Arrival) -> Registered:
        blob, acquisition, actor = arrival.blob, arrival.acquisition, arrival.actor
        now = utc_now()
        priority = acquisition.priority
        if acquisition.request_ref is not None:
            priority = max(
                priority,
                requests.ensure(
                    self.database, connection, acquisition.request_ref, priority, actor
                ),
            )
        new_item = (
            connection.execute(
                self.database.insert(items)
                .values(sha256=blob.sha256, size_bytes=blob.size_bytes, created_at=now)
                .on_conflict_do_nothing()
            ).rowcount
            == 1
        )
        acquisition_id: int | None = connection.execute(
            self.database.insert(acquisitions)
            .values(
                sha256=blob.sha256,
                source=acquisition.source,
                original_name=acquisition.original_name,
                original_path=acquisition.original_path,
                original_mtime=acquisition.original_mtime,
                operator=acquisition.operator,
                acquired_at=now,
                # The arrival's own urgency; its jobs take its request's when higher,
                # and keep this one when the request is lowered later.
                priority=acquisition.priority,
                request_ref=acquisition.request_ref,
                intake_key=acquisition.intake_key,
            )
            .on_conflict_do_nothing()
            .returning(acquisitions.c.id)
        ).scalar()
        if acquisition_id is None:
            # Rolls the item row and an implicit request back with it: a reused
            # intake key leaves nothing behind.
            raise _AlreadyArrived
        jobs.enqueue(
            self.database,
            connection,
            blob.sha256,
            arrival.initial_jobs,
            priority,
            arrival.max_attempts,
        )
        brought: list[CustodyEntry] = []
        if not new_item:
            jobs.raise_priority(connection, blob.sha256, priority)
            # An archive expanded before: its members arrive again with this arrival.
            brought = archives.propagate_arrival(
                self.database, connection, blob.sha256, acquisition_id, actor
            )
            for member in {entry.item_sha256 for entry in brought} - {None}:
                jobs.raise_priority(connection, str(member), priority)
        custody.append(
            connection,
            [
                CustodyEntry(
                    actor=actor,
                    action="ingest",
                    item_sha256=blob.sha256,
                    details={
                        "acquisition_id": acquisition_id,
                        "source": acquisition.source,
                        "operator": acquisition.operator,
                        "size_bytes": blob.size_bytes,
                        "duplicate_of_stored_item": not new_item,
                        # The name is evidence kept in the acquisition row; the chain
                        # covers it by hash so the custody record can be shared without it.
                        "original_name_sha256": hashlib.sha256(
                            acquisition.original_name
                        ).hexdigest(),
                        "priority": priority,
                        "request_ref": acquisition.request_ref,
                    },
                ),
                *brought,
            ],
        )
        return Registered(blob.sha256, new_item, acquisition_id)

    def _log(self, entry: CustodyEntry) -> None:
        """One custody event in a transaction of its own."""
        with self.database.writer.begin() as connection:
            custody.append(connection, [entry])

    def record_sharing(
        self,
        action: str,
        actor: str,
        shared: Iterable[tuple[str, Mapping[str, Any]]],
        page: int = 1000,
    ) -> None:
        """One event per item whose results leave the store (an export, a report), with its
        details, all in one transaction: who let what out, and in which form, belongs to each
        item's custody, and a crash records it for all the items or for none.

        Events are appended `page` at a time, so a million items never sit in memory as
        events at once (about 1.4 kB each); the transaction holds the chain's lock meanwhile
        (about 25 s a million on SQLite), and other writers wait for it.
        """
        entries = (
            CustodyEntry(actor=actor, action=action, item_sha256=sha256, details=details)
            for sha256, details in shared
        )
        with self.database.writer.begin() as connection:
            while batch := list(itertools.islice(entries, page)):
                custody.append(connection, batch)

    def record_refusal(self, source: str, path: bytes, reason: str, actor: str) -> None:
        """An input that could not even be stored still leaves a custody record."""
        self._log(
            CustodyEntry(
                actor=actor,
                action="ingest_refused",
                details={
                    "source": source,
                    "reason": reason,
                    "original_path_sha256": hashlib.sha256(path).hexdigest(),
                },
            )
        )

    def intake_arrival(self, intake_key: str) -> tuple[str, int] | None:
        """The item and acquisition id an intake key was registered with, if it was: what a
        retried intake answers with, having recorded nothing new."""
        with self.database.reader.connect() as connection:
            row = connection.execute(
                sa.select(acquisitions.c.sha256, acquisitions.c.id).where(
                    acquisitions.c.intake_key == intake_key
                )
            ).first()
        return None if row is None else (row.sha256, int(row.id))

    def status(
        self,
        request_ref: str | None = None,
        window_s: int = 300,
        current: CurrentKeys | None = None,
    ) -> StatusReport:
        """See `evidence.status.status_report`."""
        return status_report(self.database, request_ref, window_s, current)

    def show(self, sha256: str, current: CurrentKeys) -> dict[str, Any] | None:
        """Everything known about one item, as plain JSON data (for `qarina show --json`).

        `results` holds, per stage, the result under a key `current` names; results under
        other keys (an older stage version, another model) are listed apart, in
        `superseded`, each with its key and artifacts. Failures and pending jobs are those
        of the current keys; a stage's failure under an older key is history in custody.
        `archive_members` lists what an archive held and `found_in_archives` the archives an
        item was found in, each with the path inside the archive and how deep it lay.
        """
        planned = {key for keys in current.values() for key in keys}
        with self.database.reader.connect() as connection:
            item = connection.execute(sa.select(items).where(items.c.sha256 == sha256)).first()
            if item is None:
                return None
            arrivals = connection.execute(
                sa.select(acquisitions)
                .where(acquisitions.c.sha256 == sha256)
                .order_by(acquisitions.c.id)
            ).all()
            stage_results = connection.execute(
                sa.select(results).where(results.c.sha256 == sha256).order_by(results.c.id)
            ).all()
            item_jobs = connection.execute(
                sa.select(jobs_table)
                .where(jobs_table.c.sha256 == sha256, under_keys(jobs_table, planned))
                .order_by(jobs_table.c.id)
            ).all()
            derived: dict[int, list[dict[str, Any]]] = {}
            for row in connection.execute(
                sa.select(artifacts)
                .where(artifacts.c.parent_sha256 == sha256)
                .order_by(artifacts.c.id)
            ):
                derived.setdefault(row.result_id, []).append(_artifact_json(row))
            links = connection.execute(
                sa.select(archive_members)
                .where(
                    sa.or_(
                        archive_members.c.archive_sha256 == sha256,
                        archive_members.c.member_sha256 == sha256,
                    )
                )
                .order_by(archive_members.c.id)
            ).all()
        shown = [
            (_key_of(row) in planned, _result_json(row, derived.get(row.id, [])))
            for row in stage_results
        ]
        return {
            "sha256": item.sha256,
            "kind": item.kind,
            "size_bytes": item.size_bytes,
            "blob_path": str(self.blobs.path_for(item.sha256)),
            "acquisitions": [_acquisition_json(row) for row in arrivals],
            "results": {result["stage"]: result for is_current, result in shown if is_current},
            "superseded": [result for is_current, result in shown if not is_current],
            "failures": [
                {
                    "stage": row.stage,
                    "reason": row.error_reason,
                    "detail": row.error_detail,
                    "state": row.state,
                    "attempts": row.attempts,
                }
                for row in item_jobs
                if row.state in (jobs.FAILED, jobs.DEAD)
            ],
            "pending": sorted(row.stage for row in item_jobs if row.state in jobs.OPEN_STATES),
            "artifacts": [
                artifact
                for is_current, result in shown
                if is_current
                for artifact in result["artifacts"]
            ],
            "matches": [
                match_links.as_seen_from(link, sha256)
                for link in match_links.links_of(self.database, sha256)
            ],
            "archive_members": [
                {"sha256": row.member_sha256, **_inner_path_json(row)}
                for row in links
                if row.archive_sha256 == sha256
            ],
            "found_in_archives": [
                {"archive_sha256": row.archive_sha256, **_inner_path_json(row)}
                for row in links
                if row.member_sha256 == sha256
            ],
        }

    def verify(self, fixity: bool, actor: str) -> VerifyReport:
        """Re-walk the custody chain and optionally re-hash every stored blob; log the check."""
        with self.database.reader.connect() as connection:
            chain = custody.verify_chain(connection)
            shas: list[str] = []
            if fixity:
                shas = list(
                    connection.execute(sa.select(items.c.sha256).order_by(items.c.sha256)).scalars()
                )
                shas += list(
                    connection.execute(
                        sa.select(artifacts.c.sha256).distinct().order_by(artifacts.c.sha256)
                    ).scalars()
                )
        problems = [problem for sha in shas if (problem := self._check_blob(sha)) is not None]
        report = VerifyReport(chain, len(shas), problems)
        self._log(
            CustodyEntry(
                actor=actor,
                action="verify",
                details={
                    "events_checked": chain.events,
                    "head_hash": chain.head_hash,
                    "chain_ok": chain.first_break is None,
                    "first_break_seq": chain.first_break.seq if chain.first_break else None,
                    "blobs_checked": len(shas),
                    "fixity_problems": [problem.sha256 for problem in problems],
                },
            )
        )
        return report

    def _check_blob(self, sha256: str) -> FixityProblem | None:
        path = self.blobs.path_for(sha256)
        if not path.is_file():
            return FixityProblem(sha256, "missing")
        if path.stat().st_mode & 0o222:
            return FixityProblem(sha256, "writable")
        if self.blobs.rehash(sha256) != sha256:
            return FixityProblem(sha256, "content changed")
        return None


def _key_of(row: sa.Row[Any]) -> records.ResultKey:
    return records.ResultKey(row.stage, row.stage_version, row.config_hash)


def _result_json(row: sa.Row[Any], derived: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "stage": row.stage,
        "stage_version": row.stage_version,
        "config_hash": row.config_hash,
        "status": row.status,
        "skip_reason": row.skip_reason,
        "data": row.data,
        "data_sha256": row.data_sha256,
        "provenance": row.provenance,
        "created_at": as_utc(row.created_at).isoformat(),
        "artifacts": derived,
    }


def _artifact_json(row: sa.Row[Any]) -> dict[str, Any]:
    return {
        "sha256": row.sha256,
        "stage": row.stage,
        "role": row.role,
        "media_type": row.media_type,
        "size_bytes": row.size_bytes,
        "meta": row.meta,
    }


def _display_bytes(raw: bytes) -> str:
    """Raw file-system bytes as text without loss: bytes that are not UTF-8 appear as \\xNN."""
    return raw.decode("utf-8", "backslashreplace")


def _inner_path_json(row: sa.Row[Any]) -> dict[str, Any]:
    """A member's path inside its archive, as text without loss and as its raw bytes."""
    return {"path": _display_bytes(row.path), "path_hex": row.path.hex(), "depth": row.depth}


def _acquisition_json(row: sa.Row[Any]) -> dict[str, Any]:
    return {
        "id": row.id,
        "source": row.source,
        "original_name": _display_bytes(row.original_name),
        "original_name_hex": row.original_name.hex(),
        "original_path": _display_bytes(row.original_path),
        "original_mtime": as_utc(row.original_mtime).isoformat() if row.original_mtime else None,
        "operator": row.operator,
        "acquired_at": as_utc(row.acquired_at).isoformat(),
        "priority": row.priority,
        "request_ref": row.request_ref,
    }
