"""What ``submit_job`` promises its caller (issue #19), on real PostgreSQL and Redis.

- An idempotency key is bound to the request's fingerprint: the same key and request give the
  same job, the same key and another request raise IdempotencyConflict (nothing stored), also
  when two processes submit at the same moment; the fingerprint is the same in a fresh process.
- The routing flags of ``context`` are booleans; a deadline already past is refused.
- A job whose deadline passes while it waits in a queue ends ``expired`` with no model called.
- ``wait()`` says why it ran out: no worker took the job (which queue), or which tier runs it;
  a job accepted while the broker is unreachable says so, and ``tierflow submit`` prints it.

No worker runs unless a test starts one; the queues are emptied and the jobs left open are
closed after each test, so no later test's fleet picks them up.
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import func, text, update
from sqlalchemy import select as sql_select

from router import client, submit_job
from router.dispatch import enqueue_attempt
from router.mode import get_mode
from router.plan import plan_job
from schemas.jobs import ROUTING_FLAGS, JobRequest, utcnow
from schemas.tables import Attempt, Job
from tests.support import services
from tests.support.services import REPO, fleet_config
from tierflow import store
from tierflow.app.embedded import free_port
from tierflow.core.constants import TERMINAL_STATUSES, Tier
from tierflow.core.db import session_scope
from tierflow.core.errors import (
    IdempotencyConflict,
    JobValidationError,
    JobWaitTimeout,
    TierflowError,
)
from tierflow.core.settings import get_settings
from workers.sweeper import sweep

pytestmark = pytest.mark.integration

PROMPT = "Extract topic from: 'idempotency keys are bound to requests'"
BASE: dict[str, Any] = {
    "prompt": PROMPT,
    "action_type": "extract_topic",
    "context": {"iteration": 12, "files": ["a.py"], "affects_system_state": False},
    "metadata": {"daemon": "d7"},
    "priority": 4,
    "deadline": datetime(2099, 1, 2, 3, 4, 5, 600, tzinfo=UTC),
    "stream": False,
    "allow_degraded": False,
}
CHANGES = {
    "prompt": {"prompt": PROMPT + "!"},
    "action_type": {"action_type": "summarize"},
    "context": {"context": {**BASE["context"], "iteration": 13}},
    "routing flag": {"context": {**BASE["context"], "affects_system_state": True}},
    "metadata": {"metadata": {"daemon": "d8"}},
    "priority": {"priority": 5},
    "deadline": {"deadline": BASE["deadline"] + timedelta(microseconds=1)},
    "no deadline": {"deadline": None},
    "stream": {"stream": True},
    "allow_degraded": {"allow_degraded": True},
}


@pytest.fixture
def submitting(database: str, config_file: Any) -> Iterator[None]:
    """Submissions with no worker running; then the queues are emptied and open jobs closed."""
    config_file(fleet_config())
    with session_scope() as session:
        started = session.execute(sql_select(func.now())).scalar_one()
    yield
    services.delete_prefix(os.environ["TIERFLOW_KEY_PREFIX"], "q:*")
    close_open_jobs(started)


def close_open_jobs(since: datetime) -> None:
    with session_scope() as session:
        session.execute(
            update(Job)
            .where(Job.status.not_in(TERMINAL_STATUSES), Job.created_at >= since)
            .values(status="failed", error="test submission, never run")
        )


def new_key() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


def rows_with_key(key: str) -> int:
    with session_scope() as session:
        count = session.execute(
            sql_select(func.count()).select_from(Job).where(Job.idempotency_key == key)
        ).scalar_one()
        return int(count)


def job_count() -> int:
    with session_scope() as session:
        return int(session.execute(sql_select(func.count()).select_from(Job)).scalar_one())


def stored_fingerprint(job_id: str) -> str | None:
    with session_scope() as session:
        found = session.execute(
            sql_select(Job.request_fingerprint).where(Job.id == job_id)
        ).scalar_one()
        return found


# -- the key is bound to the request ------------------------------------------------------


def test_same_key_and_request_return_the_same_job(submitting: None) -> None:
    key = new_key()
    first = submit_job(**BASE, idempotency_key=key)
    # the same request written differently: keys in another order, the deadline in another zone
    reordered = dict(reversed(list(BASE["context"].items())))
    elsewhere = BASE["deadline"].astimezone(timezone(timedelta(hours=2)))
    again = submit_job(**{**BASE, "context": reordered, "deadline": elsewhere}, idempotency_key=key)
    assert first.created and not again.created
    assert again.job_id == first.job_id and rows_with_key(key) == 1
    expected = JobRequest(**BASE, idempotency_key=key).fingerprint()
    assert stored_fingerprint(first.job_id) == expected


@pytest.mark.parametrize("change", list(CHANGES.values()), ids=list(CHANGES))
def test_same_key_with_another_request_is_a_conflict(
    submitting: None, change: dict[str, Any]
) -> None:
    key = new_key()
    original = submit_job(**BASE, idempotency_key=key)
    before = job_count()
    with pytest.raises(IdempotencyConflict) as caught:
        submit_job(**{**BASE, **change}, idempotency_key=key)
    conflict = caught.value
    assert isinstance(conflict, JobValidationError) and isinstance(conflict, TierflowError)
    assert conflict.key == key and conflict.job_id == original.job_id
    message = str(conflict)
    assert message.startswith("idempotency_key: ") and key in message
    assert original.job_id in message
    assert job_count() == before  # nothing stored
    assert submit_job(**BASE, idempotency_key=key).job_id == original.job_id  # still bound


def test_a_row_stored_before_fingerprints_matches_any_request(submitting: None) -> None:
    key = new_key()
    old = submit_job(**BASE, idempotency_key=key)
    with session_scope() as session:  # as migration 0003 leaves a row stored before it
        session.execute(update(Job).where(Job.id == old.job_id).values(request_fingerprint=None))
    again = submit_job(**{**BASE, "prompt": "another prompt"}, idempotency_key=key)
    assert again.job_id == old.job_id and not again.created and rows_with_key(key) == 1


def test_the_fingerprint_is_sha256_of_the_documented_canonical_json() -> None:
    request = JobRequest(
        prompt="p é",
        action_type="extract_topic",
        context={"b": 1, "a": [1.5, "x"], "n": {"2": None}},
        deadline=datetime(2030, 1, 2, 4, 4, 5, tzinfo=timezone(timedelta(hours=1))),
    )
    canonical = (
        '{"action_type":"extract_topic","allow_degraded":false,'
        '"context":{"a":[1.5,"x"],"b":1,"n":{"2":null}},'
        '"deadline":"2030-01-02T03:04:05.000000+00:00","metadata":{},"priority":5,'
        '"prompt":"p \\u00e9","stream":false}'
    )
    assert request.fingerprint() == hashlib.sha256(canonical.encode()).hexdigest()


# -- other processes ----------------------------------------------------------------------


class Racer:
    """``tests.support.submit_race`` in a process of its own."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.submit_race"], cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

    def send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(message, default=str) + "\n")
        self.proc.stdin.flush()

    def read(self, timeout: float = 30.0) -> dict[str, Any] | None:
        """The next answer, or None when none came within ``timeout``."""
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            return None
        line = self.proc.stdout.readline()
        if not line:
            assert self.proc.stderr is not None
            raise RuntimeError(f"racer exited: {self.proc.stderr.read()[-3000:]}")
        found: dict[str, Any] = json.loads(line)
        return found

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture(scope="module")
def racers(database: str) -> Iterator[list[Racer]]:
    """Two submitter processes, started once for the module (they use the default config)."""
    started = [Racer(), Racer()]
    try:
        for racer in started:
            assert racer.read(60) == {"ready": True}
        yield started
    finally:
        for racer in started:
            racer.close()


