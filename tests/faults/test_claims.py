"""Attempt claims (:func:`workers.store.claim_attempt`): who may run (job, attempt_no).

A redelivered or duplicated message finds the attempt finished (replay), held under a live lease
(wait), or abandoned (take over); the same delivery retried after a database error takes it back
at once, on whichever worker the retry lands. Leases run on PostgreSQL's clock, are renewed
while their call runs, and fence the outcome's write: a holder that lost its lease cannot write
over the new holder's row, and its call is recorded as superseded, its cost counted.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import func, update

from schemas.jobs import JobRequest
from schemas.tables import Attempt
from tierflow import store
from tierflow.core.constants import AttemptStatus, JobStatus
from tierflow.core.db import session_scope
from tierflow.core.settings import get_settings
from tierflow.store import Claim
from workers.leases import LeaseKeeper

pytestmark = pytest.mark.integration


@pytest.fixture
def job_id(database: str) -> Iterator[str]:
    request = JobRequest(prompt="Extract topic from: 'claims'", action_type="extract_topic")
    job_id, _ = store.create_job(request, get_settings().job_deadline_s)
    yield job_id
    # never sent to a broker: close it, or a later test's sweeper would send it to its fleet
    store.finalize_job(job_id, JobStatus.FAILED, error="test fixture, never run")


def claim(job_id: str, worker: str, lease_s: float = 30.0, retry: int = 0) -> store.ClaimResult:
    return store.claim_attempt(job_id, 0, 0, "local_fast", worker, lease_s=lease_s, retry=retry)


def test_live_lease_makes_another_delivery_wait(job_id: str) -> None:
    assert claim(job_id, "host-a:task-1").claim is Claim.OWNED
    busy = claim(job_id, "host-b:task-2")
    assert busy.claim is Claim.BUSY and 25 < busy.lease_left_s <= 30


def test_same_delivery_retried_on_another_worker_takes_it_back(job_id: str) -> None:
    assert claim(job_id, "host-a:task-1").claim is Claim.OWNED
    assert claim(job_id, "host-b:task-1", retry=1).claim is Claim.OWNED  # autoretry, elsewhere
    assert claim(job_id, "host-c:task-9", retry=5).claim is Claim.BUSY  # another task


def test_the_same_run_handed_out_again_respects_the_live_lease(job_id: str) -> None:
    """Redis hands an unacknowledged message out again once its visibility timeout passed,
    with the same task id and retry number, while the first run may still be calling."""
    assert claim(job_id, "host-a:task-1", retry=2).claim is Claim.OWNED
    again = claim(job_id, "host-b:task-1", retry=2)
    assert again.claim is Claim.BUSY and again.lease_left_s > 25
    assert claim(job_id, "host-a:task-1", retry=1).claim is Claim.BUSY  # an older run, too


def test_abandoned_lease_is_taken_over_and_finished_attempt_is_replayed(job_id: str) -> None:
    assert claim(job_id, "host-a:task-1", lease_s=0.2).claim is Claim.OWNED
    time.sleep(0.3)  # the holder died
    assert claim(job_id, "host-b:task-2").claim is Claim.OWNED
    done = store.finish_attempt(
        job_id, 0, worker="host-b:task-2", status=AttemptStatus.PASSED.value, cost_usd=0.5
    )
    assert done.landed and done.attempt is not None and done.attempt.status == "passed"
    # a late finish by the new holder's twin changes nothing: the first outcome wins
    again = store.finish_attempt(
        job_id, 0, worker="host-b:task-2", status=AttemptStatus.ERROR.value, cost_usd=9
    )
    assert not again.landed and again.attempt is not None
    assert again.attempt.status == "passed" and float(again.attempt.cost_usd) == 0.5
    replay = claim(job_id, "host-a:task-1")
    assert replay.claim is Claim.DONE and replay.attempt is not None
    assert replay.attempt.status == "passed"


def test_a_late_writer_whose_lease_was_taken_over_is_fenced_out(job_id: str) -> None:
    """The old holder stalled past its lease; the new holder is still calling: the old one's
    outcome must not land on the row the new holder owns, even though it is still running."""
    assert claim(job_id, "host-a:task-1", lease_s=0.2).claim is Claim.OWNED
    time.sleep(0.3)
    assert claim(job_id, "host-b:task-2").claim is Claim.OWNED  # takes over, starts calling
    late = store.finish_attempt(
        job_id, 0, worker="host-a:task-1", status=AttemptStatus.PASSED.value, cost_usd=0.7
    )
    assert not late.landed and late.attempt is not None
    assert late.attempt.status == "running" and late.attempt.worker == "host-b:task-2"
    assert late.attempt.lease_until is not None and float(late.attempt.cost_usd) == 0
    # its paid call is recorded once (a retried Persist does not record it twice) and counted
    assert store.record_superseded_call(
        job_id, 0, "host-a:task-1", status="passed", model="m", cost_usd=0.7, input_tokens=3
    )
    assert not store.record_superseded_call(
        job_id, 0, "host-a:task-1", status="passed", model="m", cost_usd=0.7, input_tokens=3
    )
    (call,) = store.superseded_calls_of(job_id)
    assert call.worker == "host-a:task-1" and float(call.cost_usd) == 0.7
    mine = store.finish_attempt(
        job_id, 0, worker="host-b:task-2", status=AttemptStatus.PASSED.value, cost_usd=0.5
    )
    assert mine.landed
    assert store.finalize_job(job_id, JobStatus.SUCCEEDED)
    job = store.load_job(job_id)
    assert job is not None and float(job.cost_usd) == pytest.approx(1.2)  # both calls


def test_a_superseded_call_after_the_job_finished_still_counts(job_id: str) -> None:
    assert claim(job_id, "host-a:task-1", lease_s=0.2).claim is Claim.OWNED
    time.sleep(0.3)
    assert claim(job_id, "host-b:task-2").claim is Claim.OWNED
    store.finish_attempt(job_id, 0, worker="host-b:task-2", status="passed", cost_usd=0.5)
    assert store.finalize_job(job_id, JobStatus.SUCCEEDED)
    store.record_superseded_call(job_id, 0, "host-a:task-1", status="passed", cost_usd=0.25)
    job = store.load_job(job_id)
    assert job is not None and float(job.cost_usd) == pytest.approx(0.75)


def test_a_renewed_lease_holds_and_a_lapsed_one_is_taken_over(job_id: str) -> None:
    assert claim(job_id, "host-a:task-1", lease_s=0.5).claim is Claim.OWNED
    for _ in range(4):  # 1.2 s, more than twice the lease, renewed as the keeper would
        time.sleep(0.3)
        assert store.renew_lease(job_id, 0, "host-a:task-1", 0.5)
    busy = claim(job_id, "host-b:task-2")
    assert busy.claim is Claim.BUSY and 0 < busy.lease_left_s <= 0.5
    assert not store.renew_lease(job_id, 0, "host-b:task-2", 0.5)  # not the holder's to renew
    time.sleep(0.6)  # the holder stops renewing (it died): the lease runs out
    assert claim(job_id, "host-b:task-2").claim is Claim.OWNED
    assert not store.renew_lease(job_id, 0, "host-a:task-1", 0.5)  # lost for good


def test_the_lease_keeper_renews_in_the_background_and_notices_a_takeover(job_id: str) -> None:
    keeper = LeaseKeeper()
    assert claim(job_id, "host-a:task-1", lease_s=0.6).claim is Claim.OWNED
    with keeper.hold(job_id, 0, "host-a:task-1", 0.6) as held:
        time.sleep(1.5)  # a slow call: 2.5 leases
        assert claim(job_id, "host-b:task-2").claim is Claim.BUSY
        assert not held.lost.is_set()
        # someone takes the attempt over (an operator, a bug): the keeper notices and lets go
        with session_scope() as session:
            session.execute(
                update(Attempt)
                .where(Attempt.job_id == job_id)
                .values(worker="host-c:task-3", lease_until=func.now() + timedelta(seconds=30))
            )
        assert held.lost.wait(2.0)
        assert keeper.held() == []
    assert keeper.held() == []


def test_release_only_by_the_holder(job_id: str) -> None:
    assert claim(job_id, "host-a:task-1").claim is Claim.OWNED
    store.release_attempt(job_id, 0, "host-b:task-2")  # not the holder: no effect
    assert claim(job_id, "host-c:task-3").claim is Claim.BUSY
    store.release_attempt(job_id, 0, "host-a:task-1")
    assert claim(job_id, "host-c:task-3").claim is Claim.OWNED
