"""Adopting the fleet ``tierflow up`` runs: the one file it records its services' URLs in, and
what a command that talks to the fleet reads from it (:func:`adopt_running_fleet`).

Kept apart from :mod:`tierflow.app.fleet` (which imports the supervisor, the dashboard and,
through it, the fleet's backends and the provider SDKs) so that a command that only reads the
fleet's state (``tierflow batch status``) starts without importing any of that.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tierflow.app.liveness import postgres_answers, process_alive, redis_answers
from tierflow.core.errors import ConfigError
from tierflow.core.settings import get_settings, redact_url, reset_settings

__all__ = ["adopt_running_fleet", "endpoints_file"]


def endpoints_file(state_dir: Path) -> Path:
    return state_dir / "fleet.json"


def adopt_running_fleet() -> bool:
    """Point this process at the fleet ``tierflow up`` runs, when no URL is configured.

    ``tierflow up`` records the embedded services' URLs (no passwords: they have none) and its
    own pid in ``STATE_DIR/fleet.json``; ``submit``, ``mode``, ``costs`` and friends read it.
    A recorded fleet that is not running is said at once, never waited on: raises ConfigError
    naming what is down (the supervisor is gone, or its Redis or PostgreSQL does not answer)
    and what to run; a file left by a supervisor that died is removed.
    """
    if os.environ.get("TIERFLOW_BROKER_URL") and os.environ.get("TIERFLOW_DATABASE_URL"):
        return False
    path = endpoints_file(get_settings().state_dir)
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    down = _what_is_down(recorded)
    if down:
        if "supervisor" in down:
            path.unlink(missing_ok=True)
        raise ConfigError(
            f"the fleet recorded in {path} is not running ({down}): start it with `tierflow up`"
            ", or set TIERFLOW_BROKER_URL and TIERFLOW_DATABASE_URL"
        )
    for key in ("TIERFLOW_BROKER_URL", "TIERFLOW_DATABASE_URL"):
        if not os.environ.get(key) and recorded.get(key):
            os.environ[key] = recorded[key]
    reset_settings()
    return True


def _what_is_down(recorded: dict[str, object]) -> str | None:
    """Why a recorded fleet cannot serve, checked in about two seconds at most; None if up."""
    pid = recorded.get("pid")
    if isinstance(pid, int) and not process_alive(pid):
        return f"its supervisor, pid {pid}, is gone"
    redis_url = recorded.get("TIERFLOW_BROKER_URL")
    if isinstance(redis_url, str) and not redis_answers(redis_url):
        return f"its Redis at {redact_url(redis_url)} does not answer"
    database_url = recorded.get("TIERFLOW_DATABASE_URL")
    if isinstance(database_url, str) and not postgres_answers(database_url):
        return f"its PostgreSQL at {redact_url(database_url)} does not answer"
    return None
