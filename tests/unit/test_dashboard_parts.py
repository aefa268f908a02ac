"""The dashboard's and the metrics' small parts, without services: the token check, names,
labels, the chart, the seed's status fields, the Metrics step's rule for replays."""

from __future__ import annotations

import socket
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

from router.dispatch import describe
from tierflow.app.dashboard import dashboard_child, hosts_for, token_matches
from tierflow.app.dashboard_html import cost_chart, render_panel
from tierflow.app.overview import ago, status_fields
from tierflow.app.queues import priority_lists
from tierflow.core.settings import reset_settings
from workers.outcome import Move
from workers.pipeline.context import AttemptContext
from workers.pipeline.metrics import Metrics, rejection_reason
from workers.pipeline.summary import summarize


def test_token_is_compared_whole_and_never_empty() -> None:
    assert token_matches("s3cret-token", "s3cret-token")
    assert not token_matches("s3cret-toke", "s3cret-token")
    assert not token_matches("s3cret-token!", "s3cret-token")
    assert not token_matches("", "")
    assert not token_matches("", "s3cret-token")
    assert not token_matches("é", "s3cret-token")  # non-ASCII is compared as bytes, refused


def test_loopback_bind_answers_loopback_hosts_only() -> None:
    assert set(hosts_for("127.0.0.1")) == {"127.0.0.1", "localhost", "::1"}
    assert hosts_for("0.0.0.0") == ["*"]


def test_dashboard_child_takes_a_free_port_when_its_own_is_busy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TIERFLOW_DASHBOARD_TOKEN", raising=False)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        argv, note, _ = dashboard_child(taken)
    port = int(argv[argv.index("--port") + 1])
    assert port != taken and f"127.0.0.1:{port}/#token=" in note
    token = note.rsplit("#token=", 1)[1]
    assert len(token) >= 40
    monkeypatch.setenv("TIERFLOW_DASHBOARD_TOKEN", "from-env-0123456789")
    reset_settings()
    _, note, _ = dashboard_child(port)
    reset_settings()
    assert "from-env-0123456789" not in note and "TIERFLOW_DASHBOARD_TOKEN" in note


def test_priority_lists_follow_kombus_rule() -> None:
    lists = priority_lists("tier.local_fast")
    assert len(lists) == 10
    prefix = lists[0].removesuffix("tier.local_fast")
    assert prefix.endswith(":q:")
    assert lists[1:] == [f"{prefix}tier.local_fast:{p}" for p in range(1, 10)]


def test_rejection_reason_is_the_verifier_never_free_text() -> None:
    assert rejection_reason(["checks: missing fields ['category']"]) == "checks"
    assert rejection_reason(["coherence: truncated", "gate: score"]) == "coherence"
    assert rejection_reason(["the answer said 'no': odd"]) == "gate"
    assert rejection_reason(None) == "gate" and rejection_reason([]) == "gate"


def test_relative_times() -> None:
    assert [ago(s) for s in (0, 12, 150, 7300, 200000, -3)] == [
        "just now", "12 s ago", "2 min ago", "2 h ago", "2 d ago", "just now",
    ]  # fmt: skip


def _ctx(**fields: Any) -> AttemptContext:
    ctx = AttemptContext("00000000-0000-0000-0000-000000000001", 0, 0, 0, "h:t", None)  # type: ignore[arg-type]
    for key, value in fields.items():
        setattr(ctx, key, value)
    return ctx


def test_metrics_step_counts_stored_attempts_but_never_a_replay() -> None:
    attempt = SimpleNamespace(tier="local_fast", model="m", status="passed")
    assert Metrics().applies(_ctx(attempt=attempt))
    assert not Metrics().applies(_ctx(attempt=attempt, replayed=True))
    assert not Metrics().applies(_ctx())  # nothing stored: a wait, or the job is gone


def test_task_result_and_message_labels() -> None:
    attempt = SimpleNamespace(tier="local_fast", model="phi3", status="rejected")
    assert summarize(_ctx(attempt=attempt, move=Move("fallback", 1, 1))) == (
        "fallback: rejected on local_fast/phi3"
    )
    assert summarize(_ctx(attempt=attempt, move=Move("fallback"), replayed=True)).endswith(
        "(replayed)"
    )
    assert summarize(_ctx(move=Move("wait"))) == "wait" and summarize(_ctx()) == "done"
    assert describe("j1", "local_fast", "edit_file") == "job=j1 tier=local_fast action=edit_file"  # type: ignore[arg-type]
    assert describe("j1") == "job=j1"


def _overview(**changes: Any) -> dict[str, Any]:
    now = datetime(2026, 1, 2, 12, 0, tzinfo=UTC).isoformat()
    base: dict[str, Any] = {
        "now": now,
        "mode": "auto",
        "automatic": None,
        "auto_cloud_after_s": 120.0,
        "local_down_since": None,
        "local_available": False,
        "local_model": None,
        "local_reason": "phi3: http://x not usable <script>",
        "cloud_available": True,
        "providers": {
            "local": {"requests": 3, "tokens": 1200, "avg_ms": 12.0, "errors": 1},
            "cloud": {"requests": 1, "tokens": 34, "avg_ms": 80.0, "errors": 0},
        },
        "models": [],
        "fallbacks": [],
        "history": [],
        "queues": {"router": 0},
        "running": {"local_fast": 1},
        "in_flight": {},
        "circuit_open": {},
        "costs": {
            "hours": [],
            "jobs": 0,
            "total_cost": 0.0,
            "api_baseline_cost": 0.0,
            "savings": 0.0,
            "savings_pct": 0.0,
        },
        "gate": {},
    }
    base.update(changes)
    return base


def test_status_fields_are_the_seeds_get_status() -> None:
    fields = status_fields(_overview())
    assert fields == {
        "state": "active",
        "primaryMetric": "⇄ Auto",
        "secondaryMetric": "1,234 tokens",
        "lastActivity": None,
        "message": "no local model available: phi3: http://x not usable <script>",
    }
    automatic = {"since": "t", "ago": "3 min ago", "reason": "no local model for 120s"}
    cloud = status_fields(_overview(mode="cloud", automatic=automatic, running={}))
    assert cloud["primaryMetric"] == "☁ Cloud (automatic)" and cloud["state"] == "idle"
    assert cloud["message"] == "automatic cloud since 3 min ago: no local model for 120s"


def test_panel_disables_local_with_the_reason_and_escapes_it() -> None:
    overview = _overview()
    html = render_panel(overview, status_fields(overview))
    assert '<button class="switch-btn" data-mode="local" disabled title="phi3:' in html
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert 'data-mode="auto" class="mode-indicator"' not in html  # one indicator, by id
    assert '<tr data-side="local"><td>Local</td><td class="requests">3</td>' in html


def test_cost_chart_draws_both_bars_per_hour_to_scale() -> None:
    hours = [
        {"hour": "2026-01-02T10:00:00+00:00", "jobs": 2, "cost": 0.5, "api_baseline_cost": 1.0},
        {"hour": "2026-01-02T11:00:00+00:00", "jobs": 0, "cost": 0.0, "api_baseline_cost": 0.0},
    ]
    svg = cost_chart(hours, width=200, height=120)
    assert svg.count('class="baseline"') == 2 and svg.count('class="spent"') == 2
    assert 'height="100.0"' in svg and 'height="50.0"' in svg  # 1.0 fills the plot, 0.5 half
    assert cost_chart([], width=10, height=20).startswith("<svg")
