"""The seed's fallback scenarios, run by a real worker: each ends on the right tier, every attempt
stored with its reason, and each tier change published as a fallback event."""

from __future__ import annotations

import pytest

from router import submit_job
from tests.support.services import fake_model, fleet_config
from tierflow import store
from workers.notify import recent_fallbacks

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WAIT_S = 30


def always_fails(name: str, failure: str, **options: object) -> dict[str, object]:
    return fake_model(name, failure_rate=1.0, failure=failure, **options)


def fallbacks_of(job_id: str) -> list[tuple[str, str]]:
    """The job's fallback events, oldest first (the history is newest first)."""
    events = [e for e in recent_fallbacks(200) if e["job_id"] == job_id]
    return [(e["from_tier"], e["to"]) for e in reversed(events)]


def test_scenario_1_local_timeout_falls_back_to_the_api(fleet) -> None:
    fleet(fleet_config(local_quality=[always_fails("mixtral", "timeout")]))
    handle = submit_job("Generate a Python function to parse JSON", "generate_code")
    result = handle.wait(timeout=WAIT_S)

    assert result.status == "succeeded", result.error
    assert (result.tier, result.model) == ("api_fallback", "fake-api")
    attempts = store.attempts_of(handle.job_id)
    first, last = attempts[0], attempts[-1]
    assert (first.tier, first.model, first.status, first.error_kind) == (
        "local_quality",
        "mixtral",
        "error",
        "timeout",
    )
    assert "timeout" in (first.error or "")
    # A retry on the same tier finds the model cooling down and moves on.
    assert all(a.tier == "local_quality" and a.status != "passed" for a in attempts[:-1])
    assert (last.tier, last.status) == ("api_fallback", "passed")
    assert last.cost_usd > 0 and result.cost_usd == pytest.approx(float(last.cost_usd))
    assert fallbacks_of(handle.job_id) == [("local_quality", "api_fallback")]


def test_scenario_2_quality_failure_escalates_to_the_api(fleet) -> None:
    config = fleet_config(local_quality=[fake_model("mixtral", answer="refusal")])
    config["routing"]["actions"]["edit_file"] = {"min_length": 20}  # the fake writes no fences
    fleet(config)
    handle = submit_job("Edit config file: set retries to 3", "edit_file")
    result = handle.wait(timeout=WAIT_S)

    assert result.status == "succeeded", result.error
    assert result.tier == "api_fallback"
    rejected, passed = store.attempts_of(handle.job_id)
    assert (rejected.tier, rejected.status, rejected.error_kind) == (
        "local_quality",
        "rejected",
        "quality",
    )
    assert rejected.quality_score is not None and rejected.quality_score < 1.0
    assert "coherence: refusal" in (rejected.quality_issues or [])
    assert rejected.quality_components is not None
    assert rejected.quality_components["coherence"] == 0.0
    assert set(rejected.quality_components) >= {
        "format",
        "completeness",
        "coherence",
        "self_critique",
    }
    assert rejected.text and rejected.input_tokens > 0  # the rejected answer is kept
    assert (passed.tier, passed.status, passed.quality_score) == ("api_fallback", "passed", 1.0)
    assert result.quality == 1.0
    assert fallbacks_of(handle.job_id) == [("local_quality", "api_fallback")]


def test_scenario_3_rate_limited_api_models_until_the_last_succeeds(fleet) -> None:
    fleet(
        fleet_config(
            api_fallback=[
                always_fails("sonnet", "rate_limited", retry_after=30, input_cost_per_million=3),
                always_fails("gpt-4o", "rate_limited", retry_after=30, input_cost_per_million=2.5),
                fake_model("haiku", input_cost_per_million=1.0, output_cost_per_million=5.0),
            ]
        )
    )
    handle = submit_job("ORCHESTRATE: Implement user authentication with tests", "spawn_daemon")
    result = handle.wait(timeout=WAIT_S)

    assert result.status == "succeeded", result.error
    assert (result.tier, result.model) == ("api_fallback", "haiku")
    attempts = store.attempts_of(handle.job_id)
    assert [(a.model, a.status, a.error_kind) for a in attempts] == [
        ("sonnet", "error", "rate_limited"),
        ("gpt-4o", "error", "rate_limited"),
        ("haiku", "passed", None),
    ]
    assert [a.retry_after_s for a in attempts[:2]] == [30.0, 30.0]
    assert fallbacks_of(handle.job_id) == []  # retries within the tier, no tier change


def test_scenario_all_tiers_fail_with_every_reason_or_degrade(fleet) -> None:
    fleet(
        fleet_config(
            local_fast=[fake_model("phi3", answer="bad_json")],
            local_quality=[fake_model("mixtral", answer="refusal")],
            api_fallback=[always_fails("sonnet", "malformed")],
        )
    )
    prompt = "Is this a decision or a fact? 'We chose React over Vue'"
    failed = submit_job(prompt, "classify_memory")
    degraded = submit_job(prompt + " (degraded ok)", "classify_memory", allow_degraded=True)

    result = failed.wait(timeout=WAIT_S)
    assert result.status == "failed"
    attempts = store.attempts_of(failed.job_id)
    assert [(a.tier, a.model, a.status) for a in attempts] == [
        ("local_fast", "phi3", "rejected"),
        ("local_quality", "mixtral", "rejected"),
        ("api_fallback", "sonnet", "error"),
    ]
    error = result.error or ""
    for reason in ("format: invalid JSON", "coherence: refusal", "malformed", "#0", "#1", "#2"):
        assert reason in error
    assert fallbacks_of(failed.job_id) == [
        ("local_fast", "local_quality"),
        ("local_quality", "api_fallback"),
    ]

    best = degraded.wait(timeout=WAIT_S)
    assert best.status == "succeeded" and best.degraded
    # The gate's score is the mean of its verifiers': no JSON fails the checks (0) for both, and
    # the seed's shape score is 0.5 for the broken JSON against 0.2 for the refusal.
    assert (best.tier, best.model) == ("local_fast", "phi3")  # 0.25 beats the refusal's 0.1
    assert best.quality == pytest.approx(0.25)
    assert best.text and "{not json" in best.text
    assert len(store.attempts_of(degraded.job_id)) == 3
