"""Attempts: claimed once per (job, attempt number), finished once, fenced by the claim.

- ``claim_attempt``: one row per (job, attempt number); a second delivery of the same attempt
  finds it finished (and replays its decision) or held under a live lease (and waits). Leases
  are timed by PostgreSQL's clock, so workers on hosts with skewed clocks agree on them.
- ``renew_leases``: the holder of a running attempt pushes its lease on while its call runs,
  so a live, slow call is never taken over; a dead holder stops renewing and loses it.
- ``finish_attempt``: only moves a row forward from ``running`` *and only for the delivery that
  holds it* (the ``worker`` the claim stored), so a replay changes nothing, a cost is charged
  once, and a late writer whose lease was taken over cannot overwrite the new holder's row.
- ``record_superseded_call``: what such a late writer's call cost, kept apart from the attempt
  (which is the new holder's) but counted in the job's cost.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from functools import cache
from typing import Any

from sqlalchemy import JSON, Column, ColumnElement, delete, func, inspect, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from schemas.jobs import JobResult, utcnow
from schemas.tables import Attempt, Job, SupersededCall
from tierflow.core.constants import TERMINAL_STATUSES, AttemptStatus, JobStatus
from tierflow.core.db import session_scope
from tierflow.store import rows
from tierflow.store.jobs import finalize_in, result_of
from tierflow.store.modes import CURRENT_MODE_SQL
from tierflow.store.rows import Statement

HeldLease = tuple[str, int, str]  # (job_id, attempt_no, worker)


class Claim(StrEnum):
    OWNED = "owned"  # this delivery runs the attempt
    DONE = "done"  # an earlier delivery finished it: replay its decision
    BUSY = "busy"  # another delivery holds a live lease
    GONE = "gone"  # the job finished (cancelled, expired) before this delivery could claim
    UNKNOWN = "unknown"  # no such job
    REFUSED = "refused"  # the job is open but ``tier`` said it cannot be claimed (see the job)


@dataclass(frozen=True)
class ClaimResult:
    claim: Claim
    attempt: Attempt | None = None
    lease_left_s: float = 0.0
    job: Job | None = None  # the job as the claim read it (under its row lock)
    # the newest mode switch's mode as the same statement read it (claim_routed_attempt only)
    mode: str | None = None


# Given the job row read under its lock: the tier to claim the attempt on, or None to refuse.
TierOf = Callable[[Job], str | None]


def claim_attempt(
    job_id: str,
    attempt_no: int,
    step: int,
    tier: str | TierOf,
    worker: str,
    lease_s: float,
    retry: int = 0,
) -> ClaimResult:
    """Read the job and take (job, attempt_no) for this delivery, or say who has it: one
    transaction, the job's row locked, so the attempt's first read of its job costs no commit of
    its own.

    ``tier`` is the attempt's tier, or a function of the job row that returns it (None refuses
    the claim: the job is past its deadline or not routed, say; the caller reads why from
    ``ClaimResult.job``). The row lock orders the claim with a concurrent cancel or expiry: a
    job that ended first is never claimed (no model is called for it).

    A running attempt is taken over when its lease ran out (its holder died, hung or stalled:
    a live holder renews it while its call runs, see :class:`workers.leases.LeaseKeeper`), or
    when a *retry* of the same task holds it: ``worker`` is ``host:task_id`` and ``retry`` is
    Celery's retry number. Celery keeps the task id across retries and publishes a retry only
    once the run before it has raised, so a higher number of the same task id means the holder
    is over, on whichever worker the retry lands. The same task id with the same number is the
    broker handing the same run out again (its visibility timeout passed under a long call):
    that one respects the live lease like any other delivery.

    The claim's commit does not wait for the disk (``durable=False``): it is visible to every
    other delivery at once, so the fence works as with a durable one; only a PostgreSQL crash
    right after it can lose it, and then the holder's outcome finds no row it holds and is
    recorded as a superseded call (its cost counted, :func:`record_superseded_call`), and the
    sweeper, finding the job with no attempt in flight, sends the attempt again: the rule of a
    stalled holder. The outcome and the job's end (:func:`finish_attempt`) are durable.
    """
    lease_until = func.now() + timedelta(seconds=lease_s)
    with session_scope(durable=False) as session:
        job = session.execute(
            select(Job).where(Job.id == job_id).with_for_update()
        ).scalar_one_or_none()
        if job is None:
            return ClaimResult(Claim.UNKNOWN)
        if job.status in TERMINAL_STATUSES:
            return ClaimResult(Claim.GONE, job=job)
        claim_tier = tier(job) if callable(tier) else tier
        if claim_tier is None:
            return ClaimResult(Claim.REFUSED, job=job)
        claim = _insert_or_take_over(
            job_id, attempt_no, step, claim_tier, worker, retry, lease_until
        )
        if job.status == JobStatus.ROUTED.value:
            # The job starts running in the claim's own statement (a CTE: one round trip).
            claim = claim.add_cte(_start_job(job_id))
            set_committed_value(job, "status", JobStatus.RUNNING.value)
        if session.execute(claim).scalar_one_or_none() is not None:
            return ClaimResult(Claim.OWNED, job=job)
        return _why_not_claimed(session, job, attempt_no)


def _insert_or_take_over(
    job_id: str,
    attempt_no: int,
    step: int,
    tier: str,
    worker: str,
    retry: int,
    lease_until: Any,
) -> Any:
    """The claim's ``INSERT ... ON CONFLICT DO UPDATE``: a new attempt row, or the running one
    taken over when its lease is over or a later retry of the same task holds it (the rules of
    :func:`claim_attempt`); returns the attempt's id when this delivery got it."""
    delivery = worker.rsplit(":", 1)[-1]
    return (
        insert(Attempt)
        .values(
            job_id=job_id,
            attempt_no=attempt_no,
            step=step,
            tier=tier,
            status=AttemptStatus.RUNNING.value,
            worker=worker,
            delivery_retry=retry,
            lease_until=lease_until,
            started_at=func.now(),
            # the columns' defaults, given: with a CTE added, SQLAlchemy binds them as NULL
            input_tokens=0,
            output_tokens=0,
            cost_usd=0,
            fake=False,
        )
        .on_conflict_do_update(
            constraint="uq_attempts_job_attempt",
            set_={
                "worker": worker,
                "delivery_retry": retry,
                "lease_until": lease_until,
                "started_at": func.now(),
            },
            where=(Attempt.status == AttemptStatus.RUNNING.value)
            & (
                (Attempt.lease_until < func.now())
                | (
                    Attempt.worker.endswith(f":{delivery}", autoescape=True)
                    & (Attempt.delivery_retry < retry)
                )
            ),
        )
        .returning(Attempt.id)
    )


