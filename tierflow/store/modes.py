"""Mode switches: the history of the fleet's mode, appended one switch at a time, and the mode
itself: the newest switch's ``to_mode`` (none yet: the configuration's default).

Switches are serialised by a PostgreSQL advisory lock, so each row's ``from_mode`` is the mode it
really replaced, even with several processes switching at once. The fleet's hot statements read
the mode inside themselves (:data:`CURRENT_MODE_SQL`), so knowing it costs them no round trip.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import select, text

from schemas.tables import ModeSwitch
from tierflow.core.db import session_scope
from tierflow.store import rows

_SWITCH_LOCK = 0x7469_6572  # advisory lock id for mode switches ("tier")

# The newest switch's mode (NULL when the fleet never switched), as a scalar subquery that any
# statement can carry in its select list: the primary key's index finds it in one probe.
CURRENT_MODE_SQL = "(SELECT to_mode FROM mode_switches ORDER BY id DESC LIMIT 1)"
_LAST_SWITCH_SQL = rows.statement(f"SELECT {CURRENT_MODE_SQL}")


def last_switched_to() -> str | None:
    """The mode of the newest switch; None when the fleet never switched (one statement)."""
    found = rows.run_one(_LAST_SWITCH_SQL, {})
    return found[0] if found is not None else None


def record_switch(
    to_mode: str, source: str, reason: str | None, *, current: Callable[[str | None], str]
) -> ModeSwitch:
    """Append one switch under the lock; ``current(last)`` gives the mode it replaces from the
    newest switch's mode (None: never switched). The switch is effective when it commits: every
    reader of the mode reads this table."""
    with session_scope() as session:
        session.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _SWITCH_LOCK})
        last = session.execute(text(f"SELECT {CURRENT_MODE_SQL}")).scalar_one()
        row = ModeSwitch(from_mode=current(last), to_mode=to_mode, source=source, reason=reason)
        session.add(row)
        session.flush()
        return row


def switch_history(limit: int) -> list[ModeSwitch]:
    """The ``limit`` most recent switches, newest first."""
    with session_scope() as session:
        return list(
            session.execute(
                select(ModeSwitch).order_by(ModeSwitch.id.desc()).limit(limit)
            ).scalars()
        )
