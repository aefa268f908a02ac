"""What follows a stored attempt: succeed, retry in the tier, fall back, fail or expire the job.

:func:`decide` is pure (the same attempt row always gives the same move), so a redelivered
message replays the decision without calling a model again; the finishers only move a job
forward once (see :func:`workers.store.finalize_job`).
"""

from __future__ import annotations

from dataclasses import dataclass

from router.export import scrub
from router.plan import TierPlan
from schemas.jobs import JobResult
from schemas.tables import Attempt, Job
from tierflow import store
from tierflow.core import errors
from tierflow.core.config import LLMConfig
from tierflow.core.constants import AttemptStatus, JobStatus
from workers import notify
from workers.job_metrics import observe_job


@dataclass(frozen=True)
class Move:
    """What happens after an attempt: ``kind`` is succeed, retry, fallback, fail or wait.

    ``waits`` travels with a wait (how many this attempt has had, for the backoff); a retry or a
    fallback is a new attempt and starts again at 0.
    """

    kind: str
    step: int = 0
    attempt_no: int = 0
    retries_in_step: int = 0
    countdown: float = 0.0
    waits: int = 0


def decide(
    plan: TierPlan, step: int, attempt: Attempt, retries_in_step: int, config: LLMConfig
) -> Move:
    """The move after a stored attempt. Pure: the same row always gives the same move."""
    nxt = attempt.attempt_no + 1
    if attempt.status == AttemptStatus.PASSED.value:
        return Move("succeed")
    retryable = attempt.error_kind in _RETRYABLE_KINDS
    if retryable and retries_in_step < config.routing.max_retries_per_tier:
        return Move("retry", step, nxt, retries_in_step + 1)
    if step + 1 < len(plan.chain):
        return Move("fallback", step + 1, nxt, 0)
    return Move("fail")


_RETRYABLE_KINDS = frozenset(
    cls.kind
    for cls in (
        errors.RateLimited,
        errors.Overloaded,
        errors.ServerError,
        errors.BackendTimeout,
        errors.BackendUnavailable,
    )
) | {"cooling", errors.AuthError.kind}


def failure_summary(attempts: list[Attempt]) -> str:
    """Every attempt's reason, in order: the story of a failed job."""
    parts = [
        f"#{a.attempt_no} {a.tier}/{a.model or '-'}: {a.status}"
        + (f" ({a.error})" if a.error else "")
        for a in attempts
    ]
    return "; ".join(parts) or "no attempt was made"


def success_fields(attempt: Attempt, config: LLMConfig, *, degraded: bool = False) -> dict:
    """The job's fields when ``attempt`` ends it with its answer (for ``store.finalize_job``)."""
    model = config.baseline()
    baseline = model.price(attempt.input_tokens, attempt.output_tokens) if model else 0.0
    return {
        "text": attempt.text,
        "tier": attempt.tier,
        "model": attempt.model,
        "provider": attempt.provider,
        "quality": attempt.quality_score,
        "fake": attempt.fake,
        "degraded": degraded,
        "api_baseline_cost_usd": baseline,
        # A degraded answer says why it is one: the gate's reasons on the attempt returned.
        **({"error": (attempt.error or "degraded")[:8000]} if degraded else {}),
    }


def announce(result: JobResult | None) -> None:
    """Wake the job's waiters with its result (when this call ended the job: ``result`` is
    what :func:`store.finalize_job` returned), carried in the event so no waiter reads it back;
    the job's overhead and waits are counted here, once (:mod:`workers.job_metrics`)."""
    if result is not None:
        observe_job(result)
        notify.publish_done(result)


def finish_success(
    job: Job, attempt: Attempt, config: LLMConfig, *, degraded: bool = False
) -> None:
    fields = success_fields(attempt, config, degraded=degraded)
    announce(store.finalize_job(job.id, JobStatus.SUCCEEDED, **fields))


def finish_failure(job: Job, config: LLMConfig, reason: str | None = None) -> None:
    """End the job ``failed``; or with the last tier's answer the gate rejected only softly
    (:func:`final_tier_answer`), degraded; or, with ``allow_degraded``, with its best scored
    answer, degraded."""
    _finish_unsuccessful(job, config, JobStatus.FAILED, reason)


def finish_expired(job: Job, config: LLMConfig) -> None:
    """End a job whose deadline has passed ``expired``, calling no model.

    The error is ``deadline exceeded; <every attempt's reason>``. A job submitted with
    ``allow_degraded`` that already has a scored answer ends with that answer, degraded, as a
    failed one does: the answer was made before the deadline.
    """
    story = failure_summary(store.attempts_of(job.id))
    _finish_unsuccessful(job, config, JobStatus.EXPIRED, f"deadline exceeded; {story}")


def final_tier_answer(job: Job, attempts: list[Attempt], config: LLMConfig) -> Attempt | None:
    """The answer of the chain's last tier that the gate rejected only softly: returned, degraded,
    rather than failing the job (no tier is left to do better). Soft: nothing in
    ``routing.final_tier_hard_failures`` failed it (a score below the threshold never does)."""
    chain = (job.plan or {}).get("chain") or []
    if not chain:
        return None
    hard = set(config.routing.final_tier_hard_failures)
    for attempt in reversed(attempts):
        if attempt.tier != chain[-1] or attempt.status != AttemptStatus.REJECTED.value:
            continue
        vetoes = set((attempt.quality_components or {}).get("vetoes") or [])
        if attempt.text and not vetoes & hard:
            return attempt
    return None


def _finish_unsuccessful(
    job: Job, config: LLMConfig, status: JobStatus, reason: str | None
) -> None:
    attempts = store.attempts_of(job.id)
    final = final_tier_answer(job, attempts, config) if status is JobStatus.FAILED else None
    if final is not None:
        finish_success(job, final, config, degraded=True)
        return
    if job.allow_degraded:
        scored = [a for a in attempts if a.text and a.quality_score is not None]
        if scored:
            best = max(scored, key=lambda a: a.quality_score or 0.0)
            finish_success(job, best, config, degraded=True)
            return
    error = reason or failure_summary(attempts)
    announce(store.finalize_job(job.id, status, error=error[:8000]))


def internal_error_reason(exc: BaseException) -> str:
    """``internal error: <type>: <message>``, scrubbed of anything shaped like a key."""
    return (scrub(f"internal error: {type(exc).__name__}: {exc}") or "internal error")[:2000]


def fail_on_internal_error(job_id: str, reason: str) -> None:
    """Fail a job because the fleet's own code raised (``reason`` from
    :func:`internal_error_reason`), and wake its waiter.

    Written straight to the store (not through :func:`finish_failure`, which may be what
    raised).
    """
    announce(store.finalize_job(job_id, JobStatus.FAILED, error=reason))
