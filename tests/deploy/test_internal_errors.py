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


def test_unexpected_exception_fails_the_job_with_the_reason_and_wakes_the_waiter(fleet) -> None:
    fleet(fleet_config(local_fast=[fake_model("buggy", failure="bug", failure_rate=1.0)]))
    started = time.monotonic()
    handle = submit_job("Extract topic from: 'Fixed the login bug'", "extract_topic")
    result = handle.wait(timeout=60)
    assert result.status == "failed"
    assert result.error is not None
    assert result.error.startswith("internal error: RuntimeError: fake bug from buggy")
    assert time.monotonic() - started < 60
    assert store.attempts_of(handle.job_id)  # the claim was taken before the bug struck
    with session_scope() as session:
        letters = session.query(DeadLetter).filter(DeadLetter.job_id == handle.job_id).all()
    assert [d.reason[:15] for d in letters] == ["internal error:"]
    after = submit_job("Extract topic from: 'next'", "extract_topic", context={})
    assert after.wait(timeout=60).status == "failed"  # the worker still serves (and fails alone)
