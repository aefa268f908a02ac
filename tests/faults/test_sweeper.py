"""The sweeper (task ``tierflow.sweep_stuck_jobs``) moves every job that stopped moving.

Each stuck state is built by hand in PostgreSQL, the way a crash or a lost broker send leaves
it, then one sweep is sent to the ``maintenance`` queue of a running worker:

- a job past its deadline ends expired, with the reason and its attempts' story;
- a queued job whose broker send was lost is sent to the router again;
- a routed job whose first attempt was never sent gets it sent;
- a job whose attempt holder died (lease over, message gone) gets that attempt sent again.
"""

from __future__ import annotations

import time
from datetime import timedelta

import pytest

from router.mode import get_mode
from router.plan import plan_job
from schemas.jobs import JobRequest, utcnow
from tests.faults.helpers import Figures, attempts, execute, rows, wait_finished
from tests.support.services import fleet_config
from tierflow import store
from tierflow.core.constants import TASK_SWEEP
from tierflow.core.settings import get_settings
from workers.app import app

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def stored_job(prompt: str, **kwargs) -> str:
    """A job stored the way submit_job stores it, but never sent to the broker."""
    request = JobRequest(prompt=prompt, action_type="extract_topic", **kwargs)
    job_id, created = store.create_job(request, get_settings().job_deadline_s)
    assert created
    return job_id


def routed(job_id: str) -> None:
    job = store.load_job(job_id)
    assert job is not None
    plan = plan_job(job.action_type, job.prompt, {}, get_settings().llm, get_mode())
    assert store.save_plan(job_id, plan.complexity.value, plan.to_json())


def test_sweeper_fails_late_jobs_and_resends_lost_ones(fleet, database) -> None:
    fleet(fleet_config(), workers=1)
    late = stored_job("Extract topic from: 'too late'", deadline=utcnow() - timedelta(seconds=5))
    late_running = stored_job(
        "Extract topic from: 'late, mid-run'", deadline=utcnow() + timedelta(seconds=1)
    )
    routed(late_running)
    store.claim_attempt(late_running, 0, 0, "local_fast", "dead-host:task-1", lease_s=600)
    never_sent = stored_job("Extract topic from: 'broker send lost'")
    first_attempt_lost = stored_job("Extract topic from: 'routed, attempt never sent'")
    routed(first_attempt_lost)
    holder_died = stored_job("Extract topic from: 'holder died'")
    routed(holder_died)
    store.claim_attempt(holder_died, 0, 0, "local_fast", "dead-host:task-2", lease_s=0.2)
    stuck = [never_sent, first_attempt_lost, holder_died]
    time.sleep(1.2)  # the deadline passes, the dead holder's lease runs out
    execute(
        database,
        "UPDATE jobs SET updated_at = now() - interval '10 minutes' WHERE id = ANY(:ids)",
        ids=stuck,
    )

    app.send_task(TASK_SWEEP, kwargs={"stale_after_s": 60}, queue="maintenance")
    status = wait_finished(database, [late, late_running, *stuck], timeout=30)
    errors = {
        r["id"]: r["error"]
        for r in rows(
            database, "SELECT id, error FROM jobs WHERE id = ANY(:ids)", ids=[late, late_running]
        )
    }
    fig = Figures("sweeper", jobs=5)
    fig.succeeded = sum(1 for j in stuck if status.get(j) == "succeeded")
    fig.failed = sum(1 for j in (late, late_running) if status.get(j) == "expired")
    fig.lost = 5 - fig.succeeded - fig.failed
    fig.faults = {
        "past_deadline": 2,
        "lost_route_send": 1,
        "lost_attempt_send": 1,
        "dead_holder": 1,
    }
    fig.report().assert_clean()
    assert status[late] == status[late_running] == "expired"
    assert errors[late].startswith("deadline exceeded; no attempt was made")
    assert errors[late_running].startswith("deadline exceeded; #0 local_fast/-: running")
    assert all(status[j] == "succeeded" for j in stuck), status
    (redone,) = [a for a in attempts(database, [holder_died]) if a["attempt_no"] == 0]
    assert redone["status"] == "passed" and not redone["worker"].startswith("dead-host")
