"""Mode switches: the history of the fleet's mode, appended one switch at a time.

Switches are serialised by a PostgreSQL advisory lock, so each row's ``from_mode`` is the mode it
really replaced, even with several processes switching at once.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import select, text

from schemas.tables import ModeSwitch
from tierflow.core.db import session_scope

_SWITCH_LOCK = 0x7469_6572  # advisory lock id for mode switches ("tier")


def last_switched_to() -> str | None:
    """The mode of the newest switch; None when the fleet never switched."""
    with session_scope() as session:
        return session.execute(
            select(ModeSwitch.to_mode).order_by(ModeSwitch.id.desc()).limit(1)
        ).scalar_one_or_none()


def record_switch(
    to_mode: str,
    source: str,
    reason: str | None,
    *,
    current: Callable[[], str],
    apply: Callable[[str], object],
) -> ModeSwitch:
    """Append one switch under the lock: ``current()`` gives the mode replaced, ``apply(to)``
    makes the switch effective (before the row commits, so no reader sees history ahead of it)."""
    with session_scope() as session:
        session.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _SWITCH_LOCK})
        row = ModeSwitch(from_mode=current(), to_mode=to_mode, source=source, reason=reason)
        session.add(row)
        session.flush()
        apply(to_mode)
        return row


def switch_history(limit: int) -> list[ModeSwitch]:
    """The ``limit`` most recent switches, newest first."""
    with session_scope() as session:
        return list(
            session.execute(
                select(ModeSwitch).order_by(ModeSwitch.id.desc()).limit(limit)
            ).scalars()
        )
