"""Fleet modes (second seed): a switch from Python reaches running workers at their next job."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from router import get_mode, mode_history, set_mode, submit_job
from tests.support.services import fake_model, fleet_config
from tierflow import store
from tierflow.core.constants import Mode
from tierflow.core.errors import ModeError
from tierflow.core.redis_client import get_keys, get_redis
from tierflow.store.modes import last_switched_to

# One test of this module runs in the fast lane (pytest -m "not slow", README); the
# others carry the slow mark.
pytestmark = [pytest.mark.integration]

WAIT_S = 30


@pytest.fixture
def modes(fleet) -> Iterator[object]:
    """The fleet factory; the mode is put back to auto afterwards (the history is in PostgreSQL
    and outlives the test's Redis keys, so a leftover mode would reach the next test)."""
    yield fleet
    set_mode(Mode.AUTO, reason="test teardown")


def tiers_tried(job_id: str) -> list[str]:
    return [a.tier for a in store.attempts_of(job_id)]


def test_switch_from_python_reaches_the_next_job_and_is_recorded(modes) -> None:
    modes(fleet_config())
    assert get_mode() is Mode.AUTO
    auto = submit_job("Extract topic from: 'Fixed auth bug in login flow'", "extract_topic")
    assert auto.wait(WAIT_S).tier == "local_fast"

    to_cloud = set_mode("cloud", reason="local GPUs under maintenance")
    cloud = submit_job("Extract topic from: 'Added retries to the uploader'", "extract_topic")
    result = cloud.wait(WAIT_S)
    assert result.status == "succeeded", result.error
    assert result.tier == "api_fallback" and tiers_tried(cloud.job_id) == ["api_fallback"]
    stored = store.load_job(cloud.job_id)
    assert stored is not None and stored.plan is not None
    assert stored.plan["mode"] == "cloud" and "mode cloud: API tier only" in stored.plan["reasons"]

    to_local = set_mode(Mode.LOCAL)
    local = submit_job("Analyze this stack trace and suggest fixes: [trace]", "debug_error")
    result = local.wait(WAIT_S)
    assert result.status == "succeeded", result.error
    assert result.tier == "local_quality" and tiers_tried(local.job_id) == ["local_quality"]
    assert result.cost_usd == 0.0

    history = mode_history(2)
    assert [(c.from_mode, c.to_mode, c.source) for c in history] == [
        ("cloud", "local", "manual"),
        ("auto", "cloud", "manual"),
    ]
    assert history[1].reason == "local GPUs under maintenance"
    assert history[1].at == to_cloud.at and history[0].at == to_local.at
    assert history[0].at >= history[1].at

    # Persisted: the mode is the newest switch in PostgreSQL, and no Redis key holds a copy
    # that could disagree with it (or be lost).
    assert last_switched_to() == "local" and get_mode() is Mode.LOCAL
    assert not get_redis().exists(f"{get_keys().prefix}:mode")

    automatic = set_mode("auto", source="automatic", reason="local engine healthy again")
    assert (automatic.from_mode, automatic.to_mode, automatic.source) == ("local", "auto", "auto")
    assert mode_history(1)[0].source == "auto"


@pytest.mark.slow
def test_switch_to_local_stops_the_api_step_of_a_job_in_flight(modes) -> None:
    modes(
        fleet_config(
            local_fast=[fake_model("fast-bad", answer="bad_json")],
            local_quality=[fake_model("slow-bad", answer="bad_json", latency_ms=1500)],
        )
    )
    handle = submit_job("Is this a decision or a fact? 'We chose React'", "classify_memory")
    deadline = time.monotonic() + WAIT_S
    while "local_quality" not in tiers_tried(handle.job_id):
        assert time.monotonic() < deadline, "the job never reached local_quality"
        time.sleep(0.05)
    set_mode("local", reason="no API spend from now on")

    result = handle.wait(WAIT_S)
    assert result.status == "failed"
    attempts = store.attempts_of(handle.job_id)
    assert [(a.tier, a.status) for a in attempts] == [
        ("local_fast", "rejected"),
        ("local_quality", "rejected"),
        ("api_fallback", "skipped"),
    ]
    assert attempts[-1].error == "mode local does not allow tier api_fallback"
    assert "mode local does not allow tier api_fallback" in (result.error or "")
    assert result.cost_usd == 0.0


@pytest.mark.slow
def test_a_mode_no_tier_can_serve_is_refused(config_file, database) -> None:
    config_file(
        fleet_config(
            local_fast=[fake_model("f-off", enabled=False)],
            local_quality=[fake_model("q-off", enabled=False)],
        )
    )
    before = mode_history(1)
    with pytest.raises(ModeError, match="no enabled model"):
        set_mode("local")
    with pytest.raises(ModeError, match="unknown mode"):
        set_mode("hybrid")
    assert mode_history(1) == before