def _start_job(job_id: str) -> Any:
    """The CTE that starts a routed job in the claim's statement."""
    return (
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.ROUTED.value)
        .values(status=JobStatus.RUNNING.value)
        .cte("start_job")
    )


def _why_not_claimed(session: Session, job: Job, attempt_no: int) -> ClaimResult:
    """After a claim that did not land, in its transaction: the attempt finished (DONE) or held
    under a live lease (BUSY, with what is left of it)."""
    found = session.execute(
        select(Attempt, func.extract("epoch", Attempt.lease_until - func.now())).where(
            Attempt.job_id == job.id, Attempt.attempt_no == attempt_no
        )
    ).one_or_none()
    if found is None:  # its holder released it just now: try again in a moment
        return ClaimResult(Claim.BUSY, None, 0.0, job)
    row, left = found
    if row.status != AttemptStatus.RUNNING.value:
        return ClaimResult(Claim.DONE, row, job=job)
    return ClaimResult(Claim.BUSY, row, max(float(left or 0.0), 0.0), job)


# The claim of a routed job's attempt in one statement (see claim_routed_attempt): the job's row
# locked, the admission checked against its plan, the attempt inserted or taken over, the job
# started, the job read back; the commit non-durable (as claim_attempt's).
_CLAIM_SQL = rows.statement(
    f"""
WITH locked AS (
    SELECT * FROM jobs WHERE id = :job_id FOR UPDATE
), admitted AS (
    SELECT locked.plan -> 'chain' ->> :step AS tier FROM locked
    WHERE locked.status NOT IN {rows.TERMINAL_SQL}
      AND locked.plan IS NOT NULL
      AND jsonb_typeof(locked.plan -> 'chain') = 'array'
      AND jsonb_array_length(locked.plan -> 'chain') > :step
      AND (locked.deadline IS NULL OR locked.deadline > :now)
), claimed AS (
    INSERT INTO attempts AS a (job_id, attempt_no, step, tier, status, worker, delivery_retry,
                               lease_until, started_at, input_tokens, output_tokens, cost_usd,
                               fake)
    SELECT :job_id, :attempt_no, :step, admitted.tier, '{AttemptStatus.RUNNING}', :worker,
           :retry, now() + make_interval(secs => :lease_s), now(), 0, 0, 0, false
    FROM admitted
    ON CONFLICT ON CONSTRAINT uq_attempts_job_attempt DO UPDATE
    SET worker = EXCLUDED.worker, delivery_retry = EXCLUDED.delivery_retry,
        lease_until = EXCLUDED.lease_until, started_at = now()
    WHERE a.status = '{AttemptStatus.RUNNING}'
      AND (a.lease_until < now()
           OR (a.worker LIKE :same_task ESCAPE '/' AND a.delivery_retry < :retry))
    RETURNING a.id
), started AS (
    UPDATE jobs SET status = '{JobStatus.RUNNING}', updated_at = now() FROM claimed
    WHERE jobs.id = :job_id AND jobs.status = '{JobStatus.ROUTED}'
)
SELECT {rows.columns_of("locked", rows.JOB_COLUMNS)}, (SELECT id FROM claimed) AS claimed,
       {CURRENT_MODE_SQL} AS mode, {rows.ASYNC_COMMIT}
FROM locked
"""
)


