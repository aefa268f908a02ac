"""Batches: a named set of jobs, its progress, results, cancellation and end.

A batch's jobs are ordinary jobs with ``batch_id`` and ``batch_line`` set (and an idempotency
key derived from both), so everything the fleet promises a job holds for each of them.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

from sqlalchemy import String, any_, bindparam, exists, func, select, update
from sqlalchemy.dialects.postgresql import ARRAY, insert

from schemas.tables import Attempt, Batch, Job
from tierflow.core.constants import TERMINAL_STATUSES, AttemptStatus, BatchStatus, JobStatus
from tierflow.core.db import session_scope


def open_batch(name: str, max_cost_usd: float | None) -> tuple[Batch, bool]:
    """The batch called ``name``, created if new (``created`` True); an existing one is resumed
    with the ceiling given now, and back to running unless it was cancelled."""
    with session_scope() as session:
        inserted = session.execute(
            insert(Batch)
            .values(
                id=str(uuid.uuid4()),
                name=name,
                status=BatchStatus.RUNNING.value,
                max_cost_usd=max_cost_usd,
                submitted=0,
            )
            .on_conflict_do_nothing(index_elements=["name"])
            .returning(Batch.id)
        ).scalar_one_or_none()
        if inserted is None:
            session.execute(
                update(Batch)
                .where(Batch.name == name, Batch.status != BatchStatus.CANCELLED.value)
                .values(status=BatchStatus.RUNNING.value, max_cost_usd=max_cost_usd)
            )
        batch = session.execute(select(Batch).where(Batch.name == name)).scalar_one()
        return batch, inserted is not None


def get_batch(batch_id_or_name: str) -> Batch | None:
    with session_scope() as session:
        found = session.execute(
            select(Batch).where((Batch.id == batch_id_or_name) | (Batch.name == batch_id_or_name))
        ).scalar_one_or_none()
        return found


def note_submitted(batch_id: str, lines: int) -> None:
    """Record how many lines the submitter has read (never moves backwards)."""
    with session_scope() as session:
        session.execute(
            update(Batch)
            .where(Batch.id == batch_id)
            .values(submitted=func.greatest(Batch.submitted, lines))
        )


def batch_cost(batch_id: str) -> float:
    """Spent so far (US dollars): every attempt of the batch's jobs, finished or not."""
    with session_scope() as session:
        total = session.execute(
            select(func.coalesce(func.sum(Attempt.cost_usd), 0))
            .join(Job, Job.id == Attempt.job_id)
            .where(Job.batch_id == batch_id)
        ).scalar_one()
        return float(total)


def batch_progress(batch_id: str) -> dict[str, Any]:
    """Counts by job status, finished jobs by tier, cost so far (US dollars), first and last
    finish times: what a progress bar and an ETA need, in three aggregate queries."""
    with session_scope() as session:
        statuses = dict(
            session.execute(
                select(Job.status, func.count())
                .where(Job.batch_id == batch_id)
                .group_by(Job.status)
            ).all()
        )
        tiers = dict(
            session.execute(
                select(Job.tier, func.count())
                .where(Job.batch_id == batch_id, Job.tier.is_not(None))
                .group_by(Job.tier)
            ).all()
        )
        first, last = session.execute(
            select(func.min(Job.finished_at), func.max(Job.finished_at)).where(
                Job.batch_id == batch_id
            )
        ).one()
    return {
        "statuses": {str(k): int(v) for k, v in statuses.items()},
        "by_tier": {str(k): int(v) for k, v in tiers.items()},
        "jobs": sum(int(v) for v in statuses.values()),
        "finished": sum(int(v) for k, v in statuses.items() if k in TERMINAL_STATUSES),
        "cost_usd": batch_cost(batch_id),
        "first_finished_at": first,
        "last_finished_at": last,
    }


def batch_status(batch_id: str) -> dict[str, Any]:
    """:func:`batch_progress` with the batch's state (settled now, :func:`settle_batch`), name,
    lines submitted and an ETA in seconds (``eta_s``: the jobs left at the finish rate so far;
    None until two jobs have finished): what ``tierflow batch status`` shows."""
    found = batch_progress(batch_id)
    batch = get_batch(batch_id)
    found["state"] = settle_batch(batch_id)
    found["name"] = batch.name if batch else None
    found["submitted"] = batch.submitted if batch else 0
    first, last = found["first_finished_at"], found["last_finished_at"]
    left = found["jobs"] - found["finished"]
    eta = None
    if first and last and last > first and found["finished"] > 1:
        rate = (found["finished"] - 1) / (last - first).total_seconds()
        eta = left / rate if rate > 0 else None
    found["eta_s"] = eta
    return found


