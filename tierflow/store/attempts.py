"""Attempts: claimed once per (job, attempt number), finished once, fenced by the claim.

- ``claim_attempt``: one row per (job, attempt number); a second delivery of the same attempt
  finds it finished (and replays its decision) or held under a live lease (and waits). Leases
  are timed by PostgreSQL's clock, so workers on hosts with skewed clocks agree on them.
- ``finish_attempt``: only moves a row forward from ``running``, so a replay changes nothing and
  a cost is charged once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects.postgresql import insert

from schemas.jobs import utcnow
from schemas.tables import Attempt, Job
from tierflow.core.constants import AttemptStatus, JobStatus
from tierflow.core.db import session_scope


class Claim(StrEnum):
    OWNED = "owned"  # this delivery runs the attempt
    DONE = "done"  # an earlier delivery finished it: replay its decision
    BUSY = "busy"  # another delivery holds a live lease


@dataclass(frozen=True)
class ClaimResult:
    claim: Claim
    attempt: Attempt | None = None
    lease_left_s: float = 0.0


def claim_attempt(
    job_id: str, attempt_no: int, step: int, tier: str, worker: str, lease_s: float
) -> ClaimResult:
    """Take (job, attempt_no) for this delivery, or say who has it.

    A running attempt is taken over when its lease ran out (its holder died or hung), or when
    the same delivery holds it: the task retried after an infrastructure error, maybe on another
    worker. ``worker`` is ``host:task_id``; Celery keeps the task id across retries, and two runs
    of one task id do not overlap: each model call is cut at the soft time limit, well below the
    visibility timeout after which Redis would hand the message out again.
    """
    delivery = worker.rsplit(":", 1)[-1]
    lease_until = func.now() + timedelta(seconds=lease_s)
    claim = (
        insert(Attempt)
        .values(
            job_id=job_id,
            attempt_no=attempt_no,
            step=step,
            tier=tier,
            status=AttemptStatus.RUNNING.value,
            worker=worker,
            lease_until=lease_until,
            started_at=func.now(),
        )
        .on_conflict_do_update(
            constraint="uq_attempts_job_attempt",
            set_={"worker": worker, "lease_until": lease_until, "started_at": func.now()},
            where=(Attempt.status == AttemptStatus.RUNNING.value)
            & (
                (Attempt.lease_until < func.now())
                | Attempt.worker.endswith(f":{delivery}", autoescape=True)
            ),
        )
        .returning(Attempt.id)
    )
    with session_scope() as session:
        session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.ROUTED.value)
            .values(status=JobStatus.RUNNING.value)
        )
        if session.execute(claim).scalar_one_or_none() is not None:
            return ClaimResult(Claim.OWNED)
        found = session.execute(
            select(Attempt, func.extract("epoch", Attempt.lease_until - func.now())).where(
                Attempt.job_id == job_id, Attempt.attempt_no == attempt_no
            )
        ).one_or_none()
        if found is None:  # its holder released it just now: try again in a moment
            return ClaimResult(Claim.BUSY, None, 0.0)
        row, left = found
        if row.status != AttemptStatus.RUNNING.value:
            return ClaimResult(Claim.DONE, row)
        return ClaimResult(Claim.BUSY, row, max(float(left or 0.0), 0.0))


def release_attempt(job_id: str, attempt_no: int, worker: str | None = None) -> None:
    """Give a claimed attempt back unrun (the job waits for a rate limit, say); with ``worker``,
    only if that delivery still holds it."""
    condition = [
        Attempt.job_id == job_id,
        Attempt.attempt_no == attempt_no,
        Attempt.status == AttemptStatus.RUNNING.value,
    ]
    if worker is not None:
        condition.append(Attempt.worker == worker)
    with session_scope() as session:
        session.execute(delete(Attempt).where(*condition))


def finish_attempt(job_id: str, attempt_no: int, **fields: Any) -> Attempt:
    """Store an attempt's outcome once; return the stored row (the first outcome wins)."""
    fields.setdefault("finished_at", utcnow())
    with session_scope() as session:
        session.execute(
            update(Attempt)
            .where(
                Attempt.job_id == job_id,
                Attempt.attempt_no == attempt_no,
                Attempt.status == AttemptStatus.RUNNING.value,
            )
            .values(lease_until=None, **fields)
        )
        return session.execute(
            select(Attempt).where(Attempt.job_id == job_id, Attempt.attempt_no == attempt_no)
        ).scalar_one()


def attempts_of(job_id: str) -> list[Attempt]:
    with session_scope() as session:
        return list(
            session.execute(
                select(Attempt).where(Attempt.job_id == job_id).order_by(Attempt.attempt_no)
            ).scalars()
        )
