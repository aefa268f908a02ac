"""A daemon's budget across a provider batch (issue 33 item 5), on real Redis, PostgreSQL and
worker processes against the local OpenAI Batch server (``tests/support/batch_providers.py``).

Before the fix, the hold BudgetGate took for a deferred attempt was never settled (the deferral
stops the delivery before SettleBudget, the resume started with no hold): the estimate stayed
on the daemon's day and month. Now the resume settles it to the batch price, an error releases
it, and a job that ends without using its request (cancelled, expired) gives it back.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from router.batch import BatchHandle, submit_batch
from tests.integration.test_provider_batches import (
    DAY,
    KEYS,
    api_entry,
    config_for,
    deferred_all,
    drive,
    items_of,
    jobs_of,
    openai_usage,
    respond,
    specs,
    tick,
    wait_for,
)
from tests.support.batch_providers import OpenAIBatchServer
from tierflow import store
from tierflow.core.constants import TASK_POLL_PROVIDER_BATCHES, TASK_SUBMIT_PROVIDER_BATCHES
from tierflow.core.redis_client import get_keys, get_redis
from tierflow.store.provider_batches import custom_id_for
from workers.budget import spent

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def budgeted(daemon: str, srv: OpenAIBatchServer) -> dict[str, Any]:
    config = config_for(api_entry("gpt", srv, "openai", "TF_TEST_OPENAI_KEY", 2.5, 10.0))
    config["budgets"] = {daemon: {"daily_usd": 50.0, "monthly_usd": 500.0}}
    return config


def lines_of(daemon: str, count: int) -> list[dict[str, Any]]:
    return [{**spec, "metadata": {"daemon": daemon}} for spec in specs(count)]


def used(daemon: str) -> tuple[float, float]:
    return spent(get_redis(), get_keys(), daemon)


def test_deferred_hold_is_settled_to_the_batch_price_or_released(fleet) -> None:
    """10 deferred jobs; the provider batch expires after running 4: the daemon's day and month
    hold exactly the 4 answers' batch price (the 6 expired holds released)."""
    daemon = f"nightly-{uuid.uuid4().hex[:6]}"
    with OpenAIBatchServer(respond) as oai:
        oai.expire, oai.run_before_end = True, 4
        fleet(budgeted(daemon, oai), env=KEYS, concurrency=4)
        done = submit_batch(iter(lines_of(daemon, 10)), name=f"pb-budget-{daemon}",
                            deadline_s=DAY, provider_batch=True)  # fmt: skip
        jobs = jobs_of(done.batch_id)
        deferred_all(jobs)
        held_day, held_month = used(daemon)
        assert held_day > 0 and held_month == pytest.approx(held_day)  # the estimates, held
        tick(TASK_SUBMIT_PROVIDER_BATCHES)
        wait_for(lambda: oai.created, 30, "the provider batch")
        final = drive(BatchHandle(done.batch_id))
        assert final["statuses"] == {"succeeded": 4, "failed": 6}
        charged = 0.0
        for job in jobs_of(done.batch_id):
            if job.status == "succeeded":
                tokens_in, tokens_out = openai_usage(oai, custom_id_for(job.id, 0))
                charged += (tokens_in * 2.5 + tokens_out * 10.0) / 1e6 * 0.5
        assert charged > 0
        day, month = used(daemon)
        assert day == pytest.approx(charged) and month == pytest.approx(charged)
        assert day < held_day  # the synchronous-price estimates are gone
        assert final["cost_usd"] == pytest.approx(charged)


def test_cancelled_jobs_give_their_holds_back(fleet) -> None:
    """Cancelled before their provider batch was sent: back to zero at the next submit tick.
    Cancelled after it was sent: what the provider still charged (two late answers) stays."""
    daemon = f"nightly-{uuid.uuid4().hex[:6]}"
    with OpenAIBatchServer(respond, delay_s=3600) as oai:
        oai.run_before_end = 2
        fleet(budgeted(daemon, oai), env=KEYS, concurrency=4)
        early = submit_batch(iter(lines_of(daemon, 6)), name=f"pb-early-{daemon}",
                             deadline_s=DAY, provider_batch=True)  # fmt: skip
        deferred_all(jobs_of(early.batch_id))
        assert used(daemon)[0] > 0
        assert BatchHandle(early.batch_id).cancel() == 6
        tick(TASK_SUBMIT_PROVIDER_BATCHES)  # drops the unsent items, releases their holds
        wait_for(lambda: len(items_of(jobs_of(early.batch_id), "dropped")) == 6, 30, "dropped")
        wait_for(lambda: used(daemon) == (0.0, 0.0), 10, "the holds released")
        assert not oai.created

        late = submit_batch(iter(lines_of(daemon, 8)), name=f"pb-late-{daemon}",
                            deadline_s=DAY, provider_batch=True)  # fmt: skip
        jobs = jobs_of(late.batch_id)
        deferred_all(jobs)
        tick(TASK_SUBMIT_PROVIDER_BATCHES)
        wait_for(lambda: oai.created, 30, "the provider batch")
        assert BatchHandle(late.batch_id).cancel() == 8
        assert used(daemon)[0] > 0  # still held: the provider may charge what it ran

        def ended() -> bool:
            tick(TASK_POLL_PROVIDER_BATCHES)
            return bool(all(store.superseded_calls_of(j.id) for j in ran_jobs))

        ran = oai.created[0].custom_ids[:2]
        ran_jobs = [j for j in jobs if custom_id_for(j.id, 0) in ran]
        wait_for(ended, 30, "the cancelled batch's late answers")
        late_cost = sum(float(store.superseded_calls_of(j.id)[0].cost_usd) for j in ran_jobs)
        assert late_cost > 0
        wait_for(lambda: used(daemon)[0] == pytest.approx(late_cost), 10, "the holds settled")
        assert used(daemon)[1] == pytest.approx(late_cost)
