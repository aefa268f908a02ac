"""Every write the fleet makes to PostgreSQL, each idempotent under redelivery.

- ``create_job``: one row per idempotency key (``INSERT .. ON CONFLICT DO NOTHING``).
- ``claim_attempt``: one row per (job, attempt number); a second delivery of the same attempt
  finds it finished (and replays its decision) or held under a live lease (and waits). Leases
  are timed by PostgreSQL's clock, so workers on hosts with skewed clocks agree on them.
- ``finish_attempt`` / ``finalize_job``: only move rows forward from ``running`` / non-terminal,
  so a replay changes nothing and a cost is charged once.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects.postgresql import insert

from schemas.jobs import AttemptSummary, JobRequest, JobResult, utcnow
from schemas.tables import Attempt, DeadLetter, Job
from tierflow.core.constants import TERMINAL_STATUSES, AttemptStatus, JobStatus
from tierflow.core.db import session_scope


def _storable_text(text: str) -> str:
    """``text`` with what PostgreSQL's text type refuses (NUL, lone surrogates) replaced."""
    return text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")


def create_job(request: JobRequest, default_deadline_s: int) -> tuple[str, bool]:
    """Store a new job; return ``(job_id, created)``. Same idempotency key → same job.

    ``JobRequest`` has already refused what PostgreSQL cannot store (NUL, lone surrogates).
    """
    job_id = str(uuid.uuid4())
    deadline = request.deadline or utcnow() + timedelta(seconds=default_deadline_s)
    values = {
        "id": job_id,
        "idempotency_key": request.idempotency_key,
        "status": JobStatus.QUEUED.value,
        "action_type": request.action_type,
        "prompt": request.prompt,
        "context": request.context,
        "metadata": request.metadata,
        "priority": request.priority,
        "stream": request.stream,
        "allow_degraded": request.allow_degraded,
        "deadline": deadline,
    }
    stmt = insert(Job.__table__).values(**values)  # type: ignore[arg-type]
    if request.idempotency_key is not None:
        stmt = stmt.on_conflict_do_nothing(index_elements=["idempotency_key"])
    with session_scope() as session:
        inserted = session.execute(stmt.returning(Job.__table__.c.id)).scalar_one_or_none()
        if inserted is not None:
            return inserted, True
        existing = session.execute(
            select(Job.id).where(Job.idempotency_key == request.idempotency_key)
        ).scalar_one()
        return existing, False


def job_status(job_id: str) -> str | None:
    """The job's status alone (one indexed read); None when unknown."""
    with session_scope() as session:
        return session.execute(select(Job.status).where(Job.id == job_id)).scalar_one_or_none()


def load_job(job_id: str) -> Job | None:
    with session_scope() as session:
        return session.get(Job, job_id)


def save_plan(job_id: str, complexity: str, plan: dict[str, Any]) -> bool:
    """Record the routing plan once; False when the job already had one or is finished."""
    with session_scope() as session:
        result = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.QUEUED.value)
            .values(status=JobStatus.ROUTED.value, complexity=complexity, plan=plan)
        )
        return result.rowcount == 1  # type: ignore[attr-defined]


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


def finalize_job(job_id: str, status: JobStatus, **fields: Any) -> bool:
    """Move a job to a terminal status once; False when it already was terminal.

    The job's cost is the sum of its stored attempts' costs, computed in the same statement, so
    it can never count an attempt twice.
    """
    with session_scope() as session:
        total = (
            session.execute(select(Attempt.cost_usd).where(Attempt.job_id == job_id))
            .scalars()
            .all()
        )
        result = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status.not_in(TERMINAL_STATUSES))
            .values(status=status.value, finished_at=utcnow(), cost_usd=sum(total), **fields)
        )
        return result.rowcount == 1  # type: ignore[attr-defined]


def attempts_of(job_id: str) -> list[Attempt]:
    with session_scope() as session:
        return list(
            session.execute(
                select(Attempt).where(Attempt.job_id == job_id).order_by(Attempt.attempt_no)
            ).scalars()
        )


def job_result(job_id: str) -> JobResult | None:
    """The job as a :class:`JobResult`, with every attempt; None when unknown."""
    with session_scope() as session:
        job = session.get(Job, job_id)
        if job is None:
            return None
        attempts = [
            AttemptSummary(
                attempt_no=a.attempt_no,
                tier=a.tier,
                model=a.model,
                status=a.status,
                error=a.error,
                quality=a.quality_score,
                issues=list(a.quality_issues or []),
                input_tokens=a.input_tokens,
                output_tokens=a.output_tokens,
                cost_usd=float(a.cost_usd or 0),
                latency_ms=a.latency_ms,
            )
            for a in job.attempts
        ]
        final = next((a for a in reversed(job.attempts) if a.model == job.model and a.text), None)
        latency = None
        if job.finished_at is not None:
            latency = (job.finished_at - job.created_at).total_seconds() * 1000
        return JobResult(
            job_id=job.id,
            status=job.status,
            text=job.text,
            tier=job.tier,
            model=job.model,
            provider=job.provider,
            attempts=attempts,
            cost_usd=float(job.cost_usd or 0),
            api_baseline_cost_usd=float(job.api_baseline_cost_usd or 0),
            quality=job.quality,
            latency_ms=latency,
            error=job.error,
            degraded=job.degraded,
            fake=job.fake,
            input_tokens=final.input_tokens if final else 0,
            output_tokens=final.output_tokens if final else 0,
            finished_at=job.finished_at,
        )


def record_dead_letter(
    reason: str,
    *,
    queue: str | None = None,
    task: str | None = None,
    job_id: str | None = None,
    body: str | bytes | None = None,
) -> None:
    """Store why a broker message was refused. Any text is accepted: values are cut to their
    columns' sizes and NUL or undecodable characters escaped, so a poison message can always
    be recorded. The named job, if any, is left as it is."""
    excerpt = body.decode("utf-8", "replace") if isinstance(body, bytes) else body

    def fit(value: str | None, size: int) -> str | None:
        return _storable_text(value)[:size] if value else None

    with session_scope() as session:
        session.add(
            DeadLetter(
                queue=fit(queue, 100),
                task=fit(task, 200),
                job_id=fit(job_id, 36),
                reason=fit(reason, 2000) or "(no reason given)",
                body_excerpt=fit(excerpt, 500),
            )
        )


def open_jobs_past(deadline: datetime) -> list[Job]:
    with session_scope() as session:
        return list(
            session.execute(
                select(Job).where(Job.status.not_in(TERMINAL_STATUSES), Job.deadline < deadline)
            ).scalars()
        )
