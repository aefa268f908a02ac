"""What the sweeper reads and marks, timed by PostgreSQL's clock (never a worker's: hosts' clocks
drift, and a worker whose clock runs ahead would find every job stale).

A job's ``updated_at`` is its last sign of life: every write to the row sets it (``onupdate``),
and so does every send of its next attempt (:func:`touch_jobs`, from the Enqueue step and the
sweeper itself). A job is *stalled* when nothing touched it for ``stale_after_s`` and no attempt
of it runs under a live lease.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import exists, func, select, update

from schemas.tables import Attempt, Job
from tierflow.core.constants import TERMINAL_STATUSES, AttemptStatus
from tierflow.core.db import session_scope


def stalled_jobs(stale_after_s: float, limit: int = 500) -> list[Job]:
    """Unfinished jobs untouched for ``stale_after_s`` seconds, with no attempt running under a
    live lease, the longest-stalled first, at most ``limit`` (one pass reads a bounded batch;
    the jobs it handles are touched, so the next pass reaches the ones after them)."""
    live = exists().where(
        Attempt.job_id == Job.id,
        Attempt.status == AttemptStatus.RUNNING.value,
        Attempt.lease_until > func.now(),
    )
    with session_scope() as session:
        return list(
            session.execute(
                select(Job)
                .where(
                    Job.finished_at.is_(None),  # ix_jobs_open's predicate: the open jobs alone
                    Job.status.not_in(TERMINAL_STATUSES),
                    Job.updated_at < func.now() - timedelta(seconds=stale_after_s),
                    ~live,
                )
                .order_by(Job.updated_at)
                .limit(limit)
            ).scalars()
        )


def touch_jobs(job_ids: list[str]) -> None:
    """Mark jobs as alive now (PostgreSQL's ``now()``): their next attempt was just sent, or
    the sweeper just looked at them."""
    if not job_ids:
        return
    with session_scope() as session:
        session.execute(update(Job).where(Job.id.in_(job_ids)).values(updated_at=func.now()))
