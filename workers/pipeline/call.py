"""Call the picked model: the request, the call (streamed to the waiter when asked), and what an
error means for the fleet's view of the model (cooldowns, the circuit)."""

from __future__ import annotations

import json
import time

from router.gate import kind_of
from schemas.jobs import ROUTING_FLAGS
from schemas.tables import Job
from tierflow.core import errors
from tierflow.core.config import ActionRule, ModelConfig
from tierflow.core.constants import AttemptStatus
from tierflow.core.settings import get_settings
from workers import notify
from workers.backends.base import Completion, CompletionRequest
from workers.leases import LEASES, attempt_deadline, call_timeout, lease_seconds
from workers.limits import FleetLimits
from workers.pipeline.context import AttemptContext, Step
from workers.selection import Pick

# A label is one line. Local servers (Ollama, vLLM, the embedded engine) run small or base models
# that go on past it, writing new questions and answers until max_tokens (measured on Gemma 3
# 270M: every label answer ran to its limit and named several labels); a stop at the first
# newline ends the answer there. The API providers' chat models stop by themselves.
LABEL_STOP = ("\n",)
LINE_PROVIDERS = frozenset({"openai_compatible", "vllm", "ollama"})
# A 429/529 without retry-after keeps the whole fleet off the model for this long. A 5xx,
# timeout or refused connection cools nothing fleet-wide (one failure in a busy fleet would
# otherwise push every job off a model that answers most calls): the job retries, and the
# circuit breaker takes the model out after consecutive failures.
ERROR_COOLDOWN_S = 2.0
# A rejected key fails every job on that model: keep the fleet off it and let the tier's other
# models (another provider, another key) take the work.
AUTH_COOLDOWN_S = 300.0


def instructions(rule: ActionRule) -> str | None:
    """The system text that tells a model what kind of answer the gate expects."""
    kind = kind_of(rule)
    if kind == "json":
        fields = ", ".join(rule.required_fields) or "the answer"
        text = f"Reply with only a JSON object with the fields: {fields}."
        if rule.json_schema is not None:
            text += f" It must match this JSON schema: {json.dumps(rule.json_schema)}"
        return text
    if kind == "label":
        return f"Reply with exactly one of: {', '.join(rule.labels)}."
    if kind == "number":
        return "Show the working, then end with: The answer is <number>."
    if kind == "code":
        return "Reply with the code in one fenced code block."
    return None


def build_request(
    job: Job, rule: ActionRule, model: ModelConfig, deadline: float | None = None
) -> CompletionRequest:
    """The model call for a job: the prompt, its context, and the answer format the gate
    expects; its timeout is :func:`~workers.leases.call_timeout` (never past ``deadline``, a
    ``time.monotonic()``)."""
    context = {k: v for k, v in (job.context or {}).items() if k not in ROUTING_FLAGS}
    prompt = job.prompt
    if context:
        prompt = f"{prompt}\n\nContext:\n{json.dumps(context, default=str)[:20000]}"
    return CompletionRequest(
        prompt=prompt,
        system=instructions(rule),
        max_tokens=model.max_tokens,
        temperature=model.temperature,
        json_output=kind_of(rule) == "json" and model.supports_json,
        stop=LABEL_STOP if kind_of(rule) == "label" and model.provider in LINE_PROVIDERS else (),
        # the thread pools the fleet runs do not enforce Celery's time limits: this does
        timeout_s=call_timeout(model.timeout_s, deadline),
    )


def call_backend(
    job: Job, pick: Pick, request: CompletionRequest, deadline: float | None = None
) -> Completion:
    """One call; a streaming job's chunks are published to its waiter as they come. A stream
    still running at ``deadline`` (a ``time.monotonic()``: the attempt's hard time limit) is
    cut at its next chunk and raises :class:`~tierflow.core.errors.BackendTimeout`; a silent
    one ends by the request's own timeout, which never reaches past the deadline."""
    if not job.stream:
        return pick.backend.complete(request)
    completion: Completion | None = None
    chunks = pick.backend.stream(request)
    try:
        for chunk in chunks:
            if deadline is not None and time.monotonic() >= deadline and not chunk.done:
                limit = get_settings().task_time_limit
                raise errors.BackendTimeout(
                    f"{pick.model.name}: stream cut at the attempt's hard time limit ({limit} s)"
                )
            notify.publish_job_event(job.id, {"type": "chunk", **chunk.as_event()})
            if chunk.done:
                completion = chunk.completion
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()  # a cut stream's connection goes back now, not when it is collected
    if completion is None:
        raise errors.MalformedResponse(f"{pick.model.name}: stream ended without a final chunk")
    return completion


