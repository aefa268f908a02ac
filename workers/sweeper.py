"""The sweeper: jobs past their deadline expire, jobs that stopped moving are moved on, so none
is lost silently.

Stalled jobs are found by PostgreSQL's clock (:func:`tierflow.store.stalled_jobs`: untouched for
``stale_after``, no attempt running under a live lease), at most :data:`SWEEP_BATCH` a pass.
A stalled job is re-sent only when it truly stopped: when a queue its next message may sit in
(the router's for a queued job; its tier's and the later tiers' of its chain for a routed one)
holds a backlog, the job is taken to be waiting its turn there, touched and looked at again a
pass later, never duplicated into a long queue. A job whose message was really lost behind a
backlog that never drains is ended by its deadline.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from router.dispatch import enqueue_attempt, enqueue_route
from schemas.tables import Attempt, Job
from tierflow import store
from tierflow.core.constants import ROUTER_QUEUE, JobStatus, Tier, tier_queue
from tierflow.core.settings import get_settings
from workers import outcome
from workers.queues import queue_depth

SWEEP_BATCH = 500  # stalled jobs read per pass; the rest wait for the next pass


from router.fairshare import job_daemon
def sweep(now: datetime, stale_after: timedelta, batch: int = SWEEP_BATCH) -> dict[str, int]:
    """One pass; returns counts of jobs expired (deadline passed), jobs re-sent, and stalled
    jobs left waiting in a queue with a backlog.

    A job past its deadline ends ``expired`` whether it waits in a queue or is mid-run, and is
    never sent again: the attempt pipeline refuses to call a model for a finished job.
    """
    config = get_settings().llm
    counts = {"expired": 0, "rerouted": 0, "resent": 0, "waiting": 0}
    for job in store.open_jobs_past(now):
        outcome.finish_expired(job, config)
        counts["expired"] += 1
    depths: dict[str, int] = {}  # read once per pass and queue

    def backlog(queues: list[str]) -> bool:
        for queue in queues:
            if queue not in depths:
                depths[queue] = queue_depth(queue)
        return any(depths[q] > 0 for q in queues)

    for job in store.stalled_jobs(stale_after.total_seconds(), batch):
        if job.status == JobStatus.QUEUED.value:
            if backlog([ROUTER_QUEUE]):
                counts["waiting"] += 1
            else:
                enqueue_route(job.id, job.priority, job.action_type)
                counts["rerouted"] += 1
            store.touch_jobs([job.id])
            continue
        if not job.plan:
            continue
        if _resend_attempt(job, backlog):
            counts["resent"] += 1
        else:
            counts["waiting"] += 1
        store.touch_jobs([job.id])
    return counts


def _resend_attempt(job: Job, backlog: Callable[[list[str]], bool]) -> bool:
    """Send the job's last attempt again (the claim makes a duplicate harmless, and a finished
    one replays its decision); False when one of its queues has a backlog it may wait in."""
    assert job.plan is not None
    attempts = store.attempts_of(job.id)
    last: Attempt | None = attempts[-1] if attempts else None
    step = last.step if last else 0
    chain = [Tier(t) for t in job.plan["chain"]]
    if backlog([tier_queue(t) for t in chain[step:]]):
        return False
    attempt_no = last.attempt_no if last else 0
    retries = sum(1 for a in attempts if a.step == step) - 1 if last else 0
    enqueue_attempt(
        job.id,
        chain[step],
        step,
        attempt_no,
        max(retries, 0),
        priority=job.priority,
        daemon=job_daemon(job.job_metadata),
    )
    return True
