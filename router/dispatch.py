"""Sending a job's next step to the broker, by task name: the one place that knows the messages.

Messages carry ids and counters only (the job lives in PostgreSQL). Priorities are tierflow's
0-9 with 9 the most urgent, sent as Redis' 0-9 with 0 the most urgent.
"""

from __future__ import annotations

from tierflow.core.celery_app import app
from tierflow.core.constants import (
    ROUTER_QUEUE,
    TASK_AUDIT,
    TASK_ROUTE_JOB,
    TASK_RUN_ATTEMPT,
    Tier,
    tier_queue,
)


def enqueue_route(job_id: str, priority: int = 5) -> None:
    """Send a stored job to the routing task."""
    app.send_task(TASK_ROUTE_JOB, args=[job_id], queue=ROUTER_QUEUE, priority=9 - priority)


def enqueue_attempt(
    job_id: str,
    tier: Tier,
    step: int,
    attempt_no: int,
    retries_in_step: int = 0,
    countdown: float = 0.0,
    priority: int = 5,
    waits: int = 0,
) -> None:
    """Send one attempt of a job to its tier's queue, after ``countdown`` seconds.

    ``waits`` (how often this attempt already waited for capacity) is sent as a fifth argument
    only when it is not 0, so a worker that predates it still reads every first try.
    """
    args: list[str | int] = [job_id, step, attempt_no, retries_in_step]
    if waits:
        args.append(waits)
    app.send_task(
        TASK_RUN_ATTEMPT,
        args=args,
        queue=tier_queue(tier),
        countdown=countdown or None,
        priority=9 - priority,
    )


def enqueue_audit(job_id: str, attempt_no: int, tier: Tier) -> None:
    """Send a passed answer to be re-run on ``tier`` (an audit), at the lowest priority."""
    app.send_task(TASK_AUDIT, args=[job_id, attempt_no], queue=tier_queue(tier), priority=9)