def account_failure(limits: FleetLimits, model: ModelConfig, exc: errors.BackendError) -> None:
    """What a failed call tells the fleet: cooldowns for rate limits and bad keys, a failure
    for the circuit when the provider may be unhealthy; a permanent error says nothing of it."""
    if isinstance(exc, errors.AuthError):
        limits.cool_down(model, AUTH_COOLDOWN_S)
    if not exc.retryable:
        limits.release_probe(model)
        return
    retry_after = getattr(exc, "retry_after", None)
    if retry_after:
        limits.cool_down(model, retry_after)
    elif isinstance(exc, errors.RateLimited | errors.Overloaded):
        limits.cool_down(model, ERROR_COOLDOWN_S)
    limits.record_failure(model)


class CallModel(Step):
    """Call the picked model once, within the attempt's hard time limit, keeping the attempt's
    lease alive from the call until :class:`DropLease` (see
    :class:`workers.leases.LeaseKeeper`). Its slot is given back and its token reservation
    settled to the real usage, whatever happens; an error becomes the attempt's outcome."""

    def applies(self, ctx: AttemptContext) -> bool:
        return ctx.making and ctx.pick is not None

    def run(self, ctx: AttemptContext) -> None:
        assert ctx.job is not None and ctx.pick is not None and ctx.limits is not None
        pick, limits = ctx.pick, ctx.limits
        rule = ctx.config.routing.actions.get(ctx.job.action_type, ActionRule())
        deadline = attempt_deadline(ctx.started_at)
        ctx.request = build_request(ctx.job, rule, pick.model, deadline)
        started = time.perf_counter()
        # The lease is renewed from here until the outcome is stored (DropLease, or the end of
        # the delivery), the gate's own calls included, and never past the hard time limit.
        LEASES.keep(ctx.job_id, ctx.attempt_no, ctx.worker, lease_seconds(), deadline)
        try:
            ctx.completion = call_backend(ctx.job, pick, ctx.request, deadline)
        except errors.BackendError as exc:
            limits.settle(pick.model, pick.reservation, pick.reservation.input_tokens, 0)
            account_failure(limits, pick.model, exc)
            ctx.error = exc
        finally:
            limits.release_slot(pick.model, pick.slot)
            ctx.latency_ms = (time.perf_counter() - started) * 1000
        if ctx.error is not None:
            ctx.outcome = self._error_fields(ctx)
            return
        assert ctx.completion is not None
        usage = ctx.completion.input_tokens, ctx.completion.output_tokens
        limits.settle(pick.model, pick.reservation, *usage)
        limits.record_success(pick.model)

    @staticmethod
    def _error_fields(ctx: AttemptContext) -> dict:
        assert ctx.error is not None and ctx.pick is not None
        return {
            "model": ctx.pick.model.name,
            "provider": ctx.pick.model.provider,
            "status": AttemptStatus.ERROR.value,
            "error_kind": ctx.error.kind,
            "error": str(ctx.error)[:2000],
            "retry_after_s": getattr(ctx.error, "retry_after", None),
            "latency_ms": ctx.latency_ms,
        }


class DropLease(Step):
    """Stop renewing the attempt's lease once its outcome is stored (placed after Persist; a
    delivery that ends before it drops it in :func:`workers.pipeline.run_attempt_steps`)."""

    def applies(self, ctx: AttemptContext) -> bool:
        return True

    def run(self, ctx: AttemptContext) -> None:
        LEASES.drop((ctx.job_id, ctx.attempt_no, ctx.worker))
