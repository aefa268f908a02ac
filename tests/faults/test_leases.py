"""Leases that hold, on real worker processes: a live slow call keeps its attempt, and a holder
that stalled past its lease cannot write over the delivery that took the attempt over.

The workers run with short delivery settings (soft/hard time limits 2/3 s, visibility timeout
8 s: a lease of 5.5 s, renewed every ~1.8 s while a call runs, and Redis handing an
unacknowledged message out again after 8 s), so the cases a 300 s deployment meets after
minutes happen here in seconds.
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

SHORT = {
    "TIERFLOW_TASK_SOFT_TIME_LIMIT": "2",
    "TIERFLOW_TASK_TIME_LIMIT": "3",
    "TIERFLOW_VISIBILITY_TIMEOUT": "8",
}
# The log names a task by its shadow name when it has one (``run_attempt job=... tier=...``).
_TASK = r"Task (?:tierflow\.run_attempt|run_attempt [^\[]*)\[[^\]]+\]"
RECEIVED = re.compile(_TASK + " received")
DONE = re.compile(_TASK + " succeeded in")


def priced(name: str, latency_ms: int) -> dict:
    return fake_model(
        name, latency_ms=latency_ms, input_cost_per_million=5.0, output_cost_per_million=10.0
    )


def superseded(url: str, job_id: str) -> list[dict]:
    return rows(url, "SELECT * FROM superseded_calls WHERE job_id = :id", id=job_id)


def test_a_call_slower_than_its_lease_and_the_visibility_timeout_runs_once(fleet, database) -> None:
    """A 12 s call: twice the lease, past the visibility timeout. The broker hands the message
    out again mid-call (same task id, same retry number); the renewed lease makes that
    delivery wait instead of calling the model a second time."""
    (worker,) = fleet(fleet_config(local_fast=[priced("slow", 12_000)]), env=SHORT)
    job_id = submit_job("Extract topic from: 'a very slow model'", "extract_topic").job_id
    fig = audit(database, "slow call keeps its lease", [job_id], timeout=60)
    deadline = time.monotonic() + 30  # every delivery has returned (a second call would too)
    while len(DONE.findall(worker.output())) < len(RECEIVED.findall(worker.output())):
        assert time.monotonic() < deadline, worker.output()[-3000:]
        time.sleep(0.25)
    deliveries = len(RECEIVED.findall(worker.output()))
    extra = superseded(database, job_id)
    fig.notes = {"run_attempt_deliveries": deliveries, "superseded_calls": len(extra)}
    fig.report().assert_clean()
    assert fig.succeeded == 1
    assert deliveries >= 2, "the broker did not hand the message out again: nothing was tested"
    assert extra == [], "a second delivery called the model while the first was still calling"
    (attempt,) = attempts(database, [job_id])
    assert attempt["status"] == "passed" and attempt["latency_ms"] >= 12_000
    held = (attempt["finished_at"] - attempt["started_at"]).total_seconds()
    assert held >= 12, f"the claim was taken again {held:.1f} s before the call ended"


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
