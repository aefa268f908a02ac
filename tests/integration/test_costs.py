"""Cost summary and usage log, checked against a hand computation from the stored attempts."""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from router import export_usage_log, get_cost_summary, submit_job
from router.export import scrub
from tests.support.services import fake_model, fleet_config
from tierflow import store
from tierflow.core.db import session_scope

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Dollars per million tokens (input, output), set here and in the config independently.
PRICES = {"fake-fast": (0.0, 0.0), "gpu-quality": (0.5, 1.5), "sonnet": (3.0, 15.0)}
BASELINE = PRICES["sonnet"]
SECRET = "sk-ant-test-DO-NOT-LEAK-0123456789"
JOBS = [
    ("Extract topic from: 'Fixed authentication bug in login flow'", "extract_topic", {}),
    ("Extract topic from: 'Implemented async caching'", "extract_topic", {}),
    ("Summarize these 5 decisions into a coherent note", "write_memory", {}),
    ("ORCHESTRATE: Implement user authentication with tests", "spawn_daemon", {}),
    (
        "Is this a decision or a fact? 'We chose React'",
        "classify_memory",
        {"affects_system_state": True},
    ),
    # expects 5000 characters of code, more than the fake ever writes: rejected on every tier
    ("Add error handling to this function: [code]", "edit_file", {}),
]
USAGE_KEYS = {
    "time", "job_id", "action", "tier", "model", "provider", "input_tokens", "output_tokens",
    "latency_ms", "cost", "quality", "status", "error", "fake",
}  # fmt: skip


def price(prices: tuple[float, float], tokens_in: int, tokens_out: int) -> float:
    return (tokens_in * prices[0] + tokens_out * prices[1]) / 1_000_000


def database_now() -> datetime:
    with session_scope() as session:
        return session.execute(text("SELECT now()")).scalar_one()


@pytest.fixture
def priced_fleet(fleet):  # type: ignore[no-untyped-def]
    api = fake_model(
        "sonnet",
        input_cost_per_million=3.0,
        output_cost_per_million=15.0,
        api_key_env="TIERFLOW_TEST_FAKE_KEY",
    )
    quality = fake_model("gpu-quality", input_cost_per_million=0.5, output_cost_per_million=1.5)
    fleet(
        fleet_config(
            local_quality=[quality],
            api_fallback=[api],
            actions={
                "classify_memory": {"expects_json": True, "required_fields": ["category"]},
                "edit_file": {"expects_code": True, "min_length": 5000},
            },
            # The too-short code fails its shape on every tier: made hard here so the last
            # tier's answer is not returned degraded, and the mix keeps a paid-for failure.
            final_tier_hard_failures=["no_value", "schema", "parse", "shape"],
        ),
        env={"TIERFLOW_TEST_FAKE_KEY": SECRET},
    )


def run_jobs() -> tuple[datetime, dict[str, str]]:
    """Submit the mix and wait; return when it started and each job's action by id."""
    started = database_now()
    handles = [(submit_job(p, a, c), a) for p, a, c in JOBS]
    for handle, _ in handles:
        handle.wait(30)
    return started, {h.job_id: action for h, action in handles}


