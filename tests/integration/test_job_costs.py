"""What one job costs PostgreSQL, guarded against regressions (counts, never timings), and the
cuts that made it cheaper checked to change nothing a user relies on.

The numbers are the ones reached when each write of a job's own path became one statement (the
claim with its read of the job, the outcome with the job's end; issue 18): a change that adds a
round trip to the common path fails here and has to say why.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest

from router import submit_job
from router.dispatch import enqueue_attempt, enqueue_route
from tests.bench.sql_guard import commits_per_job, count_statements_per_job
from tests.conftest import DB_NAME
from tests.support.services import fleet_config, skip_unless_ci
from tierflow import store
from tierflow.core.constants import Tier
from tierflow.core.redis_client import get_keys, get_redis

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Reached by the cuts of issue 18 (before them: 11 commits per job; in round 1, 20). Statements:
# 17 until a non-durable transaction's BEGIN and SET LOCAL became one round trip and the claim
# started the job in its own INSERT (a CTE): 14; 6 since every write of the job's own path is
# one statement on an autocommitting connection (tierflow/store/rows.py): the client's ping and
# insert, the route's read and plan, the claim, the outcome with the job's end; 5 since the
# client's pool pings a connection only when its socket says it may be dead (no ping per
# checkout); 4 since a new job's message carries its routing facts and the router stores the
# plan without reading the job (its first job reads, to learn the fleet's mode). Each statement
# is its own transaction, so commits equal statements: 4.0 measured by bench_fleet, up to 4.5
# here, where the fleet's background (the sweeper's beat) adds a little.
MAX_COMMITS_PER_JOB = 5.0
MAX_STATEMENTS_PER_JOB = 4

PROMPT = "Extract topic from: 'the quarterly report is late'"


def one_job(i: int) -> None:
    result = submit_job(f"{PROMPT} #{i}", "extract_topic").wait(timeout=30)
    assert result.status == "succeeded", result.error


def test_a_successful_single_attempt_job_costs_at_most_its_budget(fleet) -> None:
    fleet(fleet_config(), workers=1, concurrency=4)
    one_job(-1)  # warm every pool and cache
    commits = commits_per_job(DB_NAME, one_job, n=10)
    print(f"commits per job: {commits:.2f}")
    assert commits <= MAX_COMMITS_PER_JOB, f"{commits:.1f} commits per job"
    traced = count_statements_per_job(DB_NAME, one_job, n=2)
    if traced is None:
        skip_unless_ci("PostgreSQL server log not readable: statements not counted")
    worst = max(len(t.statements) for t in traced)
    print(f"statements per job: {worst}")
    for statement in traced[0].statements:
        print(" ", statement)
    assert worst <= MAX_STATEMENTS_PER_JOB, "\n".join(map(str, traced[0].statements))


class JobEvents:
    """Every job event published from now on, by channel, from a subscription of its own."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self._pubsub = get_redis().pubsub(ignore_subscribe_messages=True)
        self._pubsub.psubscribe(get_keys().job_channel("") + "*")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            message = self._pubsub.get_message(timeout=0.2)
            if message is not None:
                channel = message["channel"]
                channel = channel.decode() if isinstance(channel, bytes) else channel
                self.events.append((channel, json.loads(message["data"])))

    def close(self, job_id: str) -> list[dict[str, Any]]:
        """The events of ``job_id``, in order."""
        self._stop.set()
        self._thread.join(5)
        self._pubsub.close()
        return [e for channel, e in self.events if channel == get_keys().job_channel(job_id)]


def test_redelivered_messages_leave_one_result_one_charge_one_wake_up(fleet) -> None:
    fleet(fleet_config(), workers=2, concurrency=4)
    events = JobEvents()
    time.sleep(0.2)  # subscribed
    handle = submit_job(PROMPT, "extract_topic")
    first = handle.wait(timeout=30)
    assert first.status == "succeeded" and first.attempts, first.error
    # The broker hands every message of the job out again (a visibility timeout, a crash before
    # the acknowledgement): the route, and the attempt on the tier that ran it.
    tier = Tier(first.attempts[0].tier)
    for _ in range(3):
        enqueue_route(handle.job_id)
        enqueue_attempt(handle.job_id, tier, 0, 0)
    time.sleep(3)  # every duplicate has run by now (two idle workers, eight threads)
    seen = events.close(handle.job_id)
    after = store.job_result(handle.job_id)
    assert after is not None
    assert [a.attempt_no for a in after.attempts] == [0]
    assert after.cost_usd == pytest.approx(sum(a.cost_usd for a in after.attempts))
    assert after.text == first.text and after.status == first.status
    assert [e["type"] for e in seen].count("done") == 1  # the replays woke nobody again
    assert first == after  # the result the waiter was woken with is the one stored
