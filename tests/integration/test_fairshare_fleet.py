"""Fair shares with real workers: two worker processes share one tier's slots through Redis.

How many attempts ran at once is read back from PostgreSQL (each attempt's ``started_at`` and
``finished_at``), not from the admission's own counters.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import pytest

from router import submit_job
from router.dispatch import fair_share
from tests.support.services import fake_model, fleet_config
from tierflow import store
from tierflow.core.constants import Tier

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TIER_CAP = 4


def _config(**model_options: Any) -> dict[str, Any]:
    config = fleet_config(
        local_fast=[
            fake_model(
                "fast", latency_ms=300, limits={"max_concurrency": TIER_CAP}, **model_options
            )
        ]
    )
    config["daemons"] = {"capped": {"max_in_flight": 2}, "solo": {"weight": 1}}
    return config


def _submit(daemon: str, n: int) -> list[str]:
    tag = uuid.uuid4().hex[:8]
    handles = [
        submit_job(
            f"Extract topic from: 'note {tag}-{i} about the login flow'",
            "extract_topic",
            metadata={"daemon": daemon},
            cache=False,
        )
        for i in range(n)
    ]
    waits = []
    for h in handles:
        result = h.wait(timeout=60)
        assert result.status == "succeeded", result.error
        # where the time went (tierflow/store/timing.py), carried on the result
        calls = sum(a.latency_ms or 0 for a in result.attempts)
        assert result.model_ms == pytest.approx(calls)
        if result.tier == Tier.LOCAL_FAST.value:  # else it fell back to a 0 ms model
            assert result.model_ms >= 290  # 300 ms calls
        assert result.overhead_ms == pytest.approx(result.latency_ms - result.model_ms)
        assert result.queue_ms is not None and result.fleet_ms is not None
        assert result.queue_ms + result.fleet_ms == pytest.approx(result.overhead_ms)
        waits.append(result.queue_ms)
    if daemon == "capped":  # 8 jobs, 2 at a time, 300 ms each: the last waited 3 rounds
        assert max(waits) >= 800
    return [h.job_id for h in handles]


def _intervals(job_ids: list[str]) -> list[tuple[datetime, datetime]]:
    spans = []
    for job_id in job_ids:
        for a in store.attempts_of(job_id):
            if a.tier == Tier.LOCAL_FAST.value:  # a retried job may end on the next tier
                assert a.finished_at is not None
                spans.append((a.started_at, a.finished_at))
    return spans


def _most_at_once(spans: list[tuple[datetime, datetime]]) -> int:
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    now = most = 0
    for _, step in events:  # an end sorts before a start at the same instant
        now += step
        most = max(most, now)
    return most


def test_a_capped_daemon_stays_under_its_cap_and_a_daemon_alone_fills_the_tier(fleet) -> None:
    fleet(_config(), workers=2, concurrency=4)  # 8 worker threads, 4 slots
    capped = _submit("capped", 8)
    assert _most_at_once(_intervals(capped)) == 2  # at its cap, never above, 6 slots free
    solo = _submit("solo", 12)
    assert _most_at_once(_intervals(solo)) == TIER_CAP  # every slot, never more
    loads = fair_share().loads(Tier.LOCAL_FAST)
    assert loads["capped"].running == 0 and loads["capped"].waiting == 0
    assert loads["solo"].running == 0 and loads["solo"].served == 12


def test_retried_attempts_come_back_through_admission_and_leak_no_slot(fleet) -> None:
    fleet(_config(failure_rate=0.5, failure="server_error"), workers=2, concurrency=4)
    jobs = _submit("retrier", 10)
    spans = _intervals(jobs)
    assert len(spans) > len(jobs)  # some attempts failed and were retried in the tier
    assert _most_at_once(spans) <= TIER_CAP
    load = fair_share().loads(Tier.LOCAL_FAST)["retrier"]
    assert load.running == 0 and load.waiting == 0 and load.served == len(spans)