def unfinished(job_ids: list[str]) -> list[str]:
    """Those of ``job_ids`` whose job has not ended yet (in the order given): one indexed
    read, bounded by the list's length."""
    if not job_ids:
        return []
    with session_scope() as session:
        open_ids = set(
            session.execute(
                select(Job.id).where(
                    Job.id == any_(bindparam("ids", type_=ARRAY(String))),
                    Job.status.not_in(TERMINAL_STATUSES),
                ),
                {"ids": job_ids},
            ).scalars()
        )
    return [job_id for job_id in job_ids if job_id in open_ids]


def cancel_batch(batch_id: str) -> int:
    """Cancel every job of the batch that no attempt is running for; return how many.

    A job whose attempt holds a live claim finishes and is kept. A cancelled job is terminal,
    so any of its messages still queued is dropped by the first pipeline step.

    The open jobs' rows are locked first, and their attempts read by a second statement: a
    claim locks its job's row too, so one that was under way when the cancel came has committed
    its attempt by then, and the second statement's snapshot sees it (one statement alone would
    judge "no attempt running" on the snapshot taken before the claim committed, and cancel a
    job whose attempt goes on). A claim that comes after finds its job cancelled.
    """
    running = exists().where(
        Attempt.job_id == Job.id, Attempt.status == AttemptStatus.RUNNING.value
    )
    with session_scope() as session:
        session.execute(
            update(Batch).where(Batch.id == batch_id).values(status=BatchStatus.CANCELLING.value)
        )
        open_jobs = list(
            session.execute(
                select(Job.id)
                .where(Job.batch_id == batch_id, Job.status.not_in(TERMINAL_STATUSES))
                .with_for_update()
            ).scalars()
        )
        if not open_jobs:
            return 0
        result = session.execute(
            update(Job)
            .where(
                Job.id == any_(bindparam("open_jobs", open_jobs, type_=ARRAY(String))),
                Job.status.not_in(TERMINAL_STATUSES),
                ~running,
            )
            .values(
                status=JobStatus.CANCELLED.value,
                finished_at=func.now(),
                error="cancelled with its batch",
            )
            .execution_options(synchronize_session=False)
        )
        return int(result.rowcount)  # type: ignore[attr-defined]


def settle_batch(batch_id: str, *, submitting: bool = False) -> str | None:
    """Mark the batch done (or cancelled) once every job is finished and the submitter is not
    still sending; returns the batch's status."""
    with session_scope() as session:
        open_jobs = session.execute(
            select(func.count()).where(
                Job.batch_id == batch_id, Job.status.not_in(TERMINAL_STATUSES)
            )
        ).scalar_one()
        batch = session.get(Batch, batch_id)
        if batch is None:
            return None
        if (
            open_jobs == 0
            and not submitting
            and batch.status
            in (
                BatchStatus.RUNNING.value,
                BatchStatus.CANCELLING.value,
            )
        ):
            cancelling = batch.status == BatchStatus.CANCELLING.value
            batch.status = (BatchStatus.CANCELLED if cancelling else BatchStatus.DONE).value
            batch.finished_at = func.now()
        return batch.status


def batch_rows(batch_id: str, order: str = "input") -> Iterator[dict[str, Any]]:
    """One dict per job (line, job_id, status, tier, model, text, cost_usd, error), by input
    line or by finish time (``order="completed"``: finished ones only), streamed."""
    query = select(Job).where(Job.batch_id == batch_id)
    if order == "completed":
        query = query.where(Job.finished_at.is_not(None)).order_by(Job.finished_at, Job.id)
    else:
        query = query.order_by(Job.batch_line)
    with session_scope() as session:
        for job in session.execute(query.execution_options(yield_per=500)).scalars():
            yield {
                "line": job.batch_line,
                "job_id": job.id,
                "status": job.status,
                "tier": job.tier,
                "model": job.model,
                "text": job.text,
                "cost_usd": float(job.cost_usd or 0),
                "error": job.error,
            }
