"""The stuck-work gauge's read (tierflow/store/activity.stuck_jobs) on a real PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from schemas.jobs import JobRequest
from tierflow import store
from tierflow.core.db import session_scope
from tierflow.store.activity import stuck_jobs

pytestmark = pytest.mark.integration


def _age(job_id: str, seconds: int) -> None:
    with session_scope() as session:
        session.execute(
            text("UPDATE jobs SET updated_at = now() - make_interval(secs => :s) WHERE id = :id"),
            {"s": seconds, "id": job_id},
        )


def test_stalled_open_jobs_are_counted_by_the_tier_they_wait_for(database: str) -> None:
    before = stuck_jobs(120)
    queued, _ = store.create_job(JobRequest(prompt="p1", action_type="a"), 3600)
    plan = ("simple", {"chain": ["local_quality", "api_fallback"], "tier": "local_quality"})
    routed, _ = store.create_job(JobRequest(prompt="p2", action_type="a"), 3600, plan=plan)
    store.create_job(JobRequest(prompt="p3", action_type="a"), 3600, plan=plan)  # fresh: not stuck
    _age(queued, 600)
    _age(routed, 600)
    after = stuck_jobs(120)
    assert after["router"] - before["router"] == 1
    assert after["local_quality"] - before["local_quality"] == 1
    assert after["local_fast"] == before["local_fast"]
