"""Batch runs on real Redis, PostgreSQL and worker processes: a few hundred jobs to the end,
a submitter killed mid-submit and rerun, cancel, the cost ceiling, and the dry run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from router import interactive, submit_job
from router.batch import BatchHandle, estimate_batch, read_jsonl, submit_batch
from schemas.tables import Attempt, Job
from tests.support.services import REPO, fake_model, fleet_config
from tierflow import store
from tierflow.core.constants import BATCH_PRIORITY
from tierflow.core.db import session_scope
from tierflow.core.redis_client import get_keys, get_redis
from tierflow.core.settings import get_settings

# One test of this module runs in the fast lane (pytest -m "not slow", README); the
# others carry the slow mark.
pytestmark = [pytest.mark.integration]


def specs(count: int, prefix: str = "note") -> list[dict[str, object]]:
    return [
        {"prompt": f"Merge these duplicate entries: {prefix} {i}", "action_type": "consolidate"}
        for i in range(count)
    ]


def write(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def jobs_of(batch_id: str) -> list[Job]:
    with session_scope() as session:
        return list(session.query(Job).filter(Job.batch_id == batch_id).order_by(Job.batch_line))


def test_a_batch_runs_to_the_end_with_its_results(fleet) -> None:
    fleet(fleet_config(), workers=1, concurrency=8)
    done = submit_batch(iter(specs(200)), name="consolidate-200")
    assert (done.lines, done.sent, done.existing, done.errors) == (200, 200, 0, [])
    handle = BatchHandle(done.batch_id)
    final = handle.wait(timeout=120)
    assert final["state"] == "done" and final["statuses"] == {"succeeded": 200}
    assert sum(final["by_tier"].values()) == 200
    rows = list(handle.results())
    assert [r["line"] for r in rows] == list(range(200))
    by_id = {j.id: j for j in jobs_of(done.batch_id)}
    for row in rows:
        job = by_id[row["job_id"]]
        assert (row["status"], row["text"], row["tier"]) == (job.status, job.text, job.tier)
        assert job.priority == BATCH_PRIORITY
    assert len(list(handle.results("completed"))) == 200
    # The same batch again: everything done is skipped, nothing is sent twice.
    again = submit_batch(iter(specs(200)), name="consolidate-200")
    assert (again.sent, again.existing) == (0, 200)
    assert len(jobs_of(done.batch_id)) == 200


@pytest.mark.slow
def test_batch_lines_skip_the_router_and_interactive_jobs_do_not(fleet) -> None:
    # Tier workers only: a batch line is planned by its submitter and sent to its tier, so the
    # batch finishes; a daemon's job waits for a router, which is what it goes through.
    fleet(fleet_config(), workers=1, concurrency=4,
          queues="tier.local_fast,tier.local_quality,tier.api_fallback")  # fmt: skip
    done = submit_batch(iter(specs(20, "alone")), name="no-router")
    final = BatchHandle(done.batch_id).wait(timeout=60)
    assert final["statuses"] == {"succeeded": 20}
    for job in jobs_of(done.batch_id):
        assert job.plan is not None and job.complexity is not None  # stored as route_job does
        assert [a.tier for a in store.attempts_of(job.id)] == [job.plan["chain"][0]]
    handle = submit_job("Merge these duplicate entries: interactive", "consolidate")
    time.sleep(1.0)
    assert store.job_status(handle.job_id) == "queued", "only a router routes a daemon's job"


@pytest.mark.slow
def test_bad_lines_are_refused_alone_and_changed_lines_conflict(fleet) -> None:
    fleet(fleet_config())
    rows = specs(3)
    rows.insert(1, {"prompt": "", "action_type": "consolidate"})
    rows.insert(2, {"prompt": "x", "colour": "blue"})
    done = submit_batch(iter(rows), name="with-bad-lines")
    assert done.sent == 3 and [e.line for e in done.errors] == [2, 3]
    assert "prompt" in done.errors[0].reason and "colour" in done.errors[1].reason
    changed = specs(3)
    changed[0]["prompt"] = "something else entirely"
    rerun = submit_batch(iter(changed), name="with-bad-lines")
    assert [e.line for e in rerun.errors] == [1] and "idempotency_key" in rerun.errors[0].reason


@pytest.mark.slow
def test_a_submitter_killed_mid_submit_resumes_without_a_duplicate(fleet, tmp_path) -> None:
    fleet(fleet_config(), workers=1, concurrency=8)
    path = write(tmp_path / "big.jsonl", specs(1500, "big"))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "tierflow.cli", "batch", "run", str(path), "--name", "big"]
    proc = subprocess.Popen(command, cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        batch = store.get_batch("big")
        if batch is not None and len(jobs_of(batch.id)) >= 100:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # as the OOM killer would
    proc.wait(10)
    batch = store.get_batch("big")
    assert batch is not None
    stored_before = len(jobs_of(batch.id))
    assert 100 <= stored_before < 1500, "kill the submitter mid-submit"
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    final = BatchHandle(batch.id).wait(timeout=180)
    jobs = jobs_of(batch.id)
    assert len(jobs) == 1500 and [j.batch_line for j in jobs] == list(range(1500))
    assert final["statuses"] == {"succeeded": 1500}


@pytest.mark.slow
def test_cancel_stops_every_queued_job_and_keeps_those_in_flight(fleet) -> None:
    fleet(
        fleet_config(local_fast=[fake_model("slow", latency_ms=300)]),
        workers=1,
        concurrency=2,
    )
    rows = [
        {"prompt": f"Is note {i} a decision or a fact?", "action_type": "classify_memory"}
        for i in range(40)
    ]
    done = submit_batch(iter(rows), name="to-cancel")
    time.sleep(1.0)
    handle = BatchHandle(done.batch_id)
    cancelled = handle.cancel()
    cancelled_at = time.time()
    assert 20 <= cancelled < 40
    final = handle.wait(timeout=60)
    assert final["state"] == "cancelled"
    assert final["statuses"].get("cancelled") == cancelled
    assert final["statuses"].get("succeeded", 0) + cancelled == 40
    time.sleep(1.0)  # any queued message of a cancelled job has had time to be dropped
    with session_scope() as session:
        late = (
            session.query(Attempt)
            .join(Job, Job.id == Attempt.job_id)
            .filter(Job.batch_id == done.batch_id, Job.status == "cancelled")
            .count()
        )
        started = [
            a.started_at.timestamp()
            for a in session.query(Attempt).join(Job, Job.id == Attempt.job_id)
            .filter(Job.batch_id == done.batch_id)
        ]  # fmt: skip
    assert late == 0, "a cancelled job ran an attempt"
    assert max(started) <= cancelled_at + 0.5, "an attempt started after the cancel"


@pytest.mark.slow
def test_a_window_keeps_at_most_n_jobs_of_the_batch_unfinished(fleet) -> None:
    # Eight worker threads could run eight of these at once; the window lets three be open.
    fleet(fleet_config(local_fast=[fake_model("slow", latency_ms=150)]), workers=1, concurrency=8)
    get_redis().delete(get_keys().interactive_seen)  # no daemon at work: the full window
    interactive.forget()
    done = submit_batch(iter(specs(24, "windowed")), name="windowed", in_flight=3)
    assert (done.sent, done.errors) == (24, []) and done.window_waits > 0
    final = BatchHandle(done.batch_id).wait(timeout=60)
    assert final["statuses"] == {"succeeded": 24}
    jobs = jobs_of(done.batch_id)
    # Unfinished at each job's creation, itself included, from the rows' own timestamps.
    open_at = [sum(1 for k in jobs if k.created_at <= j.created_at < k.finished_at) for j in jobs]
    assert max(open_at) == 3, open_at


@pytest.mark.slow
def test_the_window_yields_while_daemons_jobs_are_routed(fleet) -> None:
    fleet(fleet_config(local_fast=[fake_model("slow", latency_ms=100)]), workers=1, concurrency=8)
    # A daemon's job goes through the router, which marks daemons' work as going on.
    get_redis().delete(get_keys().interactive_seen)
    interactive.forget()
    assert submit_job("Extract topic from: 'the login bug'", "extract_topic").wait(30).ok
    assert get_redis().exists(get_keys().interactive_seen)
    # While daemons keep coming (marked as the router marks them), the window of 6 keeps to 1.
    stop = threading.Event()

    def daemons() -> None:
        while not stop.is_set():
            interactive.mark()
            time.sleep(0.1)

    marker = threading.Thread(target=daemons, daemon=True)
    marker.start()
    try:
        done = submit_batch(iter(specs(12, "yielding")), name="yielding", in_flight=6)
    finally:
        stop.set()
        marker.join()
    BatchHandle(done.batch_id).wait(timeout=60)
    jobs = jobs_of(done.batch_id)
    open_at = [sum(1 for k in jobs if k.created_at <= j.created_at < k.finished_at) for j in jobs]
    assert max(open_at) == 1, open_at


@pytest.mark.slow
def test_max_cost_stops_sending_at_the_ceiling_and_a_rerun_resumes(fleet) -> None:
    priced = fake_model("priced", input_cost_per_million=50_000.0, output_cost_per_million=0.0)
    fleet(fleet_config(local_fast=[priced]), workers=1, concurrency=4)
    rows = [{"prompt": f"What is {i} + 1? ({'x' * 40})", "action_type": "classify_memory"}
            for i in range(300)]  # fmt: skip
    done = submit_batch(iter(rows), name="ceiling", max_cost_usd=0.5)
    BatchHandle(done.batch_id).wait(timeout=60)
    spent = store.batch_cost(done.batch_id)
    assert done.stopped_at_cost is not None and done.lines < 300
    assert spent >= 0.5
    # At most one check interval of jobs past the ceiling was sent.
    per_job = spent / max(1, len(jobs_of(done.batch_id)))
    assert spent <= 0.5 + per_job * 100 + per_job
    more = submit_batch(iter(rows), name="ceiling", max_cost_usd=None)
    assert more.existing == done.lines and more.sent == 300 - done.lines


@pytest.mark.slow
def test_dry_run_plans_and_estimates_without_sending(database, config_file, tmp_path) -> None:
    config_file(fleet_config())
    rows = [*specs(5), {"prompt": "ORCHESTRATE: build it", "action_type": "spawn_daemon"}]
    plan = estimate_batch(read_jsonl(write(tmp_path / "plan.jsonl", rows)), get_settings().llm)
    assert plan["jobs"] == 6 and sum(plan["per_tier"].values()) == 6
    assert plan["per_tier"].get("api_fallback") == 1
    assert plan["api_only_usd"] > plan["cost_usd"] >= 0
