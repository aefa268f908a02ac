"""One attempt of one job on one tier: the body of the ``run_attempt`` task.

    claim (job, attempt_no) ─ done before? ─► replay the stored decision
      │ owned
    mode allows the tier? ── no ─► skipped attempt ─► next tier
    pick the first servable model ── none, waiting helps ─► release claim, re-enqueue later
      │                            └─ none ─► skipped attempt (reasons) ─► next tier
    call it (streaming chunks to the waiter if asked)
      │  └─ error ─► cooldown / circuit ─► retry or next tier
    quality gate ─► store the attempt with its cost ─► succeed, or re-enqueue to the next tier

Every decision after the call is derived from the stored attempt row alone, so a redelivered
message replays it without calling the model or charging again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass

from router.mode import get_mode
from router.plan import TierPlan
from router.quality import Critic, QualityReport, check_quality
from schemas.tables import Attempt, Job
from tierflow.core import errors
from tierflow.core.config import ActionRule, LLMConfig
from tierflow.core.constants import TASK_RUN_ATTEMPT, AttemptStatus, JobStatus, Mode, Tier
from tierflow.core.redis_client import get_keys, get_redis
from tierflow.core.settings import get_settings
from workers import notify, persistence
from workers.backends.base import Completion, CompletionRequest
from workers.limits import FleetLimits
from workers.outcome import Move, decide, finish_failure, finish_success
from workers.selection import NoPick, Pick, estimate_tokens, pick_model

log = logging.getLogger(__name__)

ROUTING_FLAGS = ("affects_system_state", "user_visible_output")
# A 429/529 without retry-after keeps the whole fleet off the model for this long. A 5xx,
# timeout or refused connection cools nothing fleet-wide (one failure in a busy fleet would
# otherwise push every job off a model that answers most calls): the job retries, and the
# circuit breaker takes the model out after consecutive failures.
ERROR_COOLDOWN_S = 2.0
# A rejected key fails every job on that model: keep the fleet off it and let the tier's other
# models (another provider, another key) take the work.
AUTH_COOLDOWN_S = 300.0
MAX_WAIT_COUNTDOWN_S = 60.0


def max_countdown() -> float:
    """The longest a re-enqueued attempt may wait: a minute, and always well under the broker's
    visibility timeout (Redis would hand a message held that long to a second worker)."""
    return min(MAX_WAIT_COUNTDOWN_S, get_settings().visibility_timeout / 2)


def lease_seconds() -> float:
    """How long a claimed attempt stays ours: the hard time limit plus a margin, ending before
    the visibility timeout, so a redelivery after a worker died finds the lease already over."""
    settings = get_settings()
    margin = min(30.0, (settings.visibility_timeout - settings.task_time_limit) / 2)
    return settings.task_time_limit + margin


def limits() -> FleetLimits:
    return FleetLimits(get_redis(), get_keys(), slot_ttl_s=get_settings().task_time_limit + 60)


def build_request(job: Job, rule: ActionRule, pick: Pick) -> CompletionRequest:
    """The model call for a job: the prompt, its context, and the answer format the gate expects."""
    system = None
    if rule.expects_json:
        fields = ", ".join(rule.required_fields) or "the answer"
        system = f"Reply with only a JSON object with the fields: {fields}."
    elif rule.expects_code:
        system = "Reply with the code in one fenced code block."
    context = {k: v for k, v in (job.context or {}).items() if k not in ROUTING_FLAGS}
    prompt = job.prompt
    if context:
        prompt = f"{prompt}\n\nContext:\n{json.dumps(context, default=str)[:20000]}"
    model = pick.model
    return CompletionRequest(
        prompt=prompt,
        system=system,
        max_tokens=model.max_tokens,
        temperature=model.temperature,
        json_output=rule.expects_json and model.supports_json,
        # The call must end before the task's soft time limit: the thread pools the fleet
        # runs do not enforce Celery's time limits, and a call running past the visibility
        # timeout would see its message handed to a second worker.
        timeout_s=min(model.timeout_s, float(get_settings().task_soft_time_limit)),
    )


def mode_allows(mode: Mode, tier: Tier) -> bool:
    if mode is Mode.LOCAL:
        return tier is not Tier.API_FALLBACK
    if mode is Mode.CLOUD:
        return tier is Tier.API_FALLBACK
    return True


def _critic(config: LLMConfig, lim: FleetLimits) -> Critic | None:
    """Self-critique by the fastest local model (cost 0); None when none can serve now."""

    def critic(question: str, answer: str) -> str:
        picked = pick_model(config, Tier.LOCAL_FAST, lim, estimate_tokens(answer) + 16)
        if isinstance(picked, NoPick):
            raise errors.NoModelAvailable(Tier.LOCAL_FAST, picked.reasons)
        try:
            request = CompletionRequest(
                prompt=f"Answer:\n{answer[:4000]}\n\n{question}\nVerdict:",
                max_tokens=4,
                temperature=0.0,
                timeout_s=min(picked.model.timeout_s, 20.0),
            )
            return picked.backend.complete(request).text
        finally:
            lim.release_probe(picked.model)
            lim.release_slot(picked.model, picked.slot)

    return critic if config.routing.self_critique else None


def _call(job: Job, pick: Pick, request: CompletionRequest) -> Completion:
    if not job.stream:
        return pick.backend.complete(request)
    completion: Completion | None = None
    for chunk in pick.backend.stream(request):
        notify.publish_job_event(job.id, {"type": "chunk", **chunk.as_event()})
        if chunk.done:
            completion = chunk.completion
    if completion is None:
        raise errors.MalformedResponse(f"{pick.model.name}: stream ended without a final chunk")
    return completion


def run_model(
    job: Job, attempt_no: int, pick: Pick, config: LLMConfig, lim: FleetLimits
) -> Attempt:
    """Call the picked model, gate the answer, store the attempt; return the stored row."""
    rule = config.routing.actions.get(job.action_type, ActionRule())
    request = build_request(job, rule, pick)
    model = pick.model
    started = time.perf_counter()
    try:
        completion = _call(job, pick, request)
    except errors.BackendError as exc:
        latency = (time.perf_counter() - started) * 1000
        lim.settle(model, pick.reservation, pick.reservation.input_tokens, 0)
        if isinstance(exc, errors.AuthError):
            lim.cool_down(model, AUTH_COOLDOWN_S)
        if exc.retryable:
            retry_after = getattr(exc, "retry_after", None)
            if retry_after:
                lim.cool_down(model, retry_after)
            elif isinstance(exc, errors.RateLimited | errors.Overloaded):
                lim.cool_down(model, ERROR_COOLDOWN_S)
            lim.record_failure(model)
        else:  # a permanent error says nothing about the provider's health
            lim.release_probe(model)
        if job.stream:
            notify.publish_job_event(job.id, {"type": "reset", "reason": exc.kind})
        return persistence.finish_attempt(
            job.id,
            attempt_no,
            model=model.name,
            provider=model.provider,
            status=AttemptStatus.ERROR.value,
            error_kind=exc.kind,
            error=str(exc)[:2000],
            retry_after_s=getattr(exc, "retry_after", None),
            latency_ms=latency,
        )
    finally:
        lim.release_slot(model, pick.slot)
    latency = (time.perf_counter() - started) * 1000
    lim.settle(model, pick.reservation, completion.input_tokens, completion.output_tokens)
    lim.record_success(model)
    report: QualityReport = check_quality(
        completion.text,
        rule,
        config.routing.quality_threshold,
        finish_reason=completion.finish_reason,
        # In cloud mode no local model may be called, not even as the critic.
        critic=_critic(config, lim) if get_mode() is not Mode.CLOUD else None,
    )
    if job.stream and not report.passed:
        notify.publish_job_event(job.id, {"type": "reset", "reason": "quality gate"})
    return persistence.finish_attempt(
        job.id,
        attempt_no,
        model=model.name,
        provider=model.provider,
        status=(AttemptStatus.PASSED if report.passed else AttemptStatus.REJECTED).value,
        input_tokens=completion.input_tokens,
        output_tokens=completion.output_tokens,
        latency_ms=latency,
        cost_usd=model.price(completion.input_tokens, completion.output_tokens),
        text=completion.text,
        fake=completion.fake,
        quality_score=report.confidence,
        quality_components={**report.components, "critique": report.critique},
        quality_issues=report.issues,
        error=None if report.passed else "quality gate: " + "; ".join(report.issues),
        error_kind=None if report.passed else "quality",
    )


def skip_attempt(
    job_id: str,
    attempt_no: int,
    reason: str,
    kind: str = "skipped",
    retry_after: float | None = None,
) -> Attempt:
    return persistence.finish_attempt(
        job_id,
        attempt_no,
        status=AttemptStatus.SKIPPED.value,
        error=reason[:2000],
        error_kind=kind,
        retry_after_s=retry_after,
    )


@dataclass(frozen=True)
class NextAttempt:
    """The attempt to enqueue after this one: where, when, and at which priority."""

    move: Move
    tier: Tier
    priority: int


def execute(
    job_id: str, step: int, attempt_no: int, retries_in_step: int, worker: str
) -> NextAttempt | None:
    """Run or replay one attempt; return what to enqueue next (None when nothing is left).

    The job is read once here; the caller needs no second read to enqueue the next attempt.
    """
    settings = get_settings()
    config = settings.llm
    job = persistence.load_job(job_id)
    if job is None:
        persistence.record_dead_letter(
            f"run_attempt for unknown job {job_id}", task=TASK_RUN_ATTEMPT, job_id=None
        )
        return None
    if job.status in (JobStatus.SUCCEEDED, JobStatus.FAILED):
        return None
    if not job.plan:
        persistence.record_dead_letter(
            "run_attempt before the job was routed", task=TASK_RUN_ATTEMPT, job_id=job_id
        )
        return None
    plan = TierPlan.from_json(job.plan)
    if step >= len(plan.chain):
        finish_failure(job, config, f"step {step} is past the end of the chain")
        return None
    move = _run_step(job, plan, step, attempt_no, retries_in_step, worker, config)
    if move is None:
        return None
    return NextAttempt(move, plan.chain[move.step], job.priority)


def _run_step(
    job: Job,
    plan: TierPlan,
    step: int,
    attempt_no: int,
    retries_in_step: int,
    worker: str,
    config: LLMConfig,
) -> Move | None:
    tier = plan.chain[step]
    claim = persistence.claim_attempt(
        job.id, attempt_no, step, tier.value, worker, lease_s=lease_seconds()
    )
    if claim.claim is persistence.Claim.BUSY:
        return Move(
            "wait",
            step,
            attempt_no,
            retries_in_step,
            countdown=min(claim.lease_left_s + 1, max_countdown()),
        )
    if claim.claim is persistence.Claim.DONE:
        assert claim.attempt is not None
        attempt = claim.attempt
    else:
        outcome = _attempt(job, plan, step, attempt_no, tier, config, worker)
        if isinstance(outcome, float):  # waiting for room: the claim was released
            return Move("wait", step, attempt_no, retries_in_step, countdown=outcome)
        attempt = outcome
    return _follow(job, plan, step, attempt, retries_in_step, config)


def _attempt(
    job: Job,
    plan: TierPlan,
    step: int,
    attempt_no: int,
    tier: Tier,
    config: LLMConfig,
    worker: str,
) -> Attempt | float:
    """Run the attempt and return its stored row, or the seconds to wait before trying again."""
    mode = get_mode()
    if not mode_allows(mode, tier):
        return skip_attempt(
            job.id, attempt_no, f"mode {mode.value} does not allow tier {tier.value}", "mode"
        )
    lim = limits()
    rule_prompt = job.prompt + json.dumps(job.context or {})
    picked = pick_model(config, tier, lim, estimate_tokens(rule_prompt))
    if isinstance(picked, NoPick):
        reasons = "; ".join(f"{m}: {r}" for m, r in picked.reasons.items())
        if picked.wait_s is not None:
            persistence.release_attempt(job.id, attempt_no, worker)
            return min(max(picked.wait_s, 0.05), max_countdown())
        # On the last tier, models cooling down are worth waiting for (a bounded retry);
        # elsewhere the next tier takes the work meanwhile.
        last_tier = step + 1 >= len(plan.chain)
        cooling = picked.cooling_s is not None and last_tier and picked.cooling_s <= max_countdown()
        return skip_attempt(
            job.id,
            attempt_no,
            f"no model of {tier.value} can serve: {reasons}",
            "cooling" if cooling else "skipped",
            retry_after=picked.cooling_s if cooling else None,
        )
    return run_model(job, attempt_no, picked, config, lim)


def _follow(
    job: Job, plan: TierPlan, step: int, attempt: Attempt, retries_in_step: int, config: LLMConfig
) -> Move | None:
    move = decide(plan, step, attempt, retries_in_step, config)
    if move.kind == "succeed":
        finish_success(job, attempt, config)
        return None
    if move.kind == "fail":
        finish_failure(job, config)
        return None
    if move.kind == "fallback":
        notify.publish_fallback(
            job.id,
            attempt.tier,
            attempt.model,
            plan.chain[move.step].value,
            attempt.error or attempt.status,
        )
    if move.kind == "retry" and attempt.error_kind == "cooling":
        # Spread the jobs waiting for one cooldown over half of it again, so they do not all
        # hit the model in the same instant it ends (same job and attempt: same countdown).
        wait = attempt.retry_after_s or 1.0
        spread = hashlib.sha256(f"{job.id}:{attempt.attempt_no}".encode()).digest()[0] / 255
        move = Move(
            "retry",
            move.step,
            move.attempt_no,
            move.retries_in_step,
            countdown=min(wait * (1 + 0.5 * spread), max_countdown()),
        )
    return move
