"""Provider batches: API-tier calls deferred to OpenAI's Batch API or Anthropic's Message Batches.

An attempt that goes through a provider batch is *deferred*: its delivery stores one item (the
exact request body and its ``custom_id``) and pushes the attempt's lease on past the providers'
completion window, in one transaction fenced by the claim (:func:`defer_attempt`). A live lease
is what keeps the sweeper off a running attempt (:func:`tierflow.store.stalled_jobs`), so the
job waits for its provider batch without being re-sent. Items are grouped into provider batches
(:func:`take_pending`), their results stored once the batch ends (:func:`store_results`), and the
attempt is resumed: :func:`claim_deferred` hands the attempt from the delivery that deferred it
to the resume, with the claim's own rules (one holder under a live lease, a finished attempt is
replayed), so a redelivered resume stores one result and charges once.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import and_, exists, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from schemas.tables import Attempt, Batch, Job, ProviderBatch, ProviderBatchItem
from tierflow.core.constants import (
    TERMINAL_STATUSES,
    AttemptStatus,
    ItemState,
    JobStatus,
    ProviderBatchStatus,
)
from tierflow.core.db import session_scope
from tierflow.store.attempts import Claim, ClaimResult, held_by

Group = tuple[str, str, str | None]  # (provider, model name, base URL)


def custom_id_for(job_id: str, attempt_no: int) -> str:
    """The request's id at the provider: ``tf-<job id>-<attempt no>`` (at most 64 characters of
    ``[A-Za-z0-9_-]``, what both providers accept), derived, so a result maps back alone."""
    return f"tf-{job_id}-{attempt_no}"


def allow_provider_batch(batch_id: str) -> None:
    """Let the batch's API-tier calls go through the providers' Batch APIs."""
    with session_scope() as session:
        session.execute(update(Batch).where(Batch.id == batch_id).values(provider_batch=True))


@dataclass(frozen=True)
class Deferral:
    """What a delivery of a batch job's attempt needs to know: whether its batch allows the
    providers' Batch APIs, and the attempt's item when it was deferred before."""

    allowed: bool
    item: ProviderBatchItem | None


def deferral_of(batch_id: str, job_id: str, attempt_no: int) -> Deferral:
    """One read: the batch's flag and the attempt's item (None when not deferred)."""
    with session_scope() as session:
        row = session.execute(
            select(Batch.provider_batch, ProviderBatchItem)
            .select_from(Batch)
            .outerjoin(
                ProviderBatchItem,
                and_(
                    ProviderBatchItem.job_id == job_id,
                    ProviderBatchItem.attempt_no == attempt_no,
                ),
            )
            .where(Batch.id == batch_id)
        ).one_or_none()
    if row is None:
        return Deferral(False, None)
    return Deferral(bool(row[0]), row[1])


def defer_attempt(
    job_id: str,
    attempt_no: int,
    worker: str,
    hold_s: float,
    *,
    step: int,
    retries_in_step: int,
    provider: str,
    model: str,
    base_url: str | None,
    body: dict[str, Any],
    prefill: str = "",
) -> bool:
    """Store the attempt's item and hold its lease ``hold_s`` seconds (PostgreSQL's clock), in
    one transaction, only while ``worker`` holds the attempt; False when it does not (its lease
    was taken over: nothing is stored). A second deferral of the same attempt stores nothing."""
    with session_scope() as session:
        held = session.execute(
            update(Attempt)
            .where(*held_by(job_id, attempt_no, worker))
            .values(
                lease_until=func.now() + timedelta(seconds=hold_s),
                model=model,
                provider=provider,
            )
            .returning(Attempt.id)
        ).scalar_one_or_none()
        if held is None:
            return False
        session.execute(
            insert(ProviderBatchItem)
            .values(
                job_id=job_id,
                attempt_no=attempt_no,
                step=step,
                retries_in_step=retries_in_step,
                custom_id=custom_id_for(job_id, attempt_no),
                provider=provider,
                model=model,
                base_url=base_url,
                body=body,
                prefill=prefill,
                state=ItemState.PENDING.value,
                deferred_by=worker,
            )
            .on_conflict_do_nothing(constraint="uq_provider_batch_items_attempt")
        )
        return True


@dataclass(frozen=True)
class DroppedItem:
    """A pending item dropped because its job ended: its attempt and its job's metadata (whose
    daemon's budget hold the fleet releases)."""

    job_id: str
    attempt_no: int
    job_metadata: dict[str, Any]


