"""The fleet mode (second seed): ``auto``, ``local`` or ``cloud``, switchable at runtime.

Each switch is appended to PostgreSQL's ``mode_switches`` (time, from, to, manual or automatic),
and the current mode is the newest switch's (never switched: the configuration's
``default_mode``). The routing task and every attempt's claim read it inside the statement they
run anyway (:data:`tierflow.store.modes.CURRENT_MODE_SQL`): no round trip of its own, and no
second store that could disagree with the history. Each switch is also published on Redis
(``mode_channel``) for whoever watches.

- ``auto``: route by policy (:mod:`router.plan`);
- ``local``: never call an API model; jobs routed to the API run on the strongest local tier;
- ``cloud``: API models only.

A job is planned under the mode of its routing, and each attempt checks the mode again, so a
switch is effective for the next job in every worker (and for the next attempt of jobs in flight).
Switching to a mode whose tiers have no enabled model in the configuration raises
:class:`~tierflow.core.errors.ModeError` and changes nothing (second seed: switching to local "fails
gracefully if the runtime is not ready"). Switches are serialised by the store
(:mod:`tierflow.store.modes`), so each history row's ``from`` is the mode it really replaced.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from tierflow.core.constants import Mode
from tierflow.core.errors import ModeError
from tierflow.core.redis_client import get_keys, get_redis
from tierflow.core.settings import get_settings
from tierflow.store.modes import last_switched_to, record_switch, switch_history

SOURCES = {"manual": "manual", "auto": "auto", "automatic": "auto"}


@dataclass(frozen=True)
class ModeChange:
    """One switch: ``source`` is ``manual`` (a person, the CLI) or ``auto`` (the fleet itself)."""

    at: datetime
    from_mode: str
    to_mode: str
    source: str
    reason: str | None

    def as_dict(self) -> dict[str, str | None]:
        return {
            "at": self.at.isoformat(),
            "from": self.from_mode,
            "to": self.to_mode,
            "source": self.source,
            "reason": self.reason,
        }


def _parse(mode: str | Mode) -> Mode:
    try:
        return Mode(mode)
    except ValueError:
        raise ModeError(f"unknown mode {mode!r}: choose auto, local or cloud") from None


def get_mode() -> Mode:
    """The fleet's mode now (one statement)."""
    return mode_of(last_switched_to())


def mode_of(last: str | None) -> Mode:
    """The mode, given the newest switch's (None: never switched, the configured default)."""
    return _parse(last) if last else get_settings().llm.routing.default_mode


def _check_servable(mode: Mode) -> None:
    """Raise ModeError when no tier the mode allows has an enabled model."""
    if mode is Mode.AUTO:
        return
    config = get_settings().llm
    tiers = mode.tiers
    if not any(config.tier_models(t) for t in tiers):
        names = ", ".join(sorted(t.value for t in tiers))
        raise ModeError(f"cannot switch to {mode.value}: no enabled model in {names}")


def set_mode(mode: str | Mode, *, source: str = "manual", reason: str | None = None) -> ModeChange:
    """Switch the whole fleet; effective for the next job (and attempt) in every worker.

    ``source`` is ``manual`` or ``auto`` (``automatic`` is accepted for ``auto``). Raises
    ModeError for an unknown mode or source, or a mode that no configured tier can serve.
    """
    new = _parse(mode)
    if source not in SOURCES:
        raise ModeError("source must be 'manual' or 'auto'")
    _check_servable(new)
    keys = get_keys()
    row = record_switch(
        new.value, SOURCES[source], reason, current=lambda last: mode_of(last).value
    )
    change = ModeChange(row.at, row.from_mode, row.to_mode, row.source, reason)
    get_redis().publish(keys.mode_channel, json.dumps(change.as_dict()))
    return change


def mode_history(limit: int = 20) -> list[ModeChange]:
    """The ``limit`` most recent switches, newest first (the second seed shows five)."""
    rows = switch_history(limit)
    return [ModeChange(r.at, r.from_mode, r.to_mode, r.source, r.reason) for r in rows]
