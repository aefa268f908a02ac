"""Per-daemon budgets across several worker processes: concurrent paid jobs never pass the
ceiling by more than one job's cost; the ones refused fail with ``budget exhausted``."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from router import submit_job
from tests.support.services import fake_model, fleet_config
from tierflow.core.redis_client import get_keys, get_redis
from workers.budget import Budgets

# One test of this module runs in the fast lane (pytest -m "not slow", README); the
# others carry the slow mark.
pytestmark = [pytest.mark.integration]

CEILING = 0.3


def test_budget_holds_across_processes(fleet) -> None:
    daemon = f"spender-{uuid.uuid4().hex[:8]}"
    paid = fake_model(
        "paid-api",
        input_cost_per_million=1000.0,
        output_cost_per_million=1000.0,
        max_tokens=40,
        latency_ms=50,
    )
    config = fleet_config(
        api_fallback=[paid], action_tier_overrides={"write_memory": "api_fallback"}
    )
    config["budgets"] = {daemon: {"daily_usd": CEILING, "monthly_usd": 10.0}}
    fleet(config, workers=3)

    def one(i: int):
        handle = submit_job(
            f"Summarize note {i}: budgets hold", "write_memory", metadata={"daemon": daemon}
        )
        return handle.wait(timeout=60)

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(30)))
    passed = [r for r in results if r.ok]
    refused = [r for r in results if not r.ok]
    assert passed and refused
    assert all("budget exhausted" in (r.error or "") for r in refused), refused[0].error
    assert all(r.cost_usd == 0 for r in refused)
    spent = sum(r.cost_usd for r in passed)
    assert spent <= CEILING + max(r.cost_usd for r in passed)
    # every hold was settled to the real cost: Redis's total is what PostgreSQL charged
    day, month = Budgets(get_redis(), get_keys().prefix).spent(daemon)
    assert day == pytest.approx(spent, abs=1e-9) and month == pytest.approx(spent, abs=1e-9)
    # another daemon (or none) is not held to this ceiling
    free = submit_job("Summarize: no budget here", "write_memory").wait(timeout=30)
    assert free.ok and free.cost_usd > 0
