"""Jobs: created once per idempotency key, finalized once, read as :class:`JobResult`.

- ``create_job``: one row per idempotency key (``INSERT .. ON CONFLICT DO NOTHING``); the key is
  bound to the request's fingerprint, so the same key with a different request is refused.
- ``finalize_job``: only moves a job forward from a non-terminal status, so a replay changes
  nothing and its cost (the sum of its attempts') is counted once.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from schemas.jobs import AttemptSummary, JobRequest, JobResult, utcnow
from schemas.tables import Attempt, Job
from tierflow.core.constants import TERMINAL_STATUSES, JobStatus
from tierflow.core.db import session_scope
from tierflow.core.errors import IdempotencyConflict
from tierflow.store import rows
from tierflow.store.modes import CURRENT_MODE_SQL
from tierflow.store.timing import AttemptSpan, split_times


def _same_request(key: str, job_id: str, stored: str | None, fingerprint: str) -> str:
    """The id of the job ``key`` names when it was stored for this request, or the conflict.

    A row stored before fingerprints existed (``None``) matches any request: refusing the
    retries of jobs that were accepted before an upgrade would break their submitters.
    """
    if stored is not None and stored != fingerprint:
        raise IdempotencyConflict(key, job_id)
    return job_id


def job_for_key(request: JobRequest) -> str | None:
    """The job the request's idempotency key already names, or None (also with no key).

    Raises :class:`IdempotencyConflict` when that job was submitted with a different request.
    """
    if request.idempotency_key is None:
        return None
    with session_scope() as session:
        found = session.execute(
            select(Job.id, Job.request_fingerprint).where(
                Job.idempotency_key == request.idempotency_key
            )
        ).one_or_none()
    if found is None:
        return None
    return _same_request(
        request.idempotency_key, found.id, found.request_fingerprint, request.fingerprint()
    )


# A new job, or nothing when its idempotency key is taken (a NULL key never conflicts).
_INSERT_FIELDS = (
    "id", "idempotency_key", "request_fingerprint", "status", "action_type", "prompt", "context",
    "metadata", "priority", "stream", "allow_degraded", "deadline", "batch_id", "batch_line",
    "complexity", "plan",
)  # fmt: skip
_INSERT_JOB_SQL = rows.statement(
    f"""INSERT INTO jobs ({", ".join(_INSERT_FIELDS)}, cost_usd, api_baseline_cost_usd, degraded,
    fake, created_at, updated_at)
VALUES ({", ".join(f":{name}" for name in _INSERT_FIELDS)}, 0, 0, false, false, now(), now())
ON CONFLICT (idempotency_key) DO NOTHING
RETURNING id""",
    json=["context", "metadata", "plan"],
)
_JOB_FOR_KEY_SQL = rows.statement(
    "SELECT id, request_fingerprint FROM jobs WHERE idempotency_key = :key"
)


def job_row(
    request: JobRequest,
    fingerprint: str | None,
    default_deadline_s: int,
    batch_id: str | None = None,
    batch_line: int | None = None,
    plan: tuple[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A new job's row as its insert writes it: a fresh id, ``queued`` (or ``routed`` with its
    ``plan``, the complexity and the plan JSON), the deadline the request's or
    ``default_deadline_s`` seconds from now. Shared by one job's insert and a batch chunk's."""
    values: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "idempotency_key": request.idempotency_key,
        "request_fingerprint": fingerprint,
        "status": JobStatus.QUEUED.value,
        "action_type": request.action_type,
        "prompt": request.prompt,
        "context": request.context,
        "metadata": request.metadata,
        "priority": request.priority,
        "stream": request.stream,
        "allow_degraded": request.allow_degraded,
        "deadline": request.deadline or utcnow() + timedelta(seconds=default_deadline_s),
        "batch_id": batch_id,
        "batch_line": batch_line,
        "complexity": None,
        "plan": None,
    }
    if plan is not None:
        values.update(status=JobStatus.ROUTED.value, complexity=plan[0], plan=plan[1])
    return values


