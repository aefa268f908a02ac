"""The sweeper: jobs that stopped moving are failed or moved on, so none is lost silently."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select, update

from schemas.tables import Attempt, Job
from tierflow.core.constants import TERMINAL_STATUSES, AttemptStatus, JobStatus, Tier
from tierflow.core.db import session_scope
from tierflow.core.settings import get_settings
from workers import outcome, persistence


def sweep(now: datetime, stale_after: timedelta) -> dict[str, int]:
    """One pass; returns counts of jobs failed for their deadline and jobs re-sent."""
    from workers.tasks import enqueue_attempt, enqueue_route

    config = get_settings().llm
    counts = {"deadline_failed": 0, "rerouted": 0, "resent": 0}
    for job in persistence.open_jobs_past(now):
        story = outcome.failure_summary(persistence.attempts_of(job.id))
        outcome.finish_failure(job, config, f"deadline exceeded; {story}")
        counts["deadline_failed"] += 1
    stale = now - stale_after
    with session_scope() as session:
        jobs = list(
            session.execute(
                select(Job).where(Job.status.not_in(TERMINAL_STATUSES), Job.updated_at < stale)
            ).scalars()
        )
    for job in jobs:
        if job.status == JobStatus.QUEUED.value:
            enqueue_route(job.id, job.priority)
            _touch(job.id, now)
            counts["rerouted"] += 1
            continue
        if not job.plan:
            continue
        attempts = persistence.attempts_of(job.id)
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
        )
        _touch(job.id, now)
        counts["resent"] += 1
    return counts


def _touch(job_id: str, now: datetime) -> None:
    """Mark a job as just handled, so the next pass waits ``stale_after`` again."""
    with session_scope() as session:
        session.execute(update(Job).where(Job.id == job_id).values(updated_at=now))