def drop_items_of_ended_jobs() -> list[DroppedItem]:
    """Pending items whose job ended (cancelled, expired) are never sent; return them."""
    with session_scope() as session:
        rows = session.execute(
            update(ProviderBatchItem)
            .where(
                ProviderBatchItem.state == ItemState.PENDING.value,
                Job.id == ProviderBatchItem.job_id,
                Job.status.in_(TERMINAL_STATUSES),
            )
            .values(state=ItemState.DROPPED.value, ended_at=func.now())
            .returning(ProviderBatchItem.job_id, ProviderBatchItem.attempt_no, Job.job_metadata)
            .execution_options(synchronize_session=False)
        ).all()
    return [DroppedItem(str(j), int(n), dict(m or {})) for j, n, m in rows]


def ready_groups(collect_s: float, max_requests: int) -> list[Group]:
    """The groups of pending items ready to go: full, or their oldest waited ``collect_s``."""
    age = func.extract("epoch", func.now() - func.min(ProviderBatchItem.created_at))
    with session_scope() as session:
        rows = session.execute(
            select(ProviderBatchItem.provider, ProviderBatchItem.model, ProviderBatchItem.base_url)
            .where(ProviderBatchItem.state == ItemState.PENDING.value)
            .group_by(
                ProviderBatchItem.provider, ProviderBatchItem.model, ProviderBatchItem.base_url
            )
            .having(or_(func.count() >= max_requests, age >= collect_s))
        ).all()
    return [(p, m, u) for p, m, u in rows]


def take_pending(group: Group, limit: int) -> tuple[ProviderBatch, list[ProviderBatchItem]] | None:
    """A new provider batch (``submitting``) with up to ``limit`` of the group's pending items,
    oldest first, moved to ``submitted`` in the same transaction (rows another submitter holds
    are skipped); None when there are none."""
    provider, model, base_url = group
    same_url = (
        ProviderBatchItem.base_url.is_(None)
        if base_url is None
        else ProviderBatchItem.base_url == base_url
    )
    with session_scope() as session:
        items = list(
            session.execute(
                select(ProviderBatchItem)
                .where(
                    ProviderBatchItem.state == ItemState.PENDING.value,
                    ProviderBatchItem.provider == provider,
                    ProviderBatchItem.model == model,
                    same_url,
                )
                .order_by(ProviderBatchItem.id)
                .limit(limit)
                .with_for_update(skip_locked=True)
            ).scalars()
        )
        if not items:
            return None
        batch = ProviderBatch(
            id=str(uuid.uuid4()),
            provider=provider,
            model=model,
            base_url=base_url,
            status=ProviderBatchStatus.SUBMITTING.value,
            requests=len(items),
        )
        session.add(batch)
        session.flush()
        for item in items:
            item.state = ItemState.SUBMITTED.value
            item.batch_id = batch.id
        session.flush()
        session.expunge_all()
        return batch, items


def stale_submitting(older_than_s: float) -> list[tuple[ProviderBatch, list[ProviderBatchItem]]]:
    """Provider batches left ``submitting`` longer than ``older_than_s`` (their submitter died
    before the provider's answer was stored), with their items: to be submitted again."""
    with session_scope() as session:
        batches = list(
            session.execute(
                select(ProviderBatch).where(
                    ProviderBatch.status == ProviderBatchStatus.SUBMITTING.value,
                    ProviderBatch.created_at < func.now() - timedelta(seconds=older_than_s),
                )
            ).scalars()
        )
        found = []
        for batch in batches:
            items = list(
                session.execute(
                    select(ProviderBatchItem)
                    .where(ProviderBatchItem.batch_id == batch.id)
                    .order_by(ProviderBatchItem.id)
                ).scalars()
            )
            found.append((batch, items))
        session.expunge_all()
        return found


def note_submitted(batch_id: str, remote_id: str, remote_status: str, input_file_id: str | None):
    """The provider accepted the batch: it is open, polled from now on."""
    with session_scope() as session:
        session.execute(
            update(ProviderBatch)
            .where(ProviderBatch.id == batch_id)
            .values(
                status=ProviderBatchStatus.OPEN.value,
                remote_id=remote_id,
                remote_status=remote_status,
                input_file_id=input_file_id,
                polled_at=func.now(),
            )
        )


