"""Switches every driver and service obeys: pausing the backlog, and why.

The switch lives in the store, not in one process: every driver on every node reads it
before it leases, so one `qarina pause` stops new work everywhere while running jobs finish.
Each change is a custody event naming who asked.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import sqlalchemy as sa

from evidence import custody
from evidence.custody import CustodyEntry
from evidence.db import Database, as_utc, utc_now
from evidence.schema import controls

_PAUSE = "pause"


@dataclass(frozen=True)
class PauseState:
    paused: bool
    reason: str | None = None
    since: dt.datetime | None = None
    by: str | None = None


def pause_state(database: Database) -> PauseState:
    """Whether new leases are paused (one indexed read: drivers ask every round)."""
    with database.reader.connect() as connection:
        row = connection.execute(sa.select(controls).where(controls.c.name == _PAUSE)).first()
    if row is None or not row.value.get("paused"):
        return PauseState(False)
    return PauseState(True, row.value.get("reason"), as_utc(row.updated_at), row.updated_by)


def set_paused(database: Database, paused: bool, actor: str, reason: str | None = None) -> bool:
    """Pause or resume new leases everywhere; whether the state changed.

    Asking for the state the switch is already in is recorded in custody and changes
    nothing else: the pause keeps its reason, its time and who made it.
    """
    now = utc_now()
    value = {"paused": paused, "reason": reason}
    with database.writer.begin() as connection:
        # The switch's row exists before anyone reads it for change, and is held while it
        # changes: two first pauses at once (an operator and the API) cannot both insert.
        connection.execute(
            database.insert(controls)
            .values(
                name=_PAUSE,
                value={"paused": False, "reason": None},
                updated_at=now,
                updated_by=actor,
            )
            .on_conflict_do_nothing()
        )
        current = sa.select(controls.c.value).where(controls.c.name == _PAUSE)
        before = connection.execute(
            current if database.is_sqlite else current.with_for_update()
        ).scalar_one()
        was_paused = bool(before.get("paused"))
        if was_paused != paused:
            connection.execute(
                sa.update(controls)
                .where(controls.c.name == _PAUSE)
                .values(value=value, updated_at=now, updated_by=actor)
            )
        custody.append(
            connection,
            [
                CustodyEntry(
                    actor=actor,
                    action="pause" if paused else "resume",
                    details={"reason": reason, "was_paused": was_paused},
                )
            ],
        )
    return was_paused != paused