def create_job(
    request: JobRequest,
    default_deadline_s: int,
    *,
    batch_id: str | None = None,
    batch_line: int | None = None,
    plan: tuple[str, dict[str, Any]] | None = None,
) -> tuple[str, bool]:
    """Store a new job; return ``(job_id, created)``. Same idempotency key and same request →
    same job; same key and a different request → :class:`IdempotencyConflict`, nothing stored.

    ``plan`` (``(complexity, plan)``, as ``route_job`` stores them) stores the job routed
    already, in the same statement: a batch's submitter plans its lines itself (see
    :mod:`router.batch`). A job stored routed whose first attempt was never sent is resent by
    the sweeper, or by ``route_job`` (a routed job with no attempt).

    The ``INSERT .. ON CONFLICT DO NOTHING`` serialises concurrent submitters of one key: the
    loser's insert waits for the winner's transaction, does nothing, and the ``SELECT`` that
    follows (a new snapshot under READ COMMITTED) reads the winner's row and fingerprint.
    ``JobRequest`` has already refused what PostgreSQL cannot store (NUL, lone surrogates).
    """
    # the fingerprint binds a key to its request: a job without a key stores none (computing it
    # walks the whole request as JSON three times)
    fingerprint = request.fingerprint() if request.idempotency_key is not None else None
    values = job_row(request, fingerprint, default_deadline_s, batch_id, batch_line, plan)
    inserted = rows.run_one(_INSERT_JOB_SQL, values)  # one statement, its own transaction
    if inserted is not None:
        return str(inserted[0]), True
    # without a key every insert goes in
    assert request.idempotency_key is not None and fingerprint is not None
    found = rows.run_one(_JOB_FOR_KEY_SQL, {"key": request.idempotency_key})
    assert found is not None  # the row the insert conflicted with
    existing = _same_request(request.idempotency_key, found[0], found[1], fingerprint)
    return existing, False


def job_status(job_id: str) -> str | None:
    """The job's status alone (one indexed read); None when unknown."""
    with session_scope() as session:
        return session.execute(select(Job.status).where(Job.id == job_id)).scalar_one_or_none()


def job_progress(job_id: str) -> tuple[str, str | None] | None:
    """``(status, tier)`` of a job: the tier of its latest attempt, or, routed but not yet
    attempted, the first tier of its plan (None before it is routed); None when unknown."""
    with session_scope() as session:
        job = session.execute(select(Job.status, Job.plan).where(Job.id == job_id)).one_or_none()
        if job is None:
            return None
        last = session.execute(
            select(Attempt.tier)
            .where(Attempt.job_id == job_id)
            .order_by(Attempt.attempt_no.desc())
            .limit(1)
        ).scalar_one_or_none()
    status, plan = job
    if last is None and plan and plan.get("chain"):
        last = plan["chain"][0]
    return status, last


_JOB_SELECT = f"SELECT {rows.columns_of('jobs', rows.JOB_COLUMNS)}"
_LOAD_JOB_SQL = rows.statement(f"{_JOB_SELECT} FROM jobs WHERE id = :id")


def load_job(job_id: str) -> Job | None:
    """The job's row (one statement; the object is attached to no session), or None."""
    found = rows.run_one(_LOAD_JOB_SQL, {"id": job_id})
    return rows.build(Job, rows.JOB_COLUMNS, found) if found is not None else None


def _save_plan_sql(durable: bool) -> rows.Statement:
    returning = "id" if durable else f"id, {rows.ASYNC_COMMIT}"
    return rows.statement(
        f"""UPDATE jobs SET status = '{JobStatus.ROUTED}', complexity = :complexity, plan = :plan,
    updated_at = now()
WHERE id = :id AND status = '{JobStatus.QUEUED}'
RETURNING {returning}""",
        json=["plan"],
    )


_SAVE_PLAN_SQL = {durable: _save_plan_sql(durable) for durable in (True, False)}


_ROUTING_SQL = rows.statement(f"{_JOB_SELECT}, {CURRENT_MODE_SQL} FROM jobs WHERE id = :id")
Save = Callable[[str, dict[str, Any]], bool]


@contextmanager
def routing(job_id: str) -> Iterator[tuple[Job | None, str | None, Save]]:
    """The job, the fleet's mode as the newest switch names it (None: never switched; see
    :mod:`tierflow.store.modes`) and a ``save(complexity, plan)`` for the job: what the routing
    task reads and writes, one round trip each (the mode comes with the job). ``save`` is
    :func:`save_plan`, not durable: only a queued job gets a plan, in one conditional
    statement, so a job cancelled or routed by another delivery since the read is left alone,
    as it would be inside one transaction.

    The plan's commit does not wait for the disk: a plan lost to a PostgreSQL crash leaves the
    job ``queued``, the sweeper sends it to the router again, and an attempt message sent
    meanwhile is refused as unrouted (its job is not lost, only routed again)."""

    def save(complexity: str, plan: dict[str, Any]) -> bool:
        return save_plan(job_id, complexity, plan, durable=False)

    found = rows.run_one(_ROUTING_SQL, {"id": job_id})
    if found is None:
        yield None, None, save
        return
    width = len(rows.JOB_COLUMNS)
    yield rows.build(Job, rows.JOB_COLUMNS, found[:width]), found[width], save


