"""Automatic mode (second seed's "auto-switch"): in ``auto``, go to ``cloud`` when no local model
has been available for ``routing.auto_cloud_after_s`` seconds, and back to ``auto`` when one is.

Beat sends :func:`check_auto_mode` every ``AUTO_MODE_INTERVAL_S``; a Redis lock lets one check
run per interval fleet-wide (like the sweeper's). Each switch goes through
:func:`router.mode.set_mode` with ``source="auto"`` and its reason, so it is in the history that
``tierflow mode``, ``tierflow status`` and the dashboard show.

**Which cloud is automatic.** The stored mode after an automatic switch is plain ``cloud``
(every worker reads the newest switch, as for a manual switch). That it was automatic is read
from PostgreSQL's history, not from a second flag: the fleet is in *automatic cloud* exactly
when the mode is ``cloud`` and the newest switch is an ``auto`` switch to ``cloud``. Only then
does the check switch back. A person's later switch (even ``cloud`` → ``cloud``) is the newest
row and ends the automatic state: the fleet stays where the person put it. Nothing can disagree
with the history (the mode is read from it), so a flag could only drift. The one piece of state
in Redis is when the local models were first seen down (``local-down-since``); losing it only
restarts the wait.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from celery import Task

from router.mode import ModeChange, get_mode, mode_history, set_mode
from tierflow.core.celery_app import app
from tierflow.core.config import LLMConfig
from tierflow.core.constants import (
    AUTO_MODE_INTERVAL_S,
    LOCAL_TIERS,
    TASK_AUTO_MODE,
    TIER_ORDER,
    Mode,
    Tier,
)
from tierflow.core.redis_client import get_keys, get_redis
from tierflow.core.settings import get_settings
from workers.backends import registry

log = logging.getLogger(__name__)
AUTO_MODE_LOCK_S = max(1, int(AUTO_MODE_INTERVAL_S) - 1)  # ends before the next beat tick


@dataclass(frozen=True)
class LocalAvailability:
    """Whether any enabled local model answers its availability probe: the first that does, or
    every model's reason."""

    ok: bool
    model: str | None
    reasons: dict[str, str]

    def describe(self) -> str:
        if self.ok:
            return f"local model {self.model} available"
        if not self.reasons:
            return "no local model is configured"
        return "; ".join(f"{name}: {why}" for name, why in self.reasons.items())


def local_availability(config: LLMConfig) -> LocalAvailability:
    """Probe the enabled models of the local tiers, cheapest tier first (probes are cached by
    each backend for ``TIERFLOW_AVAILABILITY_TTL_S``)."""
    reasons: dict[str, str] = {}
    for tier in (t for t in TIER_ORDER if t in LOCAL_TIERS):
        for model in config.tier_models(tier):
            found = registry.backend_for(model).availability()
            if found.ok:
                return LocalAvailability(True, model.name, {})
            reasons[model.name] = found.reason or "unavailable"
    return LocalAvailability(False, None, reasons)


def automatic_cloud() -> ModeChange | None:
    """The automatic switch to cloud the fleet is in now, or None (auto, local, or a cloud a
    person chose)."""
    if get_mode() is not Mode.CLOUD:
        return None
    newest = mode_history(1)
    if newest and newest[0].source == "auto" and newest[0].to_mode == Mode.CLOUD.value:
        return newest[0]
    return None


def local_down_since() -> float | None:
    """Unix time when the check first found no local model available (None: not down)."""
    raw = get_redis().get(get_keys().local_down_since)
    return float(str(raw)) if raw else None


def check_once(now: float | None = None) -> str:
    """One check; returns what it did or saw, in words. Switches at most once."""
    now = time.time() if now is None else now
    config = get_settings().llm
    after = config.routing.auto_cloud_after_s
    redis, keys = get_redis(), get_keys()
    mode = get_mode()
    if mode is Mode.AUTO and after is not None:
        local = local_availability(config)
        if local.ok:
            redis.delete(keys.local_down_since)
            return local.describe()
        redis.set(keys.local_down_since, repr(now), nx=True)
        down_for = now - (local_down_since() or now)
        if down_for < after:
            return f"no local model for {down_for:.0f}s of {after:.0f}s: {local.describe()}"
        if not config.tier_models(Tier.API_FALLBACK):
            return "no local model, and no cloud model to switch to"
        reason = f"no local model available for {down_for:.0f}s: {local.describe()}"
        set_mode(Mode.CLOUD, source="auto", reason=reason[:1000])
        redis.delete(keys.local_down_since)
        log.warning("automatic mode: switched to cloud (%s)", reason)
        return "switched to cloud: " + reason
    redis.delete(keys.local_down_since)
    if automatic_cloud() is None:
        return f"mode {mode.value}: nothing automatic to do"
    local = local_availability(config)
    if not local.ok:
        return "automatic cloud; still no local model: " + local.describe()
    reason = f"{local.describe()} again"
    set_mode(Mode.AUTO, source="auto", reason=reason)
    log.warning("automatic mode: back to auto (%s)", reason)
    return "back to auto: " + reason


@app.task(name=TASK_AUTO_MODE, bind=True, ignore_result=True)
def check_auto_mode(self: Task, scheduled: bool = False) -> str:
    """Beat's automatic-mode check. ``scheduled`` checks take a lock that lasts most of the
    interval, so one runs per interval fleet-wide; one sent by hand always runs."""
    if scheduled and not get_redis().set(
        get_keys().auto_mode_lock, self.request.hostname or "local", nx=True, ex=AUTO_MODE_LOCK_S
    ):
        return "skipped: another check holds the lock"
    return check_once()