def claim_routed_attempt(
    job_id: str,
    attempt_no: int,
    step: int,
    worker: str,
    lease_s: float,
    retry: int,
    now: datetime,
) -> ClaimResult | None:
    """:func:`claim_attempt` of a routed job's attempt on its plan's tier, in one round trip:
    the claim of every ordinary delivery. ``OWNED`` with the job and the fleet's mode (the
    newest switch's, read by the same statement) when the attempt is this delivery's now; None
    when this statement did not claim it (the job is unknown, finished, unrouted, past its
    deadline at ``now``, the step past its chain, or another delivery holds or finished the
    attempt): then :func:`claim_attempt` says which, in its own transaction.

    The same rules as :func:`claim_attempt`'s, in SQL: the job's row lock orders the claim with
    a cancel or an expiry; the takeover condition is the same; the commit is not durable.
    ``now`` is the caller's clock for the deadline, so its own admission check agrees.
    """
    delivery = worker.rsplit(":", 1)[-1]
    escaped = delivery.replace("/", "//").replace("%", "/%").replace("_", "/_")
    found = rows.run_one(
        _CLAIM_SQL,
        {
            "job_id": job_id,
            "attempt_no": attempt_no,
            "step": step,
            "worker": worker,
            "retry": retry,
            "lease_s": float(lease_s),
            "same_task": f"%:{escaped}",
            "now": now,
        },
    )
    width = len(rows.JOB_COLUMNS)
    if found is None or found[width] is None:  # the next column is the claimed attempt's id
        return None
    job = rows.build(Job, rows.JOB_COLUMNS, found[:width])
    if job.status == JobStatus.ROUTED.value:
        job.status = JobStatus.RUNNING.value  # the statement started it
    return ClaimResult(Claim.OWNED, job=job, mode=found[width + 1])