def test_cost_summary_matches_a_hand_computation(priced_fleet, tmp_path: Path) -> None:
    started, actions = run_jobs()

    expected = {"total": 0.0, "baseline": 0.0, "calls": 0, "in": 0, "out": 0}
    by_tier: dict[str, dict[str, float]] = defaultdict(lambda: {"calls": 0, "total_cost": 0.0})
    by_model: dict[str, float] = defaultdict(float)
    by_action: dict[str, dict[str, float]] = defaultdict(
        lambda: {"jobs": 0, "total_cost": 0.0, "api_baseline_cost": 0.0}
    )
    statuses = []
    for job_id, action in actions.items():
        result = store.job_result(job_id)
        assert result is not None
        statuses.append(result.status)
        by_action[action]["jobs"] += 1
        for a in store.attempts_of(job_id):
            cost = price(PRICES[a.model], a.input_tokens, a.output_tokens) if a.model else 0.0
            called = a.status in ("passed", "rejected", "error")
            expected["total"] += cost
            expected["calls"] += called
            expected["in"] += a.input_tokens
            expected["out"] += a.output_tokens
            by_tier[a.tier]["calls"] += called
            by_tier[a.tier]["total_cost"] += cost
            if a.model:
                by_model[a.model] += cost
            by_action[action]["total_cost"] += cost
            if a.status == "passed" and result.status == "succeeded":
                baseline = price(BASELINE, a.input_tokens, a.output_tokens)
                expected["baseline"] += baseline
                by_action[action]["api_baseline_cost"] += baseline
    assert sorted(statuses) == ["failed"] + ["succeeded"] * 5
    assert expected["total"] > 0 and expected["baseline"] > expected["total"]

    summary = get_cost_summary(since=started)
    money = pytest.approx
    assert summary["jobs"] == len(JOBS) and summary["succeeded"] == 5 and summary["failed"] == 1
    assert summary["calls"] == expected["calls"]
    assert (summary["input_tokens"], summary["output_tokens"]) == (expected["in"], expected["out"])
    assert summary["total_cost"] == money(expected["total"], abs=1e-7)
    assert summary["api_baseline_cost"] == money(expected["baseline"], abs=1e-7)
    savings = expected["baseline"] - expected["total"]
    assert summary["savings"] == money(savings, abs=1e-7)
    assert summary["savings_pct"] == money(savings / expected["baseline"] * 100, rel=1e-5)

    assert set(summary["tier_stats"]) == {"local_fast", "local_quality", "api_fallback"}
    for tier, stats in summary["tier_stats"].items():
        assert stats["calls"] == by_tier[tier]["calls"], tier
        assert stats["total_cost"] == money(by_tier[tier]["total_cost"], abs=1e-7), tier
    assert summary["tier_stats"]["local_fast"]["total_cost"] == 0.0
    assert set(summary["model_stats"]) == set(by_model)
    for model, cost in by_model.items():
        assert summary["model_stats"][model]["total_cost"] == money(cost, abs=1e-7), model
    assert set(summary["action_stats"]) == set(by_action)
    for action, want in by_action.items():
        got = summary["action_stats"][action]
        assert got["jobs"] == want["jobs"], action
        assert got["total_cost"] == money(want["total_cost"], abs=1e-7), action
        assert got["api_baseline_cost"] == money(want["api_baseline_cost"], abs=1e-7), action
    assert summary["action_stats"]["edit_file"]["savings"] < 0  # paid for, then failed
    days = summary["day_stats"]
    assert sum(d["jobs"] for d in days.values()) == len(JOBS)
    assert sum(d["total_cost"] for d in days.values()) == money(expected["total"], abs=1e-7)
    assert all(len(day) == 10 for day in days)  # ISO dates

    # Windows: the future is empty but keeps its shape; the last hour holds at least this run.
    empty = get_cost_summary(since=started + timedelta(hours=1))
    assert empty["jobs"] == 0 and empty["total_cost"] == 0.0 and empty["savings_pct"] == 0.0
    assert empty["tier_stats"]["api_fallback"]["calls"] == 0 and empty["model_stats"] == {}
    assert get_cost_summary(since=timedelta(hours=1))["jobs"] >= len(JOBS)
    assert get_cost_summary(since=started, until=started)["jobs"] == 0

    # The usage log: one line per attempt, the seed's fields, the same money, no secret.
    path = tmp_path / "llm_usage.jsonl"
    count = export_usage_log(path, since=started)
    content = path.read_text()
    lines = [json.loads(line) for line in content.splitlines()]
    assert count == len(lines) == sum(len(store.attempts_of(j)) for j in actions)
    assert all(set(line) == USAGE_KEYS for line in lines)
    assert {line["job_id"] for line in lines} == set(actions)
    assert all(line["action"] == actions[line["job_id"]] for line in lines)
    assert sum(line["cost"] for line in lines) == money(expected["total"], abs=1e-7)
    assert {line["status"] for line in lines} >= {"passed", "rejected"}
    assert all(line["fake"] for line in lines if line["model"])
    assert SECRET not in content and "sk-ant" not in content


def test_usage_log_scrubs_anything_shaped_like_a_key() -> None:
    leaked = (
        "401 from provider: key sk-ant-api03-AbCdEf123456 rejected; "
        "Authorization: Bearer abcdefgh12345678; api_key=sk-proj-0123456789abcdef"
    )
    clean = scrub(leaked) or ""
    for secret in ("sk-ant-api03", "abcdefgh12345678", "sk-proj-0123456789abcdef"):
        assert secret not in clean
    assert clean.startswith("401 from provider")
    assert scrub(None) is None and scrub("timeout after 60s") == "timeout after 60s"