def batches_to_poll(poll_s: float) -> list[ProviderBatch]:
    """Open provider batches not polled for ``poll_s`` seconds, the least recently polled first."""
    with session_scope() as session:
        return list(
            session.execute(
                select(ProviderBatch)
                .where(
                    ProviderBatch.status == ProviderBatchStatus.OPEN.value,
                    or_(
                        ProviderBatch.polled_at.is_(None),
                        ProviderBatch.polled_at <= func.now() - timedelta(seconds=poll_s),
                    ),
                )
                .order_by(ProviderBatch.polled_at)
            ).scalars()
        )


def note_polled(batch_id: str, remote_status: str, counts: dict[str, Any]) -> None:
    with session_scope() as session:
        session.execute(
            update(ProviderBatch)
            .where(ProviderBatch.id == batch_id)
            .values(remote_status=remote_status, request_counts=counts, polled_at=func.now())
        )


def store_results(
    batch_id: str,
    results: dict[str, tuple[str, dict[str, Any]]],
    missing: tuple[str, dict[str, Any]],
    remote_status: str,
    counts: dict[str, Any],
) -> int:
    """Store every item's result (``custom_id`` → ``(kind, fields)``; an item the provider
    returned nothing for gets ``missing``) and end the provider batch, in one transaction;
    return how many items it moved to ``done``. Only items still ``submitted`` move, so storing
    the same results again (a poller that died before its commit, then ran again) is harmless."""
    with session_scope() as session:
        items = list(
            session.execute(
                select(ProviderBatchItem)
                .where(
                    ProviderBatchItem.batch_id == batch_id,
                    ProviderBatchItem.state == ItemState.SUBMITTED.value,
                )
                .with_for_update()
            ).scalars()
        )
        for item in items:
            kind, fields = results.get(item.custom_id, missing)
            item.state = ItemState.DONE.value
            item.result_kind = kind
            item.result = fields
            item.ended_at = func.now()
        session.execute(
            update(ProviderBatch)
            .where(ProviderBatch.id == batch_id)
            .values(
                status=ProviderBatchStatus.ENDED.value,
                remote_status=remote_status,
                request_counts=counts,
                polled_at=func.now(),
                ended_at=func.now(),
            )
        )
        return len(items)


@dataclass(frozen=True)
class ToResume:
    job_id: str
    attempt_no: int
    tier: str
    priority: int


def items_to_resume(resend_after_s: float, limit: int = 1000) -> list[ToResume]:
    """Items with a result whose attempt still runs and whose resume was not sent in the last
    ``resend_after_s`` seconds (never, or a resume that was lost); each is marked sent now."""
    with session_scope() as session:
        rows = session.execute(
            select(ProviderBatchItem, Attempt.tier, Job.priority)
            .join(
                Attempt,
                and_(
                    Attempt.job_id == ProviderBatchItem.job_id,
                    Attempt.attempt_no == ProviderBatchItem.attempt_no,
                ),
            )
            .join(Job, Job.id == ProviderBatchItem.job_id)
            .where(
                ProviderBatchItem.state == ItemState.DONE.value,
                Attempt.status == AttemptStatus.RUNNING.value,
                Job.status.not_in(TERMINAL_STATUSES),
                or_(
                    ProviderBatchItem.resume_sent_at.is_(None),
                    ProviderBatchItem.resume_sent_at
                    < func.now() - timedelta(seconds=resend_after_s),
                ),
            )
            .order_by(ProviderBatchItem.id)
            .limit(limit)
            .with_for_update(of=ProviderBatchItem, skip_locked=True)
        ).all()
        found = []
        for item, tier, priority in rows:
            item.resume_sent_at = func.now()
            found.append(ToResume(item.job_id, item.attempt_no, tier, priority))
        return found


def item_of(job_id: str, attempt_no: int) -> ProviderBatchItem | None:
    with session_scope() as session:
        return session.execute(
            select(ProviderBatchItem).where(
                ProviderBatchItem.job_id == job_id, ProviderBatchItem.attempt_no == attempt_no
            )
        ).scalar_one_or_none()


