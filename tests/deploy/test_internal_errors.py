"""A bug in the fleet's own code (or a backend raising something that is not a backend error)
fails the job alone, with the reason stored and the waiter woken; the worker lives on."""

from __future__ import annotations

import time

import pytest

from router import submit_job
from schemas.tables import DeadLetter
from tests.support.services import fake_model, fleet_config
from tierflow import store
from tierflow.core.db import session_scope

pytestmark = [pytest.mark.integration, pytest.mark.slow]
# A job that fails on its first attempt is answered this fast on a loaded 2-core machine (its
# wait returns on the "done" event; the timeout below is 60 s).
WOKEN_WITHIN_S = 15.0


def test_unexpected_exception_fails_the_job_with_the_reason_and_wakes_the_waiter(fleet) -> None:
    fleet(fleet_config(local_fast=[fake_model("buggy", failure="bug", failure_rate=1.0)]))
    started = time.monotonic()
    handle = submit_job("Extract topic from: 'Fixed the login bug'", "extract_topic")
    result = handle.wait(timeout=60)
    # Woken by the failure itself, not found at the end of a long wait: a bug fails the job on
    # its first attempt (no retry, no fallback), so the waiter hears within seconds.
    woken_after = time.monotonic() - started
    assert result.status == "failed"
    assert result.error is not None
    assert result.error.startswith("internal error: RuntimeError: fake bug from buggy")
    assert woken_after < WOKEN_WITHIN_S, f"woken after {woken_after:.1f}s"
    assert len(store.attempts_of(handle.job_id)) == 1  # no retry nor fallback of a bug
    assert store.attempts_of(handle.job_id)  # the claim was taken before the bug struck
    with session_scope() as session:
        letters = session.query(DeadLetter).filter(DeadLetter.job_id == handle.job_id).all()
    assert [d.reason[:15] for d in letters] == ["internal error:"]
    after = submit_job("Extract topic from: 'next'", "extract_topic", context={})
    assert after.wait(timeout=60).status == "failed"  # the worker still serves (and fails alone)
