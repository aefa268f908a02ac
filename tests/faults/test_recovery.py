"""A dead worker's jobs move on in seconds, not after the broker's visibility timeout.

Two ways, on real worker processes, with the broker's redelivery out of reach (a 120 s
visibility timeout) so only the mechanism under test can rescue a job:

- the lease lapses (2 s here) and the sweeper's next pass re-sends the job
  (:func:`workers.sweeper.sweep`, run here every half second as beat would every 5 s);
- a supervisor that saw the process die releases its leases and re-sends its jobs at once
  (:func:`workers.sweeper.release_dead_worker`, as ``tierflow up`` does on a child's exit).

Every job ends once, charged once (the figures' duplicates and cost checks).
"""

from __future__ import annotations

import signal
import socket
import time
from datetime import timedelta

import pytest

from router import submit_job
from schemas.jobs import utcnow
from tests.faults.helpers import attempts, audit, rows, wait_finished
from tests.support.services import fake_model, fleet_config
from workers.sweeper import release_dead_worker, sweep

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SLOW_BROKER = {
    "TIERFLOW_TASK_SOFT_TIME_LIMIT": "20",
    "TIERFLOW_TASK_TIME_LIMIT": "30",
    "TIERFLOW_VISIBILITY_TIMEOUT": "120",
    "TIERFLOW_LEASE_S": "2",
}


def config(latency_ms: int) -> dict:
    model = fake_model(
        "fake-fast", latency_ms=latency_ms, input_cost_per_million=1.0, output_cost_per_million=2.0
    )
    return fleet_config(local_fast=[model])


def held_by(database: str, worker_name: str) -> list[dict]:
    return rows(
        database,
        "SELECT job_id FROM attempts WHERE status = 'running' AND worker LIKE :w",
        w=f"{worker_name}@%",
    )


def kill_holding(database: str, victim, jobs: list[str], at_least: int) -> list[str]:
    """Wait until ``victim`` holds ``at_least`` attempts, kill -9 it; the jobs it held."""
    deadline = time.monotonic() + 30
    while len(held_by(database, victim.name)) < at_least and time.monotonic() < deadline:
        time.sleep(0.05)
    victim.kill(signal.SIGKILL)
    victim.proc.wait(5)
    held = [r["job_id"] for r in held_by(database, victim.name)]
    assert held, "the victim held no job when it was killed: nothing was tested"
    return held


def test_a_lapsed_lease_is_resent_by_the_next_sweep(fleet, database: str) -> None:
    victim, survivor = fleet(config(2000), workers=2, env=SLOW_BROKER, concurrency=3)
    jobs = [
        submit_job(f"Extract topic from: 'lapse {i}'", "extract_topic").job_id for i in range(8)
    ]
    held = kill_holding(database, victim, jobs, 2)
    killed = time.monotonic()
    swept = {"lapsed": 0}
    while time.monotonic() - killed < 30:
        counts = sweep(utcnow(), timedelta(seconds=120))
        swept["lapsed"] += counts["lapsed"]
        if all(s in ("succeeded", "failed") for s in wait_finished(database, held, 0).values()):
            break
        time.sleep(0.5)
    recovered_s = time.monotonic() - killed
    fig = audit(database, "lapsed lease re-sent", jobs, timeout=30)
    fig.faults = {"kill_9": 1, "held_at_kill": len(held)}
    fig.notes = {"recovered_s": round(recovered_s, 1), "lapsed_resent": swept["lapsed"]}
    fig.report().assert_clean()
    assert fig.succeeded == len(jobs)
    assert swept["lapsed"] >= len(held)
    # lease 2 s + a half-second pass + a 2 s call, with room for a loaded machine
    assert recovered_s < 12, recovered_s
    passed = [a for a in attempts(database, held) if a["status"] == "passed"]
    assert all(a["worker"].startswith(survivor.name + "@") for a in passed)


def test_a_supervisor_releases_a_dead_workers_leases_at_once(fleet, database: str) -> None:
    """With the default 15 s lease: the jobs end a call after the kill, not a lease after."""
    env = {**SLOW_BROKER, "TIERFLOW_LEASE_S": "15"}
    victim, survivor = fleet(config(2000), workers=2, env=env, concurrency=3)
    jobs = [
        submit_job(f"Extract topic from: 'release {i}'", "extract_topic").job_id for i in range(8)
    ]
    pid = victim.proc.pid
    held = kill_holding(database, victim, jobs, 2)
    killed = time.monotonic()
    sent = release_dead_worker(f"{victim.name}@{socket.gethostname()}/{pid}.")
    assert sorted(sent) == sorted(held)
    assert release_dead_worker(f"{victim.name}@{socket.gethostname()}/{pid}.") == []
    wait_finished(database, held, 30)
    recovered_s = time.monotonic() - killed
    fig = audit(database, "dead worker released", jobs, timeout=30)
    fig.faults = {"kill_9": 1, "held_at_kill": len(held)}
    fig.notes = {"recovered_s": round(recovered_s, 1)}
    fig.report().assert_clean()
    assert fig.succeeded == len(jobs)
    assert recovered_s < 10, recovered_s  # well under the 15 s lease
    assert survivor.proc.poll() is None


def test_release_needs_a_prefix() -> None:
    with pytest.raises(ValueError, match="prefix"):
        release_dead_worker("")
