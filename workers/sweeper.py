"""The sweeper: jobs past their deadline expire, jobs that stopped moving are moved on, so none
is lost silently."""

from __future__ import annotations

from datetime import datetime, timedelta

from router.dispatch import enqueue_attempt, enqueue_route
from schemas.tables import Attempt
from tierflow import store
from tierflow.core.constants import AttemptStatus, JobStatus, Tier
from tierflow.core.settings import get_settings
from workers import outcome


def sweep(now: datetime, stale_after: timedelta) -> dict[str, int]:
    """One pass; returns counts of jobs expired (deadline passed) and jobs re-sent.

    A job past its deadline ends ``expired`` whether it waits in a queue or is mid-run, and is
    never sent again: the attempt pipeline refuses to call a model for a finished job.
    """
    config = get_settings().llm
    counts = {"expired": 0, "rerouted": 0, "resent": 0}
    for job in store.open_jobs_past(now):
        outcome.finish_expired(job, config)
        counts["expired"] += 1
    stale = now - stale_after
    for job in store.stale_jobs(stale):
        if job.status == JobStatus.QUEUED.value:
            enqueue_route(job.id, job.priority, job.action_type)
            store.touch_job(job.id, now)
            counts["rerouted"] += 1
            continue
        if not job.plan:
            continue
        attempts = store.attempts_of(job.id)
        if any(
            a.status == AttemptStatus.RUNNING.value and a.lease_until and a.lease_until > now
            for a in attempts
        ):
            continue  # someone is on it
        last: Attempt | None = attempts[-1] if attempts else None
        step = last.step if last else 0
        attempt_no = last.attempt_no if last else 0
        retries = sum(1 for a in attempts if a.step == step) - 1 if last else 0
        enqueue_attempt(
            job.id,
            Tier(job.plan["chain"][step]),
            step,
            attempt_no,
            max(retries, 0),
            priority=job.priority,
            action=job.action_type,
        )
        store.touch_job(job.id, now)
        counts["resent"] += 1
    return counts
