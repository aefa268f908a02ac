"""The dashboard's fairness and overhead panel: per tier, where recent jobs' time went and what is
in flight or stuck now; per contended tier, each daemon's share against its weight.

Per tier (every tier, and ``router`` for jobs never routed): ``queue_wait`` and ``overhead``
(count, p50 and p95 in milliseconds over the jobs submitted in the last :data:`WINDOW_S`
seconds: :mod:`tierflow.store.overhead`), ``running`` (attempts under a live lease, as
``tierflow_running_attempts``), ``waiting`` (messages in the tier's queue plus attempts in its
daemons' lines) and ``stuck`` (:func:`tierflow.store.activity.stuck_jobs` with
``STALE_AFTER_S``: the very read of the ``tierflow_stuck_jobs`` gauge).

Per contended tier (:func:`router.fairshare.contended`) and daemon: ``attempts`` and
``finished`` in the window (PostgreSQL), ``share`` (its fraction of the tier's attempts in the
window), ``running`` and ``waiting`` now (the fair-share counters in Redis, read by
:meth:`router.fairshare.FairShare.loads` as the ``tierflow_daemon_*`` gauges are), and its
configured ``weight`` and ``max_in_flight`` (``daemons:``) with ``weight_share``: its weight's
fraction of the weights of the daemons active in the window, which is what its share tends to
while every one of them has work waiting (a daemon alone takes the whole tier).

The two PostgreSQL statements read an hour of jobs and their attempts (at 20,000 jobs in the
hour, 2 attempts each, about 250 ms and 60 ms on 2 shared cores, beside about 200 ms for the rest
of the overview: ``tests/bench/bench_dashboard_panel.py``), so they are cached for
:data:`CACHE_S` seconds per process, and the window's figures on a page refreshed every 5 s may
be that much older than the page; the Redis counters, the stuck count and the running attempts
are read fresh at every redraw.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from router.dispatch import fair_share
from router.fairshare import BATCH_LINE, DEFAULT_DAEMON, DaemonLoad, contended, tier_capacity
from tierflow.core.config import LLMConfig
from tierflow.core.constants import BATCH_PRIORITY, STALE_AFTER_S, TIER_ORDER, Tier, tier_queue
from tierflow.core.settings import get_settings
from tierflow.store.activity import stuck_jobs
from tierflow.store.overhead import EMPTY, DaemonAttempts, Spread, daemon_attempts, recent_times

WINDOW_S = 3600.0
WINDOW_TEXT = "jobs submitted in the last hour"
CACHE_S = 10.0

_WindowReads = tuple[dict[str, dict[str, Spread]], dict[str, dict[str, DaemonAttempts]]]
_cache: dict[str, tuple[float, _WindowReads]] = {}
_lock = threading.Lock()


def _window_reads() -> _WindowReads:
    """The two window statements, from this process's cache when younger than CACHE_S (keyed
    by database, so a test's fresh database is never answered from another's)."""
    key = str(get_settings().database_url)
    now = time.monotonic()
    with _lock:
        hit = _cache.get(key)
        if hit is not None and now - hit[0] < CACHE_S:
            return hit[1]
    found = (
        recent_times(WINDOW_S),
        daemon_attempts(
            WINDOW_S,
            batch_priority=BATCH_PRIORITY,
            batch_line=BATCH_LINE,
            default_daemon=DEFAULT_DAEMON,
        ),
    )
    with _lock:
        _cache[key] = (now, found)
    return found


def forget_cache() -> None:
    """Drop the cached window reads (tests; a redraw right after a change of database)."""
    with _lock:
        _cache.clear()


def fairness(config: LLMConfig, queues: dict[str, int], running: dict[str, int]) -> dict[str, Any]:
    """The panel's data (see the module docstring), JSON-ready. ``queues`` and ``running`` are
    the overview's queue depths and running attempts per tier, read once for the whole page."""
    times, attempts = _window_reads()
    stuck = stuck_jobs(STALE_AFTER_S)
    share = fair_share()
    loads = {t.value: share.loads(t) for t in TIER_ORDER if contended(config, t)}
    tiers = []
    for name in [t.value for t in TIER_ORDER] + ["router"]:
        spread = times.get(name, {})
        lines = sum(load.waiting for load in loads.get(name, {}).values())
        queue = tier_queue(name) if name != "router" else "router"
        tiers.append(
            {
                "tier": name,
                "queue_wait": spread.get("queue_wait", EMPTY).as_dict(),
                "overhead": spread.get("overhead", EMPTY).as_dict(),
                "running": running.get(name, 0),
                "waiting": queues.get(queue, 0) + lines,
                "stuck": stuck.get(name, 0),
            }
        )
    shares = [
        _tier_shares(config, Tier(name), attempts.get(name, {}), tier_loads)
        for name, tier_loads in loads.items()
    ]
    return {
        "window_s": WINDOW_S,
        "window": WINDOW_TEXT,
        "stale_after_s": STALE_AFTER_S,
        "tiers": tiers,
        "shares": shares,
    }


def _tier_shares(
    config: LLMConfig,
    tier: Tier,
    attempts: dict[str, DaemonAttempts],
    loads: dict[str, DaemonLoad],
) -> dict[str, Any]:
    """One contended tier: its capacity (None: unbounded) and a row per daemon seen in the
    window, in its line or configured, most attempts first."""
    names = set(attempts) | {n for n, load in loads.items() if load.running or load.waiting}
    names |= set(config.daemons)
    total = sum(a.attempts for a in attempts.values())
    active = {
        n for n in names if n in attempts or (n in loads and (loads[n].running or loads[n].waiting))
    }
    weights = {n: _weight(config, n) for n in names}
    active_weight = sum(weights[n] for n in active)
    rows: list[dict[str, Any]] = []
    for name in names:
        done = attempts.get(name, DaemonAttempts(0, 0))
        load = loads.get(name, DaemonLoad(0, 0, 0))
        conf = config.daemons.get(name)
        rows.append(
            {
                "daemon": name,
                "weight": weights[name],
                "max_in_flight": conf.max_in_flight if conf else None,
                "weight_share": weights[name] / active_weight if name in active else None,
                "attempts": done.attempts,
                "finished": done.finished,
                "share": done.attempts / total if total else None,
                "running": load.running,
                "waiting": load.waiting,
            }
        )
    rows.sort(key=lambda r: (-r["attempts"], -r["running"] - r["waiting"], r["daemon"]))
    return {"tier": tier.value, "capacity": tier_capacity(config, tier), "daemons": rows}


def _weight(config: LLMConfig, daemon: str) -> float:
    conf = config.daemons.get(daemon)
    return conf.weight if conf else 1.0
