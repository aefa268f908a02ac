"""Attempt claims (:func:`workers.store.claim_attempt`): who may run (job, attempt_no).

A redelivered or duplicated message finds the attempt finished (replay), held under a live lease
(wait), or abandoned (take over); the same delivery retried after a database error takes it back
at once, on whichever worker the retry lands. Leases run on PostgreSQL's clock.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from schemas.jobs import JobRequest
from tierflow import store
from tierflow.core.constants import AttemptStatus, JobStatus
from tierflow.core.settings import get_settings
from tierflow.store import Claim

pytestmark = pytest.mark.integration


@pytest.fixture
def job_id(database: str) -> Iterator[str]:
    request = JobRequest(prompt="Extract topic from: 'claims'", action_type="extract_topic")
    job_id, _ = store.create_job(request, get_settings().job_deadline_s)
    yield job_id
    # never sent to a broker: close it, or a later test's sweeper would send it to its fleet
    store.finalize_job(job_id, JobStatus.FAILED, error="test fixture, never run")


def claim(job_id: str, worker: str, lease_s: float = 30.0) -> store.ClaimResult:
    return store.claim_attempt(job_id, 0, 0, "local_fast", worker, lease_s=lease_s)


def test_live_lease_makes_another_delivery_wait(job_id: str) -> None:
    assert claim(job_id, "host-a:task-1").claim is Claim.OWNED
    busy = claim(job_id, "host-b:task-2")
    assert busy.claim is Claim.BUSY and 25 < busy.lease_left_s <= 30


def test_same_delivery_retried_on_another_worker_takes_it_back(job_id: str) -> None:
    assert claim(job_id, "host-a:task-1").claim is Claim.OWNED
    assert claim(job_id, "host-b:task-1").claim is Claim.OWNED  # autoretry, other worker
    assert claim(job_id, "host-c:task-9").claim is Claim.BUSY


def test_abandoned_lease_is_taken_over_and_finished_attempt_is_replayed(job_id: str) -> None:
    assert claim(job_id, "host-a:task-1", lease_s=0.2).claim is Claim.OWNED
    time.sleep(0.3)  # the holder died
    assert claim(job_id, "host-b:task-2").claim is Claim.OWNED
    store.finish_attempt(job_id, 0, status=AttemptStatus.PASSED.value, cost_usd=0.5)
    # a late finish by the dead holder's twin changes nothing: the first outcome wins
    row = store.finish_attempt(job_id, 0, status=AttemptStatus.ERROR.value, cost_usd=9)
    assert row.status == "passed" and float(row.cost_usd) == 0.5
    done = claim(job_id, "host-a:task-1")
    assert done.claim is Claim.DONE and done.attempt is not None
    assert done.attempt.status == "passed"


def test_release_only_by_the_holder(job_id: str) -> None:
    assert claim(job_id, "host-a:task-1").claim is Claim.OWNED
    store.release_attempt(job_id, 0, "host-b:task-2")  # not the holder: no effect
    assert claim(job_id, "host-c:task-3").claim is Claim.BUSY
    store.release_attempt(job_id, 0, "host-a:task-1")
    assert claim(job_id, "host-c:task-3").claim is Claim.OWNED
