"""Labels from daemons: how an answer turned out, stored for the gate to learn from.

A label says whether the job's answer was good, with the score and features the gate saw when
it judged that answer (kept on the attempt), so :mod:`router.gate.calibration` can refit.
"""

from __future__ import annotations

from tierflow import store
from tierflow.core.constants import AttemptStatus
from tierflow.core.errors import JobNotFound, JobValidationError


def record_feedback(job_id: str, good: bool, note: str | None = None) -> int:
    """Store a daemon's verdict on a finished job's answer; returns the label's id.

    Raises :class:`JobNotFound` for an unknown job and :class:`JobValidationError` for a job
    with no answer to judge (still running, or failed without one).
    """
    if not isinstance(good, bool):
        raise JobValidationError(f"correct: must be a boolean, got {type(good).__name__}")
    job = store.load_job(job_id)
    if job is None:
        raise JobNotFound(job_id)
    answered = [
        a
        for a in store.attempts_of(job_id)
        if a.model == job.model and a.text is not None and a.text == job.text
    ]
    if job.text is None or not answered:
        raise JobValidationError(f"job {job_id} has no answer to give feedback on")
    attempt = answered[-1]
    evidence = attempt.quality_components or {}
    return store.record_label(
        job_id,
        job.action_type,
        source="feedback",
        good=good,
        gate_passed=attempt.status == AttemptStatus.PASSED.value,
        score=attempt.quality_score,
        features=dict(evidence.get("features") or {}),
        note=(note or None) and note[:2000],
    )