def as_message(request: dict[str, Any]) -> dict[str, Any]:
    deadline = request.get("deadline")
    return {**request, "deadline": deadline.isoformat() if deadline else None}


def test_the_fingerprint_is_the_same_in_a_fresh_process(
    submitting: None, racers: list[Racer]
) -> None:
    key = new_key()
    handle = submit_job(**BASE, idempotency_key=key)
    local = JobRequest(**BASE, idempotency_key=key).fingerprint()
    racers[0].send({"fingerprint": {**as_message(BASE), "idempotency_key": key}})
    assert racers[0].read() == {"fingerprint": local}
    assert stored_fingerprint(handle.job_id) == local
    # and that process, given the same request and key, gets this job
    racers[1].send({"submit": {**as_message(BASE), "idempotency_key": key}})
    assert racers[1].read() == {"job_id": handle.job_id, "created": False}


@pytest.mark.parametrize("equal", [True, False], ids=["equal requests", "different requests"])
def test_two_processes_submit_one_key_at_the_same_moment(
    submitting: None, racers: list[Racer], equal: bool
) -> None:
    for _round in range(3):
        key = new_key()
        requests = [BASE, BASE if equal else {**BASE, "prompt": PROMPT + " (other)"}]
        at = time.time() + 0.3
        for racer, request in zip(racers, requests, strict=True):
            racer.send({"submit": {**as_message(request), "idempotency_key": key}, "at": at})
        answers = [racer.read() for racer in racers]
        assert all(answers), answers
        assert rows_with_key(key) == 1, answers
        with session_scope() as session:
            job_id = session.execute(
                sql_select(Job.id).where(Job.idempotency_key == key)
            ).scalar_one()
        winners = [a for a in answers if a and a.get("created")]
        assert len(winners) == 1 and winners[0]["job_id"] == job_id, answers
        (loser,) = [a for a in answers if a and not a.get("created")]
        if equal:
            assert loser == {"job_id": job_id, "created": False}
        else:
            assert loser["conflict"] == job_id and loser["key"] == key, loser


