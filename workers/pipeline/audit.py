"""Send a share of passed answers to the next tier with a model for an audit (see
:mod:`workers.audit`)."""

from __future__ import annotations

import hashlib
import logging

from router.dispatch import enqueue_audit
from tierflow.core.config import ActionRule, LLMConfig
from tierflow.core.constants import Tier
from workers.pipeline.context import AttemptContext, Step, fresh_success

log = logging.getLogger(__name__)


def chosen_for_audit(job_id: str, share: float) -> bool:
    """Whether this job is in the audited share (deterministic per job)."""
    if share <= 0:
        return False
    return hashlib.sha256(f"audit|{job_id}".encode()).digest()[0] / 256 < share


def audit_tier(config: LLMConfig, later: list[Tier]) -> Tier | None:
    """The first of the chain's ``later`` tiers that has an enabled model (an audit sent to a
    tier with none would never run); None when none has."""
    return next((tier for tier in later if config.tier_models(tier)), None)


class Audit(Step):
    """After a fresh success on a tier that has a later one in the job's chain, the action's
    ``audit_share`` of jobs is audited on the first later tier with a model (none: logged, not
    sent). Never on a replay (one audit per answer)."""

    def applies(self, ctx: AttemptContext) -> bool:
        return fresh_success(ctx) and ctx.plan is not None and ctx.step + 1 < len(ctx.plan.chain)

    def run(self, ctx: AttemptContext) -> None:
        assert ctx.job is not None and ctx.plan is not None
        rule = ctx.config.routing.actions.get(ctx.job.action_type, ActionRule())
        if not chosen_for_audit(ctx.job_id, rule.audit_share):
            return
        tier = audit_tier(ctx.config, ctx.plan.chain[ctx.step + 1 :])
        if tier is None:
            log.warning(
                "audit of job %s not sent: no later tier of its chain %s has a model",
                ctx.job_id,
                [t.value for t in ctx.plan.chain],
            )
            return
        enqueue_audit(ctx.job_id, ctx.attempt_no, tier)