def claim_deferred(
    job_id: str, attempt_no: int, worker: str, lease_s: float, retry: int = 0
) -> ClaimResult:
    """Take a deferred attempt whose result is stored, for the resume ``worker``
    (``host/run:task_id``), under a lease of ``lease_s`` seconds.

    The resume takes the attempt from the delivery that deferred it (the row's worker is still
    the item's ``deferred_by``), from a resume whose lease ran out, or from an earlier run of the
    same task id with a lower Celery retry number (see :func:`tierflow.store.claim_attempt`).
    Otherwise: a finished attempt is ``DONE`` (the resume replays its decision), one another
    resume holds under a live lease is ``BUSY``, a job that ended (a cancel, its deadline) is
    ``GONE`` (the result is not used), and an item without a result yet is ``BUSY`` too.
    """
    delivery = worker.rsplit(":", 1)[-1]
    with session_scope() as session:
        # The job's row lock orders the resume with a concurrent cancel (as the claim does).
        status = session.execute(
            select(Job.status).where(Job.id == job_id).with_for_update()
        ).scalar_one_or_none()
        if status is None or status in TERMINAL_STATUSES:
            return ClaimResult(Claim.GONE)
        item = session.execute(
            select(ProviderBatchItem).where(
                ProviderBatchItem.job_id == job_id, ProviderBatchItem.attempt_no == attempt_no
            )
        ).scalar_one_or_none()
        if item is None or item.state != ItemState.DONE.value:
            return ClaimResult(Claim.BUSY)
        taken = session.execute(
            update(Attempt)
            .where(
                Attempt.job_id == job_id,
                Attempt.attempt_no == attempt_no,
                Attempt.status == AttemptStatus.RUNNING.value,
                or_(
                    Attempt.worker == item.deferred_by,
                    Attempt.lease_until < func.now(),
                    Attempt.worker.endswith(f":{delivery}", autoescape=True)
                    & (Attempt.delivery_retry < retry),
                ),
            )
            .values(
                worker=worker,
                delivery_retry=retry,
                lease_until=func.now() + timedelta(seconds=lease_s),
            )
            .returning(Attempt.id)
        ).scalar_one_or_none()
        if taken is not None:
            return ClaimResult(Claim.OWNED)
        row = session.execute(
            select(Attempt).where(Attempt.job_id == job_id, Attempt.attempt_no == attempt_no)
        ).scalar_one_or_none()
        if row is None:
            return ClaimResult(Claim.GONE)
        if row.status != AttemptStatus.RUNNING.value:
            return ClaimResult(Claim.DONE, row)
        return ClaimResult(Claim.BUSY, row)


def cancel_deferred_jobs(batch_id: str, reason: str = "cancelled with its batch") -> int:
    """Cancel the batch's unfinished jobs whose only running attempt waits for a provider batch
    (its item has no result yet and no resume took it); return how many. Their attempts end
    ``error`` with the kind ``cancelled``; their items, if not yet submitted, are never sent,
    and a result that comes later is not used (the job has ended).

    The jobs' row locks are taken first, so a resume claiming one of them at the same moment
    either took it first (that job is in flight and is kept) or finds it cancelled.
    """
    with session_scope() as session:
        open_ids = _lock_open_jobs(session, batch_id)
        chosen = _waiting_only_for_a_provider_batch(session, open_ids) if open_ids else []
        if not chosen:
            return 0
        for job_id, attempt_no in chosen:
            session.execute(
                update(Attempt)
                .where(
                    Attempt.job_id == job_id,
                    Attempt.attempt_no == attempt_no,
                    Attempt.status == AttemptStatus.RUNNING.value,
                )
                .values(
                    status=AttemptStatus.ERROR.value,
                    error_kind="cancelled",
                    error=f"{reason} while waiting for its provider batch",
                    lease_until=None,
                    finished_at=func.now(),
                )
            )
        job_ids = [j for j, _ in chosen]
        session.execute(
            update(Job)
            .where(Job.id.in_(job_ids))
            .values(status=JobStatus.CANCELLED.value, finished_at=func.now(), error=reason)
            .execution_options(synchronize_session=False)
        )
        return len(job_ids)


