"""The resume message: one attempt whose provider batch result is stored, sent to its tier's
queue (ids and counters only)."""

from __future__ import annotations

from router.dispatch import describe
from tierflow.core.celery_app import app
from tierflow.core.constants import TASK_RESUME_ATTEMPT, Tier, tier_queue


def enqueue_resume(job_id: str, attempt_no: int, tier: str, priority: int = 5) -> None:
    """Send the resume of ``(job_id, attempt_no)`` to ``tier``'s queue."""
    label = describe(job_id, Tier(tier))
    app.send_task(
        TASK_RESUME_ATTEMPT,
        args=[job_id, attempt_no],
        queue=tier_queue(tier),
        priority=9 - priority,
        shadow=f"resume_attempt {label}",
        argsrepr=f"{label} attempt={attempt_no}",
    )