def held_by(job_id: str, attempt_no: int, worker: str) -> tuple[ColumnElement[bool], ...]:
    """The fence every holder's write goes through: the attempt is still running and ``worker``
    (the delivery that claimed it, ``host/run:task_id``) still holds it."""
    return (
        Attempt.job_id == job_id,
        Attempt.attempt_no == attempt_no,
        Attempt.status == AttemptStatus.RUNNING.value,
        Attempt.worker == worker,
    )


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


@dataclass(frozen=True)
class Finished:
    """What :func:`finish_attempt` did: ``landed`` when this delivery's outcome was stored;
    ``attempt`` is the row as it now stands (ours, or the holder's that fenced us out; None
    when the holder gave the attempt back unrun); ``result`` is the job as it ended when the
    same transaction also finalized it."""

    landed: bool
    attempt: Attempt | None
    ended: bool = False  # ``ending`` ended the job (``result`` None: it had ended already)
    result: JobResult | None = None


# Given the stored attempt row: None (the job goes on), or the job's terminal status and fields.
Ending = Callable[[Attempt], tuple[JobStatus, dict[str, Any]] | None]


def finish_attempt(
    job_id: str,
    attempt_no: int,
    *,
    worker: str,
    ending: Ending | None = None,
    tier: str | None = None,
    **fields: Any,
) -> Finished:
    """Store an attempt's outcome, fenced by the claim: the write lands only while the attempt
    is still running *and held by* ``worker`` (the ``host:task_id`` this delivery claimed it
    with). A delivery whose lease was taken over (it stalled, its holder thought dead) gets
    ``landed=False`` and the row as the new holder keeps it, untouched. The first outcome wins.

    ``ending``, when the write lands, decides from the stored row whether the job ends with it;
    if so the job is finalized in the same transaction (:func:`~tierflow.store.jobs.finalize_in`),
    so an attempt that ends its job costs one commit, and the two can never disagree.

    With ``tier`` (the tier the attempt was claimed on) the row as it will be stored is known
    before the write: every field ``ending`` may read is either written here or fixed since the
    claim (its number, its tier). Then ``ending`` decides first and the outcome, with the job's
    end when it ends it, is one statement: one round trip (see :func:`_finish_statement`).
    """
    if tier is not None:
        done = _finish_in_one(job_id, attempt_no, worker, ending, tier, fields)
        # None: fenced out by the claim; the row is the holder's, read it as it stands
        return done if done is not None else Finished(False, load_attempt(job_id, attempt_no))
    with session_scope() as session:
        landed = session.execute(
            update(Attempt)
            .where(*held_by(job_id, attempt_no, worker))
            .values(**{"lease_until": None, "finished_at": func.now(), **fields})
            .returning(Attempt)
            .execution_options(synchronize_session=False)
        ).scalar_one_or_none()
        if landed is not None:  # the common case: one statement, the row comes back with it
            end = ending(landed) if ending is not None else None
            if end is None:
                return Finished(True, landed)
            status, final = end
            # attempt numbers start at 0: the first attempt is the job's only one
            known = [landed] if attempt_no == 0 else None
            result = finalize_in(session, job_id, status, attempts=known, **final)
            return Finished(True, landed, True, result)
        row = session.execute(
            select(Attempt).where(Attempt.job_id == job_id, Attempt.attempt_no == attempt_no)
        ).scalar_one_or_none()
        return Finished(False, row)


