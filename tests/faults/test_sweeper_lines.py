"""The sweeper's backlog check counts the attempts waiting in a contended tier's daemon lines
(router/fairshare.py), not only its Celery queue: on such a tier the queue holds admitted
attempts alone, and a job waiting its turn waits in a line in Redis. One pass in this process
on real PostgreSQL and Redis, on a database of its own (no other test's unfinished job in it).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest

from router.dispatch import enqueue_attempt, fair_share
from router.plan import plan_job
from schemas.jobs import JobRequest, utcnow
from tests.faults.helpers import execute
from tests.support import services
from tests.support.services import fake_model, fleet_config
from tierflow import store
from tierflow.core.constants import Mode, Tier, tier_queue
from tierflow.core.db import reset_engines, upgrade_database
from tierflow.core.settings import get_settings, reset_settings
from workers.queues import queue_depth
from workers.sweeper import sweep

pytestmark = pytest.mark.integration

FAST = tier_queue(Tier.LOCAL_FAST)
STALE = timedelta(seconds=60)


@pytest.fixture
def own_db(
    database: str, monkeypatch: pytest.MonkeyPatch, config_file: Callable[[dict[str, Any]], None]
) -> Iterator[str]:
    name = f"tierflow_sweep_lines_{os.urandom(4).hex()}"
    url = services.create_database(name)
    monkeypatch.setenv("TIERFLOW_DATABASE_URL", url)
    config_file(fleet_config(local_fast=[fake_model("one-slot", limits={"max_concurrency": 1})]))
    reset_settings()
    upgrade_database(url)
    prefix = os.environ["TIERFLOW_KEY_PREFIX"]
    _clear(prefix)
    yield url
    _clear(prefix)
    reset_engines()
    services.drop_database(name)
    monkeypatch.undo()
    reset_settings()


def _clear(prefix: str) -> None:
    services.delete_prefix(prefix, "q:*")
    services.delete_prefix(prefix, "fair:*")


def _routed_job(prompt: str) -> str:
    request = JobRequest(prompt=prompt, action_type="extract_topic")
    job_id, _ = store.create_job(request, get_settings().job_deadline_s)
    job = store.load_job(job_id)
    assert job is not None
    plan = plan_job(job.action_type, job.prompt, {}, get_settings().llm, Mode.AUTO)
    assert store.save_plan(job_id, plan.complexity.value, plan.to_json())
    assert plan.chain[0] is Tier.LOCAL_FAST
    return job_id


def _age(url: str, job_ids: list[str]) -> None:
    execute(
        url,
        "UPDATE jobs SET updated_at = now() - interval '10 minutes' WHERE id = ANY(:ids)",
        ids=job_ids,
    )


def test_work_waiting_in_a_daemon_line_is_a_backlog(own_db: str) -> None:
    # The tier's one slot is held (its attempt runs elsewhere); a job of daemon d2 waits in
    # its line for it, so the tier's Celery queue is empty.
    holder = {"m": "held:0:0:0"}
    assert fair_share().offer(Tier.LOCAL_FAST, "d1", holder["m"], holder, 5) == [holder]
    in_line = _routed_job("Extract topic from: 'waits in its daemon line'")
    enqueue_attempt(in_line, Tier.LOCAL_FAST, 0, 0, daemon="d2")
    loads = fair_share().loads(Tier.LOCAL_FAST)
    assert loads["d2"].waiting == 1 and queue_depth(FAST) == 0

    # Both that job and another stall: each may be waiting its turn in the line, so neither is
    # re-sent (they are touched), as behind a queue's backlog.
    stalled = _routed_job("Extract topic from: 'message lost, or waiting in a line'")
    _age(own_db, [in_line, stalled])
    counts = sweep(utcnow(), STALE)
    assert counts["resent"] == 0 and counts["waiting"] == 2, counts
    assert sum(load.waiting for load in fair_share().loads(Tier.LOCAL_FAST).values()) == 1

    # The lines empty (and the queue with them): the same jobs, stalled again, are re-sent.
    _clear(os.environ["TIERFLOW_KEY_PREFIX"])
    _age(own_db, [in_line, stalled])
    assert sweep(utcnow(), STALE)["resent"] == 2
