"""The sweeper: jobs past their deadline expire, jobs that stopped moving are moved on, so none
is lost silently.

Stalled jobs are found by PostgreSQL's clock (:func:`tierflow.store.stalled_jobs`: untouched for
``stale_after``, no attempt running under a live lease), at most :data:`SWEEP_BATCH` a pass.
A stalled job is re-sent only when it truly stopped: when a queue its next message may sit in
(the router's for a queued job; its tier's and the later tiers' of its chain for a routed one,
counting on a contended tier the attempts waiting in its daemons' lines, where work waits its
turn before its message reaches the queue: :mod:`router.fairshare`) holds a backlog, the job is
taken to be waiting its turn there, touched and looked at again a pass later, never duplicated
into a long queue. A job whose message was really lost behind a
backlog that never drains is ended by its deadline.

A job whose attempt's lease *lapsed* (its holder stopped renewing it: killed, frozen, cut off
from the database) is re-sent by the first pass after the lapse, backlog or not: its message sits
unacknowledged with the lost holder, in no queue (:func:`tierflow.store.lapsed_jobs`; the re-send
touches the job, so one lapse is re-sent once). With beat's sweep every
:data:`~tierflow.core.constants.SWEEP_INTERVAL_S` a lost holder's jobs move on within a lease
and an interval. ``tierflow up`` does not wait for that: it releases a dead child's leases and
re-sends their jobs at once (:func:`release_dead_worker`). The broker's copies the dead holder
left unacknowledged come back after the visibility timeout as replays (the claim finds the
attempt finished or held), never as a second call.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from router.dispatch import enqueue_attempt, enqueue_route, fair_share
from router.fairshare import contended, job_daemon
from schemas.tables import Attempt, Job
from tierflow import store
from tierflow.core.config import LLMConfig
from tierflow.core.constants import ROUTER_QUEUE, TIER_ORDER, JobStatus, Tier, tier_queue
from tierflow.core.settings import get_settings
from workers import outcome
from workers.queues import queue_depth

SWEEP_BATCH = 500  # stalled jobs read per pass; the rest wait for the next pass
# A rescued attempt (its holder died or lost its lease mid-run) goes to the front of its tier's
# queue: it had its turn already, and its holder's jobs are at most that worker's pool.
RESCUE_PRIORITY = 9
_TIER_OF_QUEUE = {tier_queue(t): t for t in TIER_ORDER}


def sweep(now: datetime, stale_after: timedelta, batch: int = SWEEP_BATCH) -> dict[str, int]:
    """One pass; returns counts of jobs expired (deadline passed), jobs re-sent because their
    holder's lease lapsed (``lapsed``), stalled jobs re-sent, and stalled jobs left waiting in a
    queue with a backlog.

    A job past its deadline ends ``expired`` whether it waits in a queue or is mid-run, and is
    never sent again: the attempt pipeline refuses to call a model for a finished job.
    """
    config = get_settings().llm
    counts = {"expired": 0, "lapsed": 0, "rerouted": 0, "resent": 0, "waiting": 0}
    for job in store.open_jobs_past(now):
        outcome.finish_expired(job, config)
        counts["expired"] += 1
    depths: dict[str, int] = {}  # read once per pass and queue

    def backlog(queues: list[str]) -> bool:
        for queue in queues:
            if queue not in depths:
                depths[queue] = queue_depth(queue) + _in_lines(config, queue)
        return any(depths[q] > 0 for q in queues)

    for job in store.lapsed_jobs(batch):
        if job.plan and _resend_attempt(job, lambda queues: False, RESCUE_PRIORITY):
            counts["lapsed"] += 1
        store.touch_jobs([job.id])
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


def _in_lines(config: LLMConfig, queue: str) -> int:
    """Attempts waiting in the daemons' lines of the tier ``queue`` serves, when that tier is
    contended (:mod:`router.fairshare`): there the queue holds admitted attempts alone, and
    the work waiting its turn waits in the lines; 0 for any other queue."""
    tier = _TIER_OF_QUEUE.get(queue)
    if tier is None or not contended(config, tier):
        return 0
    return sum(load.waiting for load in fair_share().loads(tier).values())


def _resend_attempt(
    job: Job, backlog: Callable[[list[str]], bool], priority: int | None = None
) -> bool:
    """Send the job's last attempt again (the claim makes a duplicate harmless, and a finished
    one replays its decision), at ``priority`` when it is higher than the job's own; False when
    one of its queues has a backlog it may wait in."""
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
        priority=job.priority if priority is None else max(priority, job.priority),
        daemon=job_daemon(job.job_metadata),
    )
    return True


def release_dead_worker(worker_prefix: str) -> list[str]:
    """A worker process known dead (``host/pid.``, the start of its deliveries' ids): end its
    leases now and send each of its jobs' attempts again; return the jobs re-sent.

    The next delivery takes each attempt over at once (its lease is over), whatever the
    queues hold: the dead process's messages sit unacknowledged in no queue."""
    sent = []
    for job_id in store.release_leases_of(worker_prefix):
        job = store.load_job(job_id)
        if job is None or job.finished_at is not None or not job.plan:
            continue
        if _resend_attempt(job, lambda queues: False, RESCUE_PRIORITY):
            sent.append(job_id)
    store.touch_jobs(sent)
    return sent