# The job's columns a JobResult is made of (result_of): the ended job comes back with these
# alone, not with its prompt, context and plan, which nobody reads from it.
_RESULT_COLUMNS: tuple[Column[Any], ...] = tuple(
    Job.__table__.c[name]  # type: ignore[misc]
    for name in (
        "id", "status", "text", "tier", "model", "provider", "cost_usd",
        "api_baseline_cost_usd", "quality", "error", "degraded", "fake", "created_at",
        "finished_at",
    )
)  # fmt: skip
# What a running attempt's columns hold from its claim until its outcome is written.
_CLAIMED_ROW: dict[str, Any] = {"input_tokens": 0, "output_tokens": 0, "cost_usd": 0, "fake": False}


def _finish_in_one(
    job_id: str,
    attempt_no: int,
    worker: str,
    ending: Ending | None,
    tier: str,
    fields: dict[str, Any],
) -> Finished | None:
    """:func:`finish_attempt` as one statement; None when it did not land (fenced out)."""
    row = rows.detached(
        Attempt,
        {**_CLAIMED_ROW, **fields, "job_id": job_id, "attempt_no": attempt_no, "tier": tier},
    )
    end = ending(row) if ending is not None else None
    params: dict[str, Any] = {"job_id": job_id, "attempt_no": attempt_no, "worker": worker}
    params.update({f"a_{key}": value for key, value in fields.items()})
    final: dict[str, Any] = {}
    if end is not None:
        status, final = end
        params.update({f"j_{key}": value for key, value in final.items()})
        params.update(j_status=status.value, j_finished_at=utcnow())
    found = rows.run_one(_finish_statement(tuple(fields), tuple(final)), params)
    if found is None:
        return None
    width = len(rows.ATTEMPT_COLUMNS)
    landed = rows.build(Attempt, rows.ATTEMPT_COLUMNS, found[:width])
    if end is None:
        return Finished(True, landed)
    if not found[-1]:  # the last column says whether the job ended with it
        return Finished(True, landed, True, None)  # the job had ended already
    job = rows.build(Job, _RESULT_COLUMNS, found[width : width + len(_RESULT_COLUMNS)])
    # attempt numbers start at 0: the first attempt is the job's only one
    attempts = [landed] if attempt_no == 0 else attempts_of(job_id)
    return Finished(True, landed, True, result_of(job, attempts))


@cache
def _finish_statement(attempt_fields: tuple[str, ...], job_fields: tuple[str, ...]) -> Statement:
    """The outcome's ``UPDATE``, fenced as :func:`held_by` fences it, and with ``job_fields``
    the job's end in a CTE over the row it returned: what :func:`finalize_in` writes (the job
    open, its cost the sum of its attempts' added to what superseded calls put there)."""
    a_table = Attempt.__table__
    sets = {"lease_until": "NULL", "finished_at": "now()"}
    sets.update({key: f":a_{key}" for key in attempt_fields})
    json = [f"a_{key}" for key in attempt_fields if isinstance(a_table.c[key].type, JSON)]
    sql = f"""
WITH landed AS (
    UPDATE attempts SET {", ".join(f"{a_table.c[k].name} = {v}" for k, v in sets.items())}
    WHERE job_id = :job_id AND attempt_no = :attempt_no
      AND status = '{AttemptStatus.RUNNING}' AND worker = :worker
    RETURNING {rows.columns_of("attempts", rows.ATTEMPT_COLUMNS)}
)"""
    if not job_fields:
        return rows.statement(f"{sql}\nSELECT * FROM landed", json)
    job_columns = {key: _job_column(key) for key in job_fields}
    json += [f"j_{key}" for key in job_fields if isinstance(job_columns[key].type, JSON)]
    job_sets = "".join(f", {job_columns[key].name} = :j_{key}" for key in job_fields)
    sql += f""", ended AS (
    UPDATE jobs SET status = :j_status, finished_at = :j_finished_at, updated_at = now(),
        cost_usd = jobs.cost_usd + landed.cost_usd + (
            SELECT coalesce(sum(o.cost_usd), 0) FROM attempts o
            WHERE o.job_id = :job_id AND o.attempt_no <> :attempt_no){job_sets}
    FROM landed
    WHERE jobs.id = :job_id AND jobs.status NOT IN {rows.TERMINAL_SQL}
    RETURNING {rows.columns_of("jobs", _RESULT_COLUMNS)}
)
SELECT landed.*, ended.*, ended.id IS NOT NULL AS ended FROM landed LEFT JOIN ended ON true"""
    return rows.statement(sql, json)


