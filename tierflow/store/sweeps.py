"""What the sweeper reads and marks, timed by PostgreSQL's clock (never a worker's: hosts' clocks
drift, and a worker whose clock runs ahead would find every job stale).

A job's ``updated_at`` is its last sign of life: every write to the row sets it (``onupdate``),
and so does every send of its next attempt (:func:`touch_jobs`, from the Enqueue step and the
sweeper itself). A job is *stalled* when nothing touched it for ``stale_after_s`` and no attempt
of it runs under a live lease. A job whose running attempt's lease *lapsed* (its holder stopped
renewing: killed, frozen, cut off) is found at once instead (:func:`lapsed_jobs`), and a
supervisor that saw its child die ends that child's leases itself (:func:`release_leases_of`).
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import exists, func, select, text, update
from sqlalchemy.sql.selectable import Exists

from schemas.tables import Attempt, Job
from tierflow.core.constants import TERMINAL_STATUSES, AttemptStatus
from tierflow.core.db import session_scope


def _live_lease() -> Exists:
    """An attempt of the job running under a lease that has not run out."""
    return exists().where(
        Attempt.job_id == Job.id,
        Attempt.status == AttemptStatus.RUNNING.value,
        Attempt.lease_until > func.now(),
    )


def stalled_jobs(stale_after_s: float, limit: int = 500) -> list[Job]:
    """Unfinished jobs untouched for ``stale_after_s`` seconds, with no attempt running under a
    live lease, the longest-stalled first, at most ``limit`` (one pass reads a bounded batch;
    the jobs it handles are touched, so the next pass reaches the ones after them)."""
    live = _live_lease()
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


def lapsed_jobs(limit: int = 500) -> list[Job]:
    """Unfinished jobs whose running attempt's lease ran out and that nothing touched since
    (no new claim, no re-send: :func:`touch_jobs` after a re-send keeps one lapse from being
    re-sent twice), with no attempt under a live lease; the oldest lapse first, at most
    ``limit``. Read through the open jobs (``ix_jobs_open``), never the whole attempts table."""
    lapsed = exists().where(
        Attempt.job_id == Job.id,
        Attempt.status == AttemptStatus.RUNNING.value,
        Attempt.lease_until <= func.now(),
        Attempt.lease_until > Job.updated_at,
    )
    live = _live_lease()
    with session_scope() as session:
        return list(
            session.execute(
                select(Job)
                .where(
                    Job.finished_at.is_(None),
                    Job.status.not_in(TERMINAL_STATUSES),
                    lapsed,
                    ~live,
                )
                .order_by(Job.updated_at)
                .limit(limit)
            ).scalars()
        )


_RELEASE_SQL = text(
    f"""
UPDATE attempts SET lease_until = now() - interval '1 millisecond'
WHERE job_id IN (SELECT id FROM jobs WHERE finished_at IS NULL)
  AND status = '{AttemptStatus.RUNNING}' AND lease_until > now()
  AND worker LIKE :prefix ESCAPE '/'
RETURNING job_id
"""
)


def release_leases_of(worker_prefix: str) -> list[str]:
    """End now the live leases of the running attempts held by deliveries whose id starts with
    ``worker_prefix`` (``host/pid.``: one process, known dead); return their jobs' ids. The
    next delivery of each attempt takes it over at once; a write by the dead holder, were it
    to come, is fenced out as any lapsed holder's is."""
    if not worker_prefix:
        raise ValueError("release_leases_of needs a worker prefix (an empty one is every worker)")
    escaped = worker_prefix.replace("/", "//").replace("%", "/%").replace("_", "/_")
    with session_scope() as session:
        found = session.execute(_RELEASE_SQL, {"prefix": escaped + "%"}).scalars().all()
    return sorted(set(found))
