"""One sweeper pass, in this process, on real PostgreSQL and Redis (no worker consumes, so what
the sweep sends stays queued and can be counted).

- Staleness is PostgreSQL's clock: a worker whose clock runs ten minutes ahead re-sends nothing
  that was touched just now.
- Only jobs that truly stopped are re-sent: a job whose queue holds a backlog is waiting its
  turn (it is touched, not duplicated); a job whose next attempt was just sent is alive.
- A pass reads a bounded batch, the longest-stalled first; the next pass reaches the rest.

The pass runs on a database of its own, so the other tests' unfinished jobs are not in it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest

from router.plan import plan_job
from schemas.jobs import JobRequest, utcnow
from tests.faults.helpers import execute, rows
from tests.support import services
from tests.support.services import fleet_config
from tierflow import store
from tierflow.core.constants import Mode, Tier, tier_queue
from tierflow.core.db import reset_engines, upgrade_database
from tierflow.core.settings import get_settings, reset_settings
from workers.outcome import Move
from workers.pipeline import STEPS, AttemptContext, Step, run_attempt_steps
from workers.pipeline.select import PickModel
from workers.queues import queue_depth
from workers.sweeper import sweep

pytestmark = pytest.mark.integration

FAST = tier_queue(Tier.LOCAL_FAST)
STALE = timedelta(seconds=60)


@pytest.fixture
def own_db(
    database: str, monkeypatch: pytest.MonkeyPatch, config_file: Callable[[dict[str, Any]], None]
) -> Iterator[str]:
    name = f"tierflow_sweep_{os.urandom(4).hex()}"
    url = services.create_database(name)
    monkeypatch.setenv("TIERFLOW_DATABASE_URL", url)
    config_file(fleet_config())
    reset_settings()
    upgrade_database(url)
    prefix = os.environ["TIERFLOW_KEY_PREFIX"]
    services.delete_prefix(prefix, "q:*")
    yield url
    services.delete_prefix(prefix, "q:*")
    reset_engines()
    services.drop_database(name)
    monkeypatch.undo()
    reset_settings()


def routed_job(prompt: str) -> str:
    request = JobRequest(prompt=prompt, action_type="extract_topic")
    job_id, _ = store.create_job(request, get_settings().job_deadline_s)
    job = store.load_job(job_id)
    assert job is not None
    plan = plan_job(job.action_type, job.prompt, {}, get_settings().llm, Mode.AUTO)
    assert store.save_plan(job_id, plan.complexity.value, plan.to_json())
    assert plan.chain[0] is Tier.LOCAL_FAST
    return job_id


def age(url: str, job_ids: list[str], minutes: int = 10) -> None:
    execute(
        url,
        "UPDATE jobs SET updated_at = now() - make_interval(mins => :m) WHERE id = ANY(:ids)",
        m=minutes,
        ids=job_ids,
    )


def test_a_worker_clock_ahead_resends_nothing_fresh(own_db: str) -> None:
    fresh = routed_job("Extract topic from: 'just routed'")
    ahead = utcnow() + timedelta(minutes=10)  # a host whose clock runs ahead of the database's
    counts = sweep(ahead, STALE)
    assert counts["resent"] == 0 and queue_depth(FAST) == 0, counts
    assert store.job_status(fresh) == "routed"


def test_only_jobs_that_truly_stopped_are_resent(own_db: str) -> None:
    stopped = routed_job("Extract topic from: 'attempt message lost'")
    age(own_db, [stopped])
    assert sweep(utcnow(), STALE)["resent"] == 1
    assert queue_depth(FAST) == 1  # its attempt, sent again

    # Another job stalls while that message still waits in tier.local_fast: a backlog it may
    # be waiting in too. It is left alone (touched), and the queue is not grown.
    waiting = routed_job("Extract topic from: 'behind a long queue'")
    age(own_db, [waiting, stopped])
    counts = sweep(utcnow(), STALE)
    assert counts["resent"] == 0 and counts["waiting"] == 2, counts
    assert queue_depth(FAST) == 1
    (touched,) = rows(
        own_db,
        "SELECT updated_at > now() - interval '5 seconds' AS fresh FROM jobs WHERE id = :id",
        id=waiting,
    )
    assert touched["fresh"]

    # A job whose attempt just waited for capacity was touched by the Enqueue step: alive.
    services.delete_prefix(os.environ["TIERFLOW_KEY_PREFIX"], "q:*")
    capped = routed_job("Extract topic from: 'waits at a cap'")
    age(own_db, [capped])
    run_attempt_steps(capped, 0, 0, 0, "h:t-1", get_settings().llm, steps=_waiting_steps())
    assert queue_depth(FAST) == 1  # the wait's message
    services.delete_prefix(os.environ["TIERFLOW_KEY_PREFIX"], "q:*")  # say it sits elsewhere
    assert sweep(utcnow(), STALE)["resent"] == 0


def test_a_pass_reads_a_bounded_batch_oldest_first(own_db: str) -> None:
    jobs = [routed_job(f"Extract topic from: 'stalled {i}'") for i in range(3)]
    for minutes, job_id in zip((30, 20, 10), jobs, strict=True):
        age(own_db, [job_id], minutes)
    first = sweep(utcnow(), STALE, batch=2)
    assert first["resent"] == 2
    assert {r["id"] for r in _touched(own_db)} == set(jobs[:2])  # the two oldest
    services.delete_prefix(os.environ["TIERFLOW_KEY_PREFIX"], "q:*")
    second = sweep(utcnow(), STALE, batch=2)
    assert second["resent"] == 1
    assert {r["id"] for r in _touched(own_db)} == set(jobs)


def _touched(url: str) -> list[dict[str, Any]]:
    return rows(url, "SELECT id FROM jobs WHERE updated_at > now() - interval '5 seconds'")


class AtCap(Step):
    """A model pick that finds the tier at its cap: the claim is given back, the attempt waits."""

    def run(self, ctx: AttemptContext) -> None:
        store.release_attempt(ctx.job_id, ctx.attempt_no, ctx.worker)
        ctx.stop(Move("wait", ctx.step, ctx.attempt_no, 0, 5.0, ctx.waits + 1))


def _waiting_steps() -> tuple[Step, ...]:
    return tuple(AtCap() if isinstance(s, PickModel) else s for s in STEPS)
