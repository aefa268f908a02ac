"""Everything the dashboard and ``tierflow status --watch`` show, gathered once, JSON-ready.

:func:`build_overview` reads the mode and its history, local-vs-cloud figures, availability per
model, recent fallbacks, queue depths, what runs now, spending per hour, the gate's figures and
the fairness and overhead panel (:mod:`tierflow.app.fairness`: queue wait, overhead, in flight
and stuck per tier; each daemon's share of a contended tier against its weight);
:func:`status_fields` condenses it into the second seed's ``getStatus()``. Times are ISO 8601
UTC strings, money US dollars, durations milliseconds unless a name says otherwise.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from router.gate.health import gate_health
from router.mode import get_mode, mode_history
from tierflow.app.fairness import fairness
from tierflow.app.queues import queue_depths
from tierflow.core.config import LLMConfig
from tierflow.core.constants import LOCAL_TIERS, TIER_ORDER, Mode, Tier
from tierflow.core.redis_client import get_keys, get_redis
from tierflow.core.settings import get_settings
from tierflow.store.activity import hourly_costs, last_attempt_finished_at, running_attempts
from tierflow.store.usage import provider_stats
from workers.automode import automatic_cloud, local_down_since
from workers.backends import registry
from workers.notify import recent_fallbacks

WINDOW = timedelta(hours=24)  # the comparison table and the cost chart
ICONS = {Mode.LOCAL: "⌨ Local", Mode.CLOUD: "☁ Cloud", Mode.AUTO: "⇄ Auto"}


def ago(seconds: float) -> str:
    """A relative time in words: ``just now``, ``12 s ago``, ``3 min ago``, ``2 h ago``."""
    seconds = max(0.0, seconds)
    if seconds < 5:
        return "just now"
    if seconds < 60:
        return f"{seconds:.0f} s ago"
    if seconds < 3600:
        return f"{seconds // 60:.0f} min ago"
    if seconds < 86400:
        return f"{seconds // 3600:.0f} h ago"
    return f"{seconds // 86400:.0f} d ago"


def availability(config: LLMConfig) -> list[dict[str, Any]]:
    """Every enabled model, cheapest tier first, with its probe's answer (cached per backend)."""
    rows = []
    for tier in TIER_ORDER:
        for model in config.tier_models(tier):
            found = registry.backend_for(model).availability()
            rows.append(
                {
                    "tier": tier.value,
                    "model": model.name,
                    "provider": model.provider,
                    "fake": model.provider == "fake",
                    "local": tier in LOCAL_TIERS,
                    "available": found.ok,
                    "reason": found.reason or None,
                }
            )
    return rows


def in_flight(config: LLMConfig) -> dict[str, int]:
    """Calls in flight per model with a ``max_concurrency`` (their live slots in Redis). A model
    without a cap holds no slot, so it is left out rather than shown as 0; the running attempts
    per tier count every call."""
    models = [m for t in TIER_ORDER for m in config.tier_models(t) if m.limits.max_concurrency]
    if not models:
        return {}
    keys = get_keys()
    oldest_ms = (time.time() - get_settings().task_time_limit - 60) * 1000
    pipe = get_redis().pipeline(transaction=False)
    for m in models:
        pipe.zcount(keys.concurrency(m.name), oldest_ms, "+inf")
    return {m.name: int(n) for m, n in zip(models, pipe.execute(), strict=True)}


def open_circuits(config: LLMConfig) -> dict[str, bool]:
    """Per enabled model: whether its circuit breaker is open now (calls refused)."""
    models = [m for t in TIER_ORDER for m in config.tier_models(t)]
    keys = get_keys()
    pipe = get_redis().pipeline(transaction=False)
    for m in models:
        pipe.exists(keys.circuit(m.name) + ":open")
    return {m.name: bool(n) for m, n in zip(models, pipe.execute(), strict=True)}