def _lock_open_jobs(session: Session, batch_id: str) -> list[str]:
    """The ids of the batch's unfinished jobs, their rows locked (in id order: no deadlock)."""
    return list(
        session.execute(
            select(Job.id)
            .where(Job.batch_id == batch_id, Job.status.not_in(TERMINAL_STATUSES))
            .order_by(Job.id)
            .with_for_update()
        ).scalars()
    )


def _waiting_only_for_a_provider_batch(
    session: Session, job_ids: list[str]
) -> list[tuple[str, int]]:
    """``(job_id, attempt_no)`` of the running attempts that wait for a provider batch (their
    item unanswered and still held by the deferring delivery), for jobs with no other running
    attempt: a job with one in flight elsewhere is kept."""
    waiting = and_(
        ProviderBatchItem.job_id == Attempt.job_id,
        ProviderBatchItem.attempt_no == Attempt.attempt_no,
        ProviderBatchItem.deferred_by == Attempt.worker,
        ProviderBatchItem.state.in_([ItemState.PENDING.value, ItemState.SUBMITTED.value]),
    )
    running = and_(Attempt.job_id.in_(job_ids), Attempt.status == AttemptStatus.RUNNING.value)
    deferred = session.execute(
        select(Attempt.job_id, Attempt.attempt_no).where(running, exists().where(waiting))
    ).all()
    others = set(
        session.execute(select(Attempt.job_id).where(running, ~exists().where(waiting))).scalars()
    )
    return [(j, n) for j, n in deferred if j not in others]


def batches_to_cancel() -> list[ProviderBatch]:
    """Open provider batches every item of which belongs to an ended job: nobody waits for
    their results any more, so they are cancelled at the provider (once)."""
    alive = exists().where(
        ProviderBatchItem.batch_id == ProviderBatch.id,
        Job.id == ProviderBatchItem.job_id,
        Job.status.not_in(TERMINAL_STATUSES),
    )
    with session_scope() as session:
        return list(
            session.execute(
                select(ProviderBatch).where(
                    ProviderBatch.status == ProviderBatchStatus.OPEN.value,
                    ProviderBatch.cancel_requested.is_(False),
                    ~alive,
                )
            ).scalars()
        )


def note_cancel_requested(batch_id: str) -> None:
    with session_scope() as session:
        session.execute(
            update(ProviderBatch).where(ProviderBatch.id == batch_id).values(cancel_requested=True)
        )


def provider_batches_of(provider: str | None = None) -> list[ProviderBatch]:
    """Every provider batch (of ``provider``), oldest first: what status pages and tests read."""
    query = select(ProviderBatch).order_by(ProviderBatch.created_at, ProviderBatch.id)
    if provider is not None:
        query = query.where(ProviderBatch.provider == provider)
    with session_scope() as session:
        return list(session.execute(query).scalars())


def items_of_batch(batch_id: str) -> list[ProviderBatchItem]:
    with session_scope() as session:
        return list(
            session.execute(
                select(ProviderBatchItem)
                .where(ProviderBatchItem.batch_id == batch_id)
                .order_by(ProviderBatchItem.id)
            ).scalars()
        )


def close_deferred_attempt(job_id: str, attempt_no: int, deferred_by: str, reason: str) -> bool:
    """End a deferred attempt nobody will resume (its job ended): ``error``, kind ``late``,
    only while the delivery that deferred it still holds it; False when it did not."""
    with session_scope() as session:
        closed = session.execute(
            update(Attempt)
            .where(*held_by(job_id, attempt_no, deferred_by))
            .values(
                status=AttemptStatus.ERROR.value,
                error_kind="late",
                error=f"provider batch result not used: {reason}"[:2000],
                lease_until=None,
                finished_at=func.now(),
            )
            .returning(Attempt.id)
        ).scalar_one_or_none()
        return closed is not None


def items_of_ended_jobs(batch_id: str) -> list[ProviderBatchItem]:
    """The provider batch's items with a result whose job ended (no resume will use them)."""
    with session_scope() as session:
        return list(
            session.execute(
                select(ProviderBatchItem)
                .join(Job, Job.id == ProviderBatchItem.job_id)
                .where(
                    ProviderBatchItem.batch_id == batch_id,
                    ProviderBatchItem.state == ItemState.DONE.value,
                    Job.status.in_(TERMINAL_STATUSES),
                )
                .order_by(ProviderBatchItem.id)
            ).scalars()
        )