_SAVE_PLAN_FOR_MODE_SQL = rows.statement(
    f"""UPDATE jobs SET status = '{JobStatus.ROUTED}', complexity = :complexity, plan = :plan,
    updated_at = now()
WHERE id = :id AND status = '{JobStatus.QUEUED}'
  AND {CURRENT_MODE_SQL} IS NOT DISTINCT FROM CAST(:mode AS text)
RETURNING id, {rows.ASYNC_COMMIT}""",
    json=["plan"],
)


def save_plan_for_mode(
    job_id: str, complexity: str, plan: dict[str, Any], mode: str | None
) -> bool:
    """:func:`routing`'s save without its read: the plan of a queued job made for ``mode`` (the
    newest switch's, None: never switched), stored only if that is still the fleet's mode, in
    one statement (the check and the write are one). False when the job is not queued (routed
    by another delivery, cancelled, unknown) or the mode is another now: then the caller reads
    the job and the mode and plans again. Not durable, as :func:`routing`'s save."""
    params = {"id": job_id, "complexity": complexity, "plan": plan, "mode": mode}
    return rows.run_one(_SAVE_PLAN_FOR_MODE_SQL, params) is not None


def save_plan(job_id: str, complexity: str, plan: dict[str, Any], *, durable: bool = True) -> bool:
    """Record the routing plan once; False when the job already had one or is finished.
    ``durable=False``: the commit does not wait for the disk (see :func:`routing`)."""
    params = {"id": job_id, "complexity": complexity, "plan": plan}
    return rows.run_one(_SAVE_PLAN_SQL[durable], params) is not None


def finalize_job(job_id: str, status: JobStatus, **fields: Any) -> JobResult | None:
    """Move a job to a terminal status once; return its :class:`JobResult` as stored then, or
    None when it already was terminal.

    The job's cost is the sum of its stored attempts' costs, computed in the same statement (one
    round trip), so it can never count an attempt twice, added to what superseded calls already
    put there (:func:`~tierflow.store.attempts.record_superseded_call`).
    """
    with session_scope() as session:
        return finalize_in(session, job_id, status, **fields)


def finalize_in(
    session: Session,
    job_id: str,
    status: JobStatus,
    *,
    attempts: list[Attempt] | None = None,
    **fields: Any,
) -> JobResult | None:
    """:func:`finalize_job` inside the caller's transaction (the attempt's outcome and the job's
    end commit together: :func:`~tierflow.store.attempts.finish_attempt`). ``attempts``: every
    attempt of the job, when the caller holds them all (its first attempt is its only one),
    saving their read."""
    total = (
        select(func.coalesce(func.sum(Attempt.cost_usd), 0))
        .where(Attempt.job_id == job_id)
        .scalar_subquery()
    )
    job = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.not_in(TERMINAL_STATUSES))
        .values(status=status.value, finished_at=utcnow(), cost_usd=Job.cost_usd + total, **fields)
        .returning(Job)
        .execution_options(synchronize_session=False)
    ).scalar_one_or_none()
    if job is None:
        return None
    if attempts is None:
        attempts = list(
            session.execute(
                select(Attempt).where(Attempt.job_id == job_id).order_by(Attempt.attempt_no)
            ).scalars()
        )
    return result_of(job, attempts)


def job_result(job_id: str) -> JobResult | None:
    """The job as a :class:`JobResult`, with every attempt; None when unknown."""
    with session_scope() as session:
        job = session.get(Job, job_id)
        if job is None:
            return None
        return result_of(job, list(job.attempts))


def result_of(job: Job, attempts: list[Attempt]) -> JobResult:
    """A job row and its attempts (in attempt order) as a :class:`JobResult`."""
    times = split_times(
        job.created_at,
        job.finished_at,
        [AttemptSpan(a.started_at, a.finished_at, a.latency_ms) for a in attempts],
    )
    summaries = [
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
            cached=a.cached,
            queue_ms=times.waits_ms[i] if times else None,
        )
        for i, a in enumerate(attempts)
    ]
    final = next((a for a in reversed(attempts) if a.model == job.model and a.text), None)
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
        attempts=summaries,
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
        cached=final.cached if final else None,
        queue_ms=times.queue_ms if times else None,
        model_ms=times.model_ms if times else None,
        fleet_ms=times.fleet_ms if times else None,
        overhead_ms=times.overhead_ms if times else None,
    )


def open_jobs_past(deadline: datetime) -> list[Job]:
    """Unfinished jobs whose deadline is before ``deadline`` (read from ``ix_jobs_open``, the
    unfinished jobs alone: ``finished_at IS NULL`` is its predicate)."""
    with session_scope() as session:
        return list(
            session.execute(
                select(Job).where(
                    Job.finished_at.is_(None),
                    Job.status.not_in(TERMINAL_STATUSES),
                    Job.deadline < deadline,
                )
            ).scalars()
        )
