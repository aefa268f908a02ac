"""The quality gate on a fresh answer (see :mod:`router.gate`): the action's verifiers, with the
calls some of them make (self-critique, consistency samples, a judge) placed under the same
fleet-wide limits as any call and priced onto the attempt."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from router.gate import Answer, judge_answer
from router.gate.calibration import calibration_for
from router.gate.verifiers import JUDGE_QUESTION
from tierflow.core import errors
from tierflow.core.config import ActionRule, LLMConfig, ModelConfig
from tierflow.core.constants import Mode, Tier
from tierflow.core.tokens import estimate_tokens
from workers.backends.base import Backend, CompletionRequest
from workers.limits import FleetLimits
from workers.pipeline.context import AttemptContext, Step
from workers.selection import NoPick, Pick, pick_model

CONSISTENCY_TEMPERATURE = 0.7  # samples must be able to disagree


def _priced_call(
    ctx: AttemptContext, backend: Backend, model: ModelConfig, request: CompletionRequest, why: str
) -> str:
    """One verification call; its usage and cost are added to the attempt's extra calls."""
    completion = backend.complete(request)
    cost = model.price(completion.input_tokens, completion.output_tokens)
    ctx.extra_calls.append(
        {
            "purpose": why,
            "model": model.name,
            "input_tokens": completion.input_tokens,
            "output_tokens": completion.output_tokens,
            "cost_usd": cost,
        }
    )
    return completion.text


def _with_pick(
    config: LLMConfig, tier: Tier, limits: FleetLimits, tokens: int, call: Callable[[Pick], str]
) -> str:
    picked = pick_model(config, tier, limits, tokens)
    if isinstance(picked, NoPick):
        raise errors.NoModelAvailable(tier, picked.reasons)
    try:
        return call(picked)
    finally:
        limits.release_probe(picked.model)
        limits.release_slot(picked.model, picked.slot)


def local_critic(ctx: AttemptContext) -> Callable[[str, str], str]:
    """Self-critique by the fastest local model, under the same limits as any call."""
    assert ctx.limits is not None
    limits, config = ctx.limits, ctx.config

    def critic(question: str, answer: str) -> str:
        def ask(picked: Pick) -> str:
            request = CompletionRequest(
                prompt=f"Answer:\n{answer[:4000]}\n\n{question}\nVerdict:",
                max_tokens=4,
                temperature=0.0,
                timeout_s=min(picked.model.timeout_s, 20.0),
            )
            return _priced_call(ctx, picked.backend, picked.model, request, "self-critique")

        return _with_pick(config, Tier.LOCAL_FAST, limits, estimate_tokens(answer) + 16, ask)

    return critic


def sampler(ctx: AttemptContext) -> Callable[[int], list[str]]:
    """``k`` more answers of the picked model to the same request, each within the limits.

    Samples are synchronous calls, priced at the model's own price even when the answer they
    check came from a provider batch (whose pick carries the batch price)."""
    assert ctx.pick is not None and ctx.request is not None and ctx.limits is not None
    pick, limits = ctx.pick, ctx.limits
    priced = ctx.config.model(pick.model.name)
    request = replace(
        ctx.request, temperature=max(ctx.request.temperature, CONSISTENCY_TEMPERATURE)
    )

    def draw(k: int) -> list[str]:
        texts = []
        for _ in range(k):
            reservation = limits.reserve(pick.model, estimate_tokens(request.prompt), 0)
            if not reservation.granted:
                break  # the rate limit has no room: judge on the samples drawn so far
            texts.append(_priced_call(ctx, pick.backend, priced, request, "consistency"))
            last = ctx.extra_calls[-1]
            limits.settle(pick.model, reservation, last["input_tokens"], last["output_tokens"])
        return texts

    return draw


def judge(ctx: AttemptContext, tier: Tier) -> Callable[[str, str], str]:
    """A model of ``tier`` asked whether the answer is correct."""
    assert ctx.limits is not None
    limits, config = ctx.limits, ctx.config

    def ask_judge(prompt: str, answer: str) -> str:
        text = f"Question:\n{prompt[:8000]}\n\nAnswer:\n{answer[:8000]}\n\n{JUDGE_QUESTION}"

        def ask(picked: Pick) -> str:
            request = CompletionRequest(
                prompt=text, max_tokens=8, temperature=0.0, timeout_s=picked.model.timeout_s
            )
            return _priced_call(ctx, picked.backend, picked.model, request, "judge")

        return _with_pick(config, tier, limits, estimate_tokens(text), ask)

    return ask_judge


class Gate(Step):
    """Judge the answer; the report (verdicts, evidence, features) goes on the context."""

    def applies(self, ctx: AttemptContext) -> bool:
        return ctx.making and ctx.completion is not None

    def run(self, ctx: AttemptContext) -> None:
        assert ctx.job is not None and ctx.completion is not None and ctx.request is not None
        routing = ctx.config.routing
        rule = routing.actions.get(ctx.job.action_type, ActionRule())
        calibration = calibration_for(ctx.job.action_type, rule, routing.quality_threshold)
        # In cloud mode no local model may be called, not even as the critic.
        local_ok = ctx.mode is not Mode.CLOUD
        answer = Answer(
            prompt=ctx.request.prompt,
            text=ctx.completion.text,
            rule=rule,
            finish_reason=ctx.completion.finish_reason,
            threshold=routing.quality_threshold,
            sampler=sampler(ctx) if "consistency" in rule.verifiers else None,
            judge=judge(ctx, rule.judge_tier) if rule.judge_tier is not None else None,
            critic=local_critic(ctx) if routing.self_critique and local_ok else None,
            learned=calibration.scorer,
        )
        ctx.report = judge_answer(answer, calibration.threshold, calibration.notes)