def _job_column(key: str) -> Any:
    """The jobs column behind the ORM attribute ``key`` (``job_metadata`` is ``metadata``)."""
    return inspect(Job).attrs[key].columns[0]


def renew_leases(held: list[HeldLease], lease_s: float) -> set[HeldLease]:
    """Push the leases of ``held`` running attempts to ``lease_s`` from now (PostgreSQL's
    clock), each only while its ``worker`` still holds it; return the ones renewed (one
    statement for all of a process's calls in flight)."""
    if not held:
        return set()
    with session_scope() as session:
        renewed = session.execute(
            update(Attempt)
            .where(
                tuple_(Attempt.job_id, Attempt.attempt_no, Attempt.worker).in_(held),
                Attempt.status == AttemptStatus.RUNNING.value,
            )
            .values(lease_until=func.now() + timedelta(seconds=lease_s))
            .returning(Attempt.job_id, Attempt.attempt_no, Attempt.worker)
        ).all()
    return {(job_id, attempt_no, worker or "") for job_id, attempt_no, worker in renewed}


def renew_lease(job_id: str, attempt_no: int, worker: str, lease_s: float) -> bool:
    """Renew one lease (see :func:`renew_leases`); False when ``worker`` no longer holds it."""
    return bool(renew_leases([(job_id, attempt_no, worker)], lease_s))


def record_superseded_call(
    job_id: str,
    attempt_no: int,
    worker: str,
    *,
    status: str,
    tier: str | None = None,
    model: str | None = None,
    provider: str | None = None,
    input_tokens: int = 0,
    output_tokens: int = 0,
    cost_usd: float = 0.0,
) -> bool:
    """Record a call whose outcome was fenced out, once per delivery; False when recorded before.

    Its cost is added to ``jobs.cost_usd`` in the same transaction (an atomic increment, so it
    is counted whether the job is still running, when :func:`~tierflow.store.jobs.finalize_job`
    adds the attempts' costs to it, or already finished).
    """
    stmt = (
        insert(SupersededCall)
        .values(
            job_id=job_id,
            attempt_no=attempt_no,
            worker=worker,
            tier=tier,
            model=model,
            provider=provider,
            status=status,
            input_tokens=input_tokens or 0,
            output_tokens=output_tokens or 0,
            cost_usd=cost_usd or 0,
        )
        .on_conflict_do_nothing(constraint="uq_superseded_calls_delivery")
        .returning(SupersededCall.id)
    )
    with session_scope() as session:
        if session.execute(stmt).scalar_one_or_none() is None:
            return False
        if cost_usd:
            session.execute(
                update(Job).where(Job.id == job_id).values(cost_usd=Job.cost_usd + cost_usd)
            )
        return True


def load_attempt(job_id: str, attempt_no: int) -> Attempt | None:
    with session_scope() as session:
        return session.execute(
            select(Attempt).where(Attempt.job_id == job_id, Attempt.attempt_no == attempt_no)
        ).scalar_one_or_none()


def superseded_calls_of(job_id: str) -> list[SupersededCall]:
    with session_scope() as session:
        return list(
            session.execute(
                select(SupersededCall)
                .where(SupersededCall.job_id == job_id)
                .order_by(SupersededCall.id)
            ).scalars()
        )


def attempts_of(job_id: str) -> list[Attempt]:
    with session_scope() as session:
        return list(
            session.execute(
                select(Attempt).where(Attempt.job_id == job_id).order_by(Attempt.attempt_no)
            ).scalars()
        )