@pytest.mark.parametrize("equal", [True, False], ids=["equal requests", "different requests"])
def test_a_submitter_waits_for_an_uncommitted_first_submission(
    submitting: None, racers: list[Racer], equal: bool
) -> None:
    """The serialisation, made deterministic: the first submission's transaction is held open
    here; the other process's submission waits on it, then reads that row's fingerprint."""
    key = new_key()
    first = JobRequest(**BASE, idempotency_key=key)
    job_id = str(uuid.uuid4())
    with session_scope() as held:
        held.execute(
            text(
                "INSERT INTO jobs (id, idempotency_key, request_fingerprint, status, action_type,"
                " prompt, context, metadata, priority, stream, allow_degraded, deadline,"
                " degraded, fake, cost_usd, api_baseline_cost_usd) VALUES (:id, :key, :fp,"
                " 'queued', :action, :prompt, '{}', '{}', 4, false, false, :deadline, false,"
                " false, 0, 0)"
            ),
            {
                "id": job_id,
                "key": key,
                "fp": first.fingerprint(),
                "action": first.action_type,
                "prompt": first.prompt,
                "deadline": first.deadline,
            },
        )
        second = BASE if equal else {**BASE, "priority": 9}
        racers[0].send({"submit": {**as_message(second), "idempotency_key": key}})
        assert racers[0].read(timeout=1.5) is None  # blocked on the uncommitted row
    answer = racers[0].read()  # the row is committed: the waiting insert did nothing
    if equal:
        assert answer == {"job_id": job_id, "created": False}
    else:
        assert answer is not None and answer["conflict"] == job_id
    assert rows_with_key(key) == 1


# -- what is refused ----------------------------------------------------------------------


@pytest.mark.parametrize("value", ["false", "true", 1, 0, None, [], {"x": 1}])
@pytest.mark.parametrize("flag", ROUTING_FLAGS)
def test_routing_flags_must_be_booleans(submitting: None, flag: str, value: Any) -> None:
    before = job_count()
    with pytest.raises(JobValidationError) as caught:
        submit_job(PROMPT, "extract_topic", {flag: value, "other": "false"})
    assert str(caught.value) == f"context.{flag}: must be a boolean"
    assert job_count() == before


def test_boolean_routing_flags_are_accepted(submitting: None) -> None:
    handle = submit_job(PROMPT, "extract_topic", dict.fromkeys(ROUTING_FLAGS, False))
    assert handle.created and handle.sent


def test_a_past_deadline_is_refused(submitting: None) -> None:
    before = job_count()
    for deadline in (utcnow() - timedelta(seconds=1), utcnow() - timedelta(days=400)):
        with pytest.raises(JobValidationError) as caught:
            submit_job(PROMPT, "extract_topic", deadline=deadline, idempotency_key=new_key())
        assert str(caught.value) == "deadline: deadline is in the past"
    assert job_count() == before


def test_a_retry_after_the_deadline_gets_its_job(submitting: None) -> None:
    key, deadline = new_key(), utcnow() + timedelta(seconds=0.5)
    accepted = submit_job(PROMPT, "extract_topic", deadline=deadline, idempotency_key=key)
    time.sleep(0.6)
    retry = submit_job(PROMPT, "extract_topic", deadline=deadline, idempotency_key=key)
    assert retry.job_id == accepted.job_id and not retry.created
    with pytest.raises(IdempotencyConflict):
        submit_job(PROMPT + "?", "extract_topic", deadline=deadline, idempotency_key=key)


# -- deadlines that pass in a queue -------------------------------------------------------


def attempt_rows(job_id: str) -> list[Attempt]:
    return store.attempts_of(job_id)


def wait_for_status(job_id: str, wanted: set[str], timeout: float) -> str | None:
    end = time.monotonic() + timeout
    while True:
        status = store.job_status(job_id)
        if status in wanted or time.monotonic() > end:
            return status
        time.sleep(0.1)


