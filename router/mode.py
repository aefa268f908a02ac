"""The fleet mode (second seed): ``auto``, ``local`` or ``cloud``, switchable at runtime.

The current mode lives in Redis (read by every worker at each attempt: one GET) and each switch
is appended to PostgreSQL's ``mode_switches`` (time, from, to, manual or automatic), which also
restores the mode if Redis lost it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from schemas.tables import ModeSwitch
from tierflow.constants import Mode
from tierflow.db import session_scope
from tierflow.errors import ModeError
from tierflow.redis_client import get_keys, get_redis
from tierflow.settings import get_settings


@dataclass(frozen=True)
class ModeChange:
    at: datetime
    from_mode: str
    to_mode: str
    source: str
    reason: str | None


def _parse(mode: str | Mode) -> Mode:
    try:
        return Mode(mode)
    except ValueError:
        raise ModeError(f"unknown mode {mode!r}: choose auto, local or cloud") from None


def get_mode() -> Mode:
    """The fleet's mode now."""
    raw = get_redis().get(get_keys().mode)
    if raw:
        return _parse(raw)
    with session_scope() as session:
        last = session.execute(
            select(ModeSwitch.to_mode).order_by(ModeSwitch.id.desc()).limit(1)
        ).scalar_one_or_none()
    mode = _parse(last) if last else get_settings().llm.routing.default_mode
    get_redis().set(get_keys().mode, mode.value, nx=True)
    return mode


def set_mode(mode: str | Mode, *, source: str = "manual", reason: str | None = None) -> ModeChange:
    """Switch the whole fleet; effective for the next attempt in every worker."""
    new = _parse(mode)
    if source not in {"manual", "auto"}:
        raise ModeError("source must be 'manual' or 'auto'")
    old = get_mode()
    with session_scope() as session:
        row = ModeSwitch(from_mode=old.value, to_mode=new.value, source=source, reason=reason)
        session.add(row)
        session.flush()
        change = ModeChange(row.at, old.value, new.value, source, reason)
    keys = get_keys()
    get_redis().set(keys.mode, new.value)
    get_redis().publish(
        keys.mode_channel, json.dumps({"from": old.value, "to": new.value, "source": source})
    )
    return change


def mode_history(limit: int = 20) -> list[ModeChange]:
    """Recent switches, newest first."""
    with session_scope() as session:
        rows = session.execute(
            select(ModeSwitch).order_by(ModeSwitch.id.desc()).limit(limit)
        ).scalars()
        return [ModeChange(r.at, r.from_mode, r.to_mode, r.source, r.reason) for r in rows]
