"""The fairness and overhead panel's HTML (tierflow/app/dashboard_html.py), without services."""

from __future__ import annotations

from typing import Any

from tierflow.app.dashboard_html import render_panel

STATUS = {"state": "idle", "primaryMetric": "⇄ Auto", "secondaryMetric": "0 tokens"}


def _overview(fairness: dict[str, Any] | None) -> dict[str, Any]:
    overview: dict[str, Any] = {
        "mode": "auto", "automatic": None, "local_down_since": None, "local_available": True,
        "local_model": "m", "local_reason": None, "cloud_available": True,
        "providers": {s: {"requests": 0, "tokens": 0, "avg_ms": 0.0, "errors": 0}
                      for s in ("local", "cloud")},
        "models": [], "fallbacks": [], "history": [], "queues": {}, "running": {},
        "in_flight": {}, "circuit_open": {}, "gate": {},
        "costs": {"hours": [], "jobs": 0, "total_cost": 0.0, "api_baseline_cost": 0.0,
                  "savings": 0.0, "savings_pct": 0.0},
    }  # fmt: skip
    if fairness is not None:
        overview["fairness"] = fairness
    return overview


def _tier(name: str, n: int, p50: float | None, p95: float | None, stuck: int) -> dict[str, Any]:
    spread = {"n": n, "p50_ms": p50, "p95_ms": p95}
    return {"tier": name, "queue_wait": spread, "overhead": spread, "running": 1, "waiting": 2,
            "stuck": stuck}  # fmt: skip


def test_panel_shows_times_stuck_and_escaped_daemons() -> None:
    daemon = {
        "daemon": "<b>evil</b>", "weight": 3.0, "max_in_flight": 2, "weight_share": 0.75,
        "attempts": 6, "finished": 5, "share": 0.6, "running": 2, "waiting": 4,
    }  # fmt: skip
    panel = {
        "window_s": 3600.0,
        "window": "jobs submitted in the last hour",
        "stale_after_s": 120.0,
        "tiers": [_tier("local_fast", 3, 4.25, 1234.5, 0), _tier("router", 0, None, None, 2)],
        "shares": [{"tier": "local_fast", "capacity": 4, "daemons": [daemon]}],
    }
    html = render_panel(_overview(panel), STATUS)
    assert "jobs submitted in the last hour" in html and "untouched for 120 s" in html
    assert '<td class="ms" data-ms="4.250">4.2 ms</td>' in html
    assert '<td class="ms" data-ms="1234.500">1,234 ms</td>' in html  # whole ms from 10 up
    assert '<td class="ms" data-ms="">-</td>' in html  # nothing finished: no figure
    assert '<td class="stuck bad">2</td>' in html and '<td class="stuck">0</td>' in html
    assert "<b>evil</b>" not in html and 'data-daemon="&lt;b&gt;evil&lt;/b&gt;"' in html
    assert '<td class="weight">3</td><td class="max-in-flight">2</td>' in html
    assert '<td class="weight-share">75%</td>' in html and '<td class="share">60%</td>' in html
    assert "(4 slots)" in html


def test_panel_says_when_no_tier_is_contended_and_skips_an_old_overview() -> None:
    panel = {"window_s": 3600.0, "window": "w", "stale_after_s": 120.0, "tiers": [], "shares": []}
    assert "no contended tier" in render_panel(_overview(panel), STATUS)
    assert 'id="tier-times"' not in render_panel(_overview(None), STATUS)