@pytest.mark.slow
def test_a_deadline_passing_in_a_queue_expires_the_job_without_a_model_call(fleet) -> None:
    fleet(fleet_config(), queues="router")  # routes the job; no worker serves any tier
    deadline = utcnow() + timedelta(seconds=4)
    handle = submit_job(PROMPT, "extract_topic", deadline=deadline)
    assert wait_for_status(handle.job_id, {"routed"}, 4) == "routed"  # waits in tier.local_fast
    time.sleep(max(0.0, (deadline - utcnow()).total_seconds()) + 0.1)

    counts = sweep(utcnow(), timedelta(days=1))
    assert counts["expired"] >= 1
    result = handle.wait(timeout=5)  # expired is terminal: the waiter returns
    assert result.status == "expired" and not result.ok
    assert result.error is not None
    assert result.error.startswith("deadline exceeded; no attempt was made"), result.error
    assert result.attempts == [] and attempt_rows(handle.job_id) == []
    assert sweep(utcnow(), timedelta(days=1))["expired"] == 0  # once


@pytest.mark.slow
def test_an_attempt_starting_after_the_deadline_calls_no_model(fleet) -> None:
    fleet(fleet_config(), queues="tier.local_fast")
    request = JobRequest(
        prompt=PROMPT, action_type="extract_topic", deadline=utcnow() + timedelta(seconds=0.5)
    )
    job_id, _ = store.create_job(request, get_settings().job_deadline_s)
    job = store.load_job(job_id)
    assert job is not None
    plan = plan_job(job.action_type, job.prompt, {}, get_settings().llm, get_mode())
    assert plan.chain[0] is Tier.LOCAL_FAST
    assert store.save_plan(job_id, plan.complexity.value, plan.to_json())
    time.sleep(0.7)
    enqueue_attempt(job_id, Tier.LOCAL_FAST, 0, 0)  # no sweep ran: the attempt itself must see it
    assert wait_for_status(job_id, set(TERMINAL_STATUSES), 20) == "expired"
    assert all(a.model is None for a in attempt_rows(job_id)), "a model was called"


# -- wait() and the broker ----------------------------------------------------------------


def test_wait_says_which_worker_is_missing(submitting: None) -> None:
    handle = submit_job(PROMPT, "extract_topic")
    started = time.monotonic()
    with pytest.raises(JobWaitTimeout) as caught:
        handle.wait(timeout=1)
    assert time.monotonic() - started < 5
    assert str(caught.value) == (
        f"job {handle.job_id} still queued: no worker has taken it in 1s "
        "(is a worker for queue 'router' running?)"
    )

    job = store.load_job(handle.job_id)  # routed by hand: the attempt waits for its tier
    assert job is not None
    plan = plan_job(job.action_type, job.prompt, {}, get_settings().llm, get_mode())
    assert store.save_plan(job.id, plan.complexity.value, plan.to_json())
    with pytest.raises(JobWaitTimeout) as caught:
        handle.wait(timeout=1)
    assert str(caught.value) == (
        f"job {handle.job_id} still queued: no worker has taken it in 1s "
        f"(is a worker for queue 'tier.{plan.chain[0].value}' running?)"
    )

    store.claim_attempt(job.id, 0, 0, plan.chain[0].value, "test-host:task-1", lease_s=60)
    with pytest.raises(JobWaitTimeout) as caught:
        handle.wait(timeout=1.5)
    assert str(caught.value) == f"job {handle.job_id} still running on {plan.chain[0]} after 1.5s"


def test_a_job_stored_while_the_broker_is_down_says_so(
    submitting: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broker_down(job_id: str, priority: int = 5) -> None:
        raise ConnectionRefusedError("[Errno 111] Connection refused")

    monkeypatch.setattr(client, "enqueue_route", broker_down)
    handle = submit_job(PROMPT, "extract_topic")
    assert handle.created and not handle.sent
    assert handle.note == (
        "stored; the broker is unreachable, it will be sent when the broker is back"
    )
    assert store.job_status(handle.job_id) == "queued"  # durable: the sweeper sends it
    with pytest.raises(JobWaitTimeout) as caught:
        handle.wait(timeout=0.5)
    assert str(caught.value).endswith(f"; {handle.note}")


@pytest.mark.slow
def test_tierflow_submit_prints_that_the_broker_is_unreachable(submitting: None) -> None:
    env = {**os.environ, "TIERFLOW_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0"}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "tierflow.cli", "submit", PROMPT, "--action", "extract_topic",
         "--timeout", "120"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "stored; the broker is unreachable, it will be sent when the broker is back" in (
        done.stdout
    )
    assert time.monotonic() - started < 60  # it did not wait for the result
    job_id = done.stdout.split("job ", 1)[1].split()[0]
    assert store.job_status(job_id) == "queued"
