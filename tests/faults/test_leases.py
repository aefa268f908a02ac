"""Leases that hold, on real worker processes: a live slow call keeps its attempt (its lease is
a heartbeat, renewed every third of itself), and a holder that stalled past its lease cannot
write over the delivery that took the attempt over.

The workers run with short delivery settings, so the cases a deployment meets after a lease
(15 s by default) happen here in a few seconds.
"""

from __future__ import annotations

import re
import signal
import time

import pytest

from router import submit_job
from tests.faults.helpers import attempts, audit, rows
from tests.support.services import fake_model, fleet_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# A 1.5 s lease (renewed every 0.5 s) under a 20 s hard limit: a call four times its lease.
HEARTBEAT = {
    "TIERFLOW_TASK_SOFT_TIME_LIMIT": "15",
    "TIERFLOW_TASK_TIME_LIMIT": "20",
    "TIERFLOW_VISIBILITY_TIMEOUT": "30",
    "TIERFLOW_LEASE_S": "1.5",
}
# A frozen holder loses its 2 s lease; Redis hands its message to another worker after 8 s.
SHORT = {
    "TIERFLOW_TASK_SOFT_TIME_LIMIT": "5",
    "TIERFLOW_TASK_TIME_LIMIT": "6",
    "TIERFLOW_VISIBILITY_TIMEOUT": "8",
    "TIERFLOW_LEASE_S": "2",
}
# The log names a task by its shadow name when it has one (``run_attempt job=... tier=...``).
_TASK = r"Task (?:tierflow\.run_attempt|run_attempt [^\[]*)\[[^\]]+\]"
RECEIVED = re.compile(_TASK + " received")


def priced(name: str, latency_ms: int) -> dict:
    return fake_model(
        name, latency_ms=latency_ms, input_cost_per_million=5.0, output_cost_per_million=10.0
    )


def superseded(url: str, job_id: str) -> list[dict]:
    return rows(url, "SELECT * FROM superseded_calls WHERE job_id = :id", id=job_id)


def test_a_call_four_times_its_lease_keeps_its_attempt(fleet, database) -> None:
    """A 6 s call under a 1.5 s lease: the keeper renews it every 0.5 s, so the attempt stays
    this delivery's for the whole call (no takeover, no superseded call), and it ends once."""
    (worker,) = fleet(fleet_config(local_fast=[priced("slow", 6_000)]), env=HEARTBEAT)
    job_id = submit_job("Extract topic from: 'a slow model'", "extract_topic").job_id
    fig = audit(database, "slow call keeps its heartbeat lease", [job_id], timeout=60)
    deliveries = len(RECEIVED.findall(worker.output()))
    extra = superseded(database, job_id)
    fig.notes = {"run_attempt_deliveries": deliveries, "superseded_calls": len(extra)}
    fig.report().assert_clean()
    assert fig.succeeded == 1 and deliveries == 1
    assert extra == [], "the attempt was taken over while its call still ran"
    (attempt,) = attempts(database, [job_id])
    assert attempt["status"] == "passed" and attempt["latency_ms"] >= 6_000
    held = (attempt["finished_at"] - attempt["started_at"]).total_seconds()
    assert held >= 6, f"the claim was taken again {held:.1f} s before the call ended"


def test_a_stalled_holder_is_fenced_out_and_its_call_still_counts(fleet, database) -> None:
    """Worker A is frozen (SIGSTOP) mid-call: its lease stops being renewed and runs out; the
    broker hands its message to worker B, which takes the attempt over and calls the model.
    A is thawed while B's call runs: A's call is over, its write comes first, and is fenced
    out (the row stays B's, running); A's call is recorded as superseded and paid for in the
    job's cost, and A sends nothing and ends nothing. B's write lands and ends the job."""
    config = fleet_config(local_fast=[priced("steady", 3_000)])
    (a,) = fleet(config, env=SHORT, name="wa")
    job_id = submit_job("Extract topic from: 'a frozen worker'", "extract_topic").job_id

    def holder() -> dict:
        found = attempts(database, [job_id])
        return found[0] if found else {"worker": "", "status": ""}

    def wait_until(what, timeout: float, log) -> None:
        deadline = time.monotonic() + timeout
        while not what():
            assert time.monotonic() < deadline, log()[-3000:]
            time.sleep(0.05)

    wait_until(lambda: holder()["worker"].startswith("wa@"), 20, a.output)
    a.kill(signal.SIGSTOP)
    try:
        (b,) = fleet(config, env=SHORT, name="wb")
        wait_until(lambda: holder()["worker"].startswith("wb@"), 45, b.output)
        assert holder()["status"] == "running"  # B is calling
    finally:
        a.kill(signal.SIGCONT)
    wait_until(lambda: bool(superseded(database, job_id)), 10, a.output)
    fenced = holder()  # A's write came and went: the row is still B's, still running
    fig = audit(database, "stalled holder fenced", [job_id], timeout=30)
    time.sleep(0.5)
    (late,) = superseded(database, job_id)
    (attempt,) = attempts(database, [job_id])  # A sent no next attempt and wrote nothing here
    # The row stayed B's. Usually B is still calling when A's write is refused; on a loaded
    # machine B may already have finished, and A is then refused by the finished row instead.
    assert fenced["worker"].startswith("wb@") and fenced["status"] in ("running", "passed"), fenced
    if fenced["status"] == "running":
        assert late["at"] < attempt["finished_at"]  # A was fenced out while B still held it
    assert late["worker"].startswith("wa@") and late["status"] == "passed"
    assert float(late["cost_usd"]) > 0 and late["model"] == "steady"
    assert attempt["worker"].startswith("wb@") and attempt["status"] == "passed"
    (job,) = rows(database, "SELECT cost_usd, status, text FROM jobs WHERE id = :id", id=job_id)
    assert job["status"] == "succeeded" and job["text"] == attempt["text"]
    assert job["cost_usd"] == attempt["cost_usd"] + late["cost_usd"]
    assert "'superseded'" in a.output(), a.output()[-3000:]
    fig.faults = {"sigstop": 1}
    fig.notes = {"superseded_calls": 1}
    fig.report().assert_clean()
