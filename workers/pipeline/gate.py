"""The quality gate on a fresh answer (see :mod:`router.quality`), with its optional critic."""

from __future__ import annotations

from router.quality import Critic, check_quality
from tierflow.core import errors
from tierflow.core.config import ActionRule, LLMConfig
from tierflow.core.constants import Mode, Tier
from tierflow.core.tokens import estimate_tokens
from workers.backends.base import CompletionRequest
from workers.limits import FleetLimits
from workers.pipeline.context import AttemptContext, Step
from workers.selection import NoPick, pick_model


def local_critic(config: LLMConfig, limits: FleetLimits) -> Critic:
    """Self-critique by the fastest local model (cost 0), under the same limits as any call."""

    def critic(question: str, answer: str) -> str:
        picked = pick_model(config, Tier.LOCAL_FAST, limits, estimate_tokens(answer) + 16)
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
            limits.release_probe(picked.model)
            limits.release_slot(picked.model, picked.slot)

    return critic


class Gate(Step):
    """Score the answer; the verdict, its components and issues go on the context."""

    def applies(self, ctx: AttemptContext) -> bool:
        return ctx.making and ctx.completion is not None

    def run(self, ctx: AttemptContext) -> None:
        assert ctx.job is not None and ctx.completion is not None and ctx.limits is not None
        routing = ctx.config.routing
        critic = None
        # In cloud mode no local model may be called, not even as the critic.
        if routing.self_critique and ctx.mode is not Mode.CLOUD:
            critic = local_critic(ctx.config, ctx.limits)
        ctx.report = check_quality(
            ctx.completion.text,
            routing.actions.get(ctx.job.action_type, ActionRule()),
            routing.quality_threshold,
            finish_reason=ctx.completion.finish_reason,
            critic=critic,
        )