def cost_timeline(now: datetime) -> dict[str, Any]:
    """The last 24 hours, one slot per UTC hour (empty hours as zeros), and their totals."""
    start = (now - WINDOW).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    found = {row["hour"]: row for row in hourly_costs(start)}
    hours = []
    for i in range(24):
        at = start + timedelta(hours=i)
        row = {k: v for k, v in found.get(at, {}).items() if k != "hour"}
        row = {"jobs": 0, "cost": 0.0, "api_baseline_cost": 0.0, **row}
        hours.append({"hour": at.isoformat(), **row})
    spent = sum(h["cost"] for h in hours)
    baseline = sum(h["api_baseline_cost"] for h in hours)
    return {
        "hours": hours,
        "jobs": sum(h["jobs"] for h in hours),
        "total_cost": spent,
        "api_baseline_cost": baseline,
        "savings": baseline - spent,
        "savings_pct": (baseline - spent) / baseline * 100 if baseline > 0 else 0.0,
    }


def local_state(models: list[dict[str, Any]]) -> tuple[list[str], str | None]:
    """The local models available now, and why none is (None when one is)."""
    local = [m for m in models if m["local"]]
    ready = [m["model"] for m in local if m["available"]]
    if ready:
        return ready, None
    if not local:
        return ready, "no local model is configured"
    return ready, "; ".join(f"{m['model']}: {m['reason'] or 'unavailable'}" for m in local)


def build_overview(now: datetime | None = None) -> dict[str, Any]:
    """The whole picture; see the module docstring. Reads Redis and PostgreSQL, and probes each
    local model's availability (cached by its backend)."""
    now = now or datetime.now(UTC)
    config = get_settings().llm
    mode = get_mode()
    auto = automatic_cloud()
    models = availability(config)
    local_ready, local_reason = local_state(models)
    down_since = local_down_since()
    history = [{**c.as_dict(), "ago": ago((now - c.at).total_seconds())} for c in mode_history(5)]
    fallbacks = [
        {
            **fb,
            "time": datetime.fromtimestamp(fb["at"], UTC).isoformat(),
            "ago": ago(now.timestamp() - fb["at"]),
        }
        for fb in recent_fallbacks(5)
    ]
    last_attempt = last_attempt_finished_at()
    queues, running = queue_depths(), running_attempts()
    return {
        "now": now.isoformat(),
        "mode": mode.value,
        "automatic": (
            {
                "since": auto.at.isoformat(),
                "ago": ago((now - auto.at).total_seconds()),
                "reason": auto.reason,
            }
            if auto is not None
            else None
        ),
        "auto_cloud_after_s": config.routing.auto_cloud_after_s,
        "local_down_since": (
            datetime.fromtimestamp(down_since, UTC).isoformat() if down_since else None
        ),
        "local_available": bool(local_ready),
        "local_model": local_ready[0] if local_ready else None,
        "local_reason": local_reason,
        "cloud_available": any(m["available"] for m in models if not m["local"]),
        "cloud_models": [m["model"] for m in models if m["tier"] == Tier.API_FALLBACK.value],
        "providers": provider_stats(now - WINDOW),
        "models": models,
        "fallbacks": fallbacks,
        "history": history,
        "queues": queues,
        "running": running,
        "in_flight": in_flight(config),
        "circuit_open": open_circuits(config),
        "costs": cost_timeline(now),
        "gate": gate_health(config),
        "fairness": fairness(config, queues, running),
        "last_attempt_at": last_attempt.isoformat() if last_attempt else None,
    }


def status_fields(overview: dict[str, Any]) -> dict[str, Any]:
    """The second seed's ``getStatus()``: ``state`` (``active`` while an attempt runs, else
    ``idle``), ``primaryMetric`` (the mode), ``secondaryMetric`` (tokens of the last 24 h),
    ``lastActivity`` (the newest mode switch, ISO, or None) and ``message`` (None, or what an
    operator should know: automatic cloud, no local model)."""
    mode = Mode(overview["mode"])
    tokens = sum(int(side["tokens"]) for side in overview["providers"].values())
    primary = ICONS[mode] + (" (automatic)" if overview["automatic"] else "")
    message = None
    if overview["automatic"]:
        message = f"automatic cloud since {overview['automatic']['ago']}: " + str(
            overview["automatic"]["reason"] or ""
        )
    elif not overview["local_available"]:
        message = f"no local model available: {overview['local_reason']}"
    return {
        "state": "active" if sum(overview["running"].values()) else "idle",
        "primaryMetric": primary,
        "secondaryMetric": f"{tokens:,} tokens",
        "lastActivity": overview["history"][0]["at"] if overview["history"] else None,
        "message": message,
    }
