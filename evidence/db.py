"""Engines for the two backends and the migration that brings a database to the current schema.

SQLite is the embedded default: WAL so readers never block the writer, `BEGIN IMMEDIATE` so a
writing transaction takes the write lock up front instead of failing half-way with SQLITE_BUSY,
and `synchronous=FULL` because a committed result must survive a power cut, not just a crash.
PostgreSQL is the store at scale; leasing there uses `FOR UPDATE SKIP LOCKED`. A write that a
passing fault ends (a lock held past the busy timeout, a dropped connection) can be tried again
after a pause with `write_retrying`, where running it twice is safe.
"""

from __future__ import annotations

import datetime as dt
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

log = logging.getLogger(__name__)

T = TypeVar("T")

_MIGRATIONS = Path(__file__).parent / "migrations"
#: Pauses between the tries of a write that a passing fault ended (see `write_retrying`):
#: about 50 s in all, the time a PostgreSQL restart or failover takes; on SQLite each try
#: also waits out the 60 s busy timeout first.
_RETRY_DELAYS_S = (0.1, 0.5, 2.0, 5.0, 10.0, 30.0)


def utc_now() -> dt.datetime:
    """The one clock of the store: timezone-aware UTC."""
    return dt.datetime.now(dt.UTC)


def as_utc(value: dt.datetime) -> dt.datetime:
    """Read-back timestamps as aware UTC (SQLite returns them naive)."""
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


@dataclass(frozen=True)
class Database:
    """A writer engine and a reader engine on the same database.

    On SQLite they differ: writes begin IMMEDIATE (serialised, no mid-transaction upgrade
    failures), reads begin DEFERRED so `status` never waits behind a running backlog.
    """

    url: str
    writer: sa.Engine
    reader: sa.Engine

    @property
    def is_sqlite(self) -> bool:
        return self.writer.dialect.name == "sqlite"

    def insert(self, table: sa.Table) -> Any:
        """INSERT that understands ON CONFLICT (idempotent writes) on either backend."""
        return (sqlite.insert if self.is_sqlite else postgresql.insert)(table)

    def dispose(self) -> None:
        self.writer.dispose()
        if self.reader is not self.writer:
            self.reader.dispose()


#: A database error's text otherwise quotes the statement's parameters, and those hold
#: original names and paths (evidence): an error that reaches a log or a traceback must not.
_HIDE_PARAMETERS = True


def _sqlite_engine(url: str, *, immediate: bool) -> sa.Engine:
    engine = sa.create_engine(
        url,
        connect_args={"timeout": 60, "check_same_thread": False},
        hide_parameters=_HIDE_PARAMETERS,
    )

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's begin hook, not the driver, decide how transactions start.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(connection: sa.Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def connect(url: str) -> Database:
    """Open (not migrate) the database at `url`."""
    if url.startswith("sqlite"):
        return Database(
            url, _sqlite_engine(url, immediate=True), _sqlite_engine(url, immediate=False)
        )
    # preserve_rowcount: with psycopg 3, SQLAlchemy reports -1 as the rowcount of an INSERT
    # (ON CONFLICT DO NOTHING) unless asked to keep it, and registration reads it to tell a
    # new item from a known one.
    engine = sa.create_engine(
        url,
        pool_pre_ping=True,
        pool_size=5,
        max_overflow=5,
        execution_options={"preserve_rowcount": True},
        hide_parameters=_HIDE_PARAMETERS,
    )
    return Database(url, engine, engine)


def _is_transient(error: sa.exc.DBAPIError) -> bool:
    """Whether a write failed for a cause that passes by itself, so that trying it again later
    may succeed: SQLite's write lock still held by another writer when the busy timeout ran
    out, or the connection to the server lost (a restart, a failover, a terminated backend).
    A refused statement (a constraint, a bug) fails the same way every time."""
    if error.connection_invalidated:
        return True
    code = getattr(error.orig, "sqlite_errorcode", None)
    return code is not None and (code & 0xFF) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def write_retrying(database: Database, work: Callable[[sa.Connection], T], what: str) -> T:
    """Run `work` in one write transaction; when a transient fault (`_is_transient`) ends it,
    back off and run it again in a new one, each pause of `_RETRY_DELAYS_S` in turn, then
    let the last fault propagate.

    A failed transaction left nothing behind, but a connection lost during COMMIT leaves it
    unknown whether that COMMIT landed: `work` must find what an earlier run of it committed
    and not do it again (a job commit's fencing token does). `what` names the write in the
    warning each retry logs.
    """
    for delay in _RETRY_DELAYS_S:
        try:
            with database.writer.begin() as connection:
                return work(connection)
        except sa.exc.DBAPIError as error:
            if not _is_transient(error):
                raise
            cause = "unreachable" if error.connection_invalidated else "locked"
            log.warning("the store is %s; trying the %s again in %.1f s", cause, what, delay)
        time.sleep(delay)
    with database.writer.begin() as connection:
        return work(connection)


def migrate(database: Database) -> None:
    """Bring the database to the newest schema revision (idempotent)."""
    from alembic import command  # only the driver migrates; workers never load Alembic
    from alembic.config import Config as AlembicConfig

    config = AlembicConfig()
    config.set_main_option("script_location", str(_MIGRATIONS))
    with database.writer.begin() as connection:
        if not database.is_sqlite:
            # Nodes of a cluster start together; one migrates while the others wait here.
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(7411)"))
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
