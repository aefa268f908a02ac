"""A worker killed with ``kill -9`` mid-job, and a worker stopped with SIGTERM mid-job.

Short delivery timings (soft/hard limit 8/10 s, visibility timeout 15 s) make Redis hand the dead
worker's unacknowledged messages to the survivor within the test.
"""

from __future__ import annotations

import signal
import time

import pytest

from router import submit_job
from tests.faults.helpers import attempts, audit, rows
from tests.support.services import fake_model, fleet_config

# One test of this module runs in the fast lane (pytest -m "not slow", README); the
# others carry the slow mark.
pytestmark = [pytest.mark.integration]

FAST_DELIVERY = {
    "TIERFLOW_TASK_SOFT_TIME_LIMIT": "8",
    "TIERFLOW_TASK_TIME_LIMIT": "10",
    "TIERFLOW_VISIBILITY_TIMEOUT": "15",
    "TIERFLOW_LEASE_S": "3",  # the redelivered message finds the dead holder's lease over
}


def slow_config(latency_ms: int) -> dict:
    return fleet_config(
        local_fast=[
            fake_model(
                "fake-fast",
                latency_ms=latency_ms,
                input_cost_per_million=1.0,
                output_cost_per_million=2.0,
            )
        ]
    )


def running_on(database: str, worker_name: str) -> list[dict]:
    return rows(
        database,
        "SELECT job_id, attempt_no FROM attempts WHERE status = 'running' AND worker LIKE :w",
        w=f"{worker_name}@%",
    )


def test_kill_9_mid_job_every_job_succeeds_exactly_once(fleet, database: str) -> None:
    victim, survivor = fleet(slow_config(2500), workers=2, env=FAST_DELIVERY, concurrency=3)
    jobs = [
        submit_job(f"Extract topic from: 'crash test note {i}'", "extract_topic").job_id
        for i in range(12)
    ]
    deadline = time.monotonic() + 20
    while len(running_on(database, victim.name)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    in_flight = running_on(database, victim.name)
    assert in_flight, "the victim never started a job"
    victim.kill(signal.SIGKILL)
    victim.proc.wait(5)
    killed_at = time.monotonic()

    fig = audit(database, "kill -9 worker", jobs, timeout=60)
    fig.faults = {"workers_killed": 1, "jobs_in_flight_at_kill": len(in_flight)}
    fig.notes["recovered_after_s"] = round(time.monotonic() - killed_at, 1)
    # the jobs the victim held finished on the survivor
    rescued = {r["job_id"] for r in in_flight}
    passed = [a for a in attempts(database, rescued) if a["status"] == "passed"]
    fig.notes["rescued_by_survivor"] = sum(
        1 for a in passed if (a["worker"] or "").startswith(survivor.name + "@")
    )
    fig.report().assert_clean()
    assert fig.succeeded == len(jobs)
    assert fig.notes["rescued_by_survivor"] == len(rescued)
    assert survivor.proc.poll() is None


@pytest.mark.slow
def test_sigterm_finishes_the_job_in_flight_before_exiting(fleet, database: str) -> None:
    (worker,) = fleet(slow_config(3000), workers=1, env=FAST_DELIVERY, concurrency=2)
    job_id = submit_job("Extract topic from: 'graceful stop'", "extract_topic").job_id
    deadline = time.monotonic() + 20
    while not running_on(database, worker.name) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert running_on(database, worker.name), "the job never started"
    worker.kill(signal.SIGTERM)
    signalled = time.monotonic()
    code = worker.proc.wait(30)
    waited = time.monotonic() - signalled
    # no other worker exists: whatever is stored now was stored by the stopping worker
    (job,) = rows(database, "SELECT status FROM jobs WHERE id = :id", id=job_id)
    (attempt,) = attempts(database, [job_id])
    print(
        f"\n[SIGTERM] exit code {code} after {waited:.1f}s; job {job['status']}, "
        f"attempt {attempt['status']} by {attempt['worker']}"
    )
    assert code == 0
    assert job["status"] == "succeeded"
    assert attempt["status"] == "passed" and attempt["worker"].startswith(worker.name + "@")
    assert waited > 1.0  # it did wait for the job (3 s of latency) rather than drop it
    assert "Warm shutdown" in worker.output() or "warm shutdown" in worker.output().lower()
