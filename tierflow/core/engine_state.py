"""The embedded engine's state as ``tierflow up`` last saw it, for the errors workers report.

The supervisor writes one small JSON value under :attr:`Keys.engine_state` each time the engine
exits, becomes ready or is stopped (:func:`record_engine_state`). A worker whose call to the local
engine's URL cannot connect reads it, one GET on that error path only, and adds
:func:`engine_state_note` to its error ("local engine exited with SIGSEGV at 20:31:02;
restarting"). Neither side ever raises for Redis trouble: the note is a courtesy.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Literal

import redis

from tierflow.core.redis_client import get_keys, get_redis

log = logging.getLogger("tierflow.core.engine_state")

EngineState = Literal["up", "down", "stopped"]


def record_engine_state(
    state: EngineState, reason: str, *, restarting: bool = False, restarts: int = 0
) -> None:
    """Store the engine's state (``reason`` a short phrase, e.g. "local engine exited with
    SIGSEGV"); a Redis failure is logged, never raised."""
    value = {
        "state": state,
        "reason": reason,
        "restarting": restarting,
        "restarts": restarts,
        "at": time.time(),
    }
    try:
        get_redis().set(get_keys().engine_state, json.dumps(value))
    except (redis.RedisError, OSError) as exc:
        log.warning("cannot record the local engine's state (%s): %s", reason, exc)


def engine_state_note() -> str | None:
    """Why the local engine may be unreachable, as recorded: ``"local engine exited with SIGSEGV
    at 20:31:02; restarting"``; None when it was last seen up, or nothing is known."""
    try:
        raw = get_redis().get(get_keys().engine_state)
        value = json.loads(raw) if isinstance(raw, str) else None
    except (redis.RedisError, OSError, ValueError):
        return None
    if not isinstance(value, dict) or value.get("state") not in ("down", "stopped"):
        return None
    at = time.strftime("%H:%M:%S", time.localtime(float(value.get("at") or 0)))
    note = f"{value.get('reason') or 'local engine down'} at {at}"
    if value.get("state") == "down":
        note += "; restarting" if value.get("restarting") else "; not restarting"
    return note
