"""A job submitted here is routed, run and stored by workers in other processes."""

from __future__ import annotations

import pytest

from router import submit_job
from tests.support.services import fake_model, fleet_config
from tierflow import store

# One test of this module runs in the fast lane (pytest -m "not slow", README); the
# others carry the slow mark.
pytestmark = [pytest.mark.integration]


@pytest.mark.slow
def test_job_runs_on_its_tier_in_another_process(fleet) -> None:
    fleet(fleet_config())
    handle = submit_job("Extract topic from: 'Fixed auth bug in login flow'", "extract_topic")
    result = handle.wait(timeout=30)
    assert result.status == "succeeded", result.error
    assert result.tier == "local_fast"
    assert result.model == "fake-fast"
    assert result.fake is True
    assert "[FAKE fake-fast]" in (result.text or "")
    attempts = store.attempts_of(handle.job_id)
    assert [(a.tier, a.status) for a in attempts] == [("local_fast", "passed")]
    assert attempts[0].worker and attempts[0].input_tokens > 0


def test_quality_failure_escalates_to_next_tier_with_both_attempts(fleet) -> None:
    config = fleet_config(
        local_fast=[fake_model("fast-bad-json", answer="bad_json")],
    )
    fleet(config)
    handle = submit_job("Is this a decision or a fact? 'We chose React'", "classify_memory")
    result = handle.wait(timeout=30)
    assert result.status == "succeeded", result.error
    assert result.tier == "local_quality"
    attempts = store.attempts_of(handle.job_id)
    assert [(a.tier, a.status) for a in attempts] == [
        ("local_fast", "rejected"),
        ("local_quality", "passed"),
    ]
    assert "format: invalid JSON" in (attempts[0].quality_issues or [])


@pytest.mark.slow
def test_idempotency_key_returns_same_job(fleet) -> None:
    fleet(fleet_config())
    first = submit_job("Should we retry? attempts: 3", "yes_no_decision", idempotency_key="k-1")
    second = submit_job("Should we retry? attempts: 3", "yes_no_decision", idempotency_key="k-1")
    assert first.job_id == second.job_id
    assert first.created and not second.created
    assert second.wait(timeout=30).status == "succeeded"
