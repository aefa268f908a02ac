"""Sending a job's next step to the broker, by task name: the one place that knows the messages.

Messages carry ids and counters only (the job lives in PostgreSQL). Priorities are tierflow's
0-9 with 9 the most urgent, sent as Redis' 0-9 with 0 the most urgent.

Every send passes ``declare=[]``: a tier queue is a Redis list (one per priority step) that
needs no declaring, and Celery sends to it by name through the anonymous exchange, so the
declaration Celery would otherwise repeat at every send (``maybe_declare``: a copy of the
queue entity and a lookup in the connection's cache, about 50 µs) does nothing.

Each message is labelled for people, at no cost (no read; the caller passes the job's action
when it has it): Celery's ``shadow`` name, which the worker's log and Flower show as the task's
name (``run_attempt job=<id> tier=local_fast action=classify_memory``), and an ``argsrepr``, which
Flower shows as its arguments (``job=<id> tier=local_fast action=classify_memory step=0
attempt=0 retries=0``). The arguments are what Flower always shows: it takes a task's name from
whichever of the sender's ``task-sent`` event (the real task name) and the worker's
``task-received`` event (the shadow) it merges last, so the name can read
``tierflow.run_attempt``. The task run, and its real arguments, are unchanged.
"""

from __future__ import annotations

from tierflow.core.celery_app import app
from tierflow.core.constants import (
    ROUTER_QUEUE,
    TASK_AUDIT,
    TASK_ROUTE_JOB,
    TASK_RUN_ATTEMPT,
    TASK_RUN_PACK,
    Tier,
    tier_queue,
)


def describe(job_id: str, tier: Tier | None = None, action: str | None = None) -> str:
    """``job=<id> tier=<tier> action=<action>`` (the parts that are known)."""
    parts = [f"job={job_id}"]
    if tier is not None:
        parts.append(f"tier={Tier(tier).value}")
    if action:
        parts.append(f"action={action}")
    return " ".join(parts)


def enqueue_route(job_id: str, priority: int = 5, action: str | None = None) -> None:
    """Send a stored job to the routing task; ``action`` (the job's) only labels the message."""
    label = describe(job_id, action=action)
    app.send_task(
        TASK_ROUTE_JOB,
        declare=[],
        args=[job_id],
        queue=ROUTER_QUEUE,
        priority=9 - priority,
        shadow=f"route_job {label}",
        argsrepr=label,
    )


def enqueue_attempt(
    job_id: str,
    tier: Tier,
    step: int,
    attempt_no: int,
    retries_in_step: int = 0,
    countdown: float = 0.0,
    priority: int = 5,
    waits: int = 0,
    action: str | None = None,
) -> None:
    """Send one attempt of a job to its tier's queue, after ``countdown`` seconds; ``action``
    (the job's, when the caller has it) only labels the message.

    ``waits`` (how often this attempt already waited for capacity) is sent as a fifth argument
    only when it is not 0, so a worker that predates it still reads every first try.
    """
    label = describe(job_id, tier, action)
    args: list[str | int] = [job_id, step, attempt_no, retries_in_step]
    if waits:
        args.append(waits)
    app.send_task(
        TASK_RUN_ATTEMPT,
        declare=[],
        args=args,
        queue=tier_queue(tier),
        countdown=countdown or None,
        priority=9 - priority,
        shadow=f"run_attempt {label}",
        argsrepr=f"{label} step={step} attempt={attempt_no} retries={retries_in_step}",
    )


def enqueue_audit(job_id: str, attempt_no: int, tier: Tier) -> None:
    """Send a passed answer to be re-run on ``tier`` (an audit), at the lowest priority."""
    label = describe(job_id, tier)
    app.send_task(
        TASK_AUDIT,
        declare=[],
        args=[job_id, attempt_no],
        queue=tier_queue(tier),
        priority=9,
        shadow=f"audit_answer {label}",
        argsrepr=f"{label} attempt={attempt_no}",
    )


def enqueue_pack(
    job_ids: list[str],
    tier: Tier,
    priority: int = 5,
    countdown: float = 0.0,
    waits: int = 0,
    action: str | None = None,
) -> None:
    """Send the first attempts of ``job_ids`` (routed, small, one ``label`` action) as one pack
    to ``tier``'s queue, after ``countdown`` seconds (see :mod:`workers.packs`). ``waits`` (how
    often the pack already waited for capacity) is sent only when it is not 0; ``action`` only
    labels the message."""
    label = f"pack={len(job_ids)} tier={Tier(tier).value}" + (f" action={action}" if action else "")
    args: list[list[str] | int] = [list(job_ids)]
    if waits:
        args.append(waits)
    app.send_task(
        TASK_RUN_PACK,
        declare=[],
        args=args,
        queue=tier_queue(tier),
        countdown=countdown or None,
        priority=9 - priority,
        shadow=f"run_pack {label}",
        argsrepr=f"{label} jobs={','.join(j[:8] for j in job_ids)}",
    )
