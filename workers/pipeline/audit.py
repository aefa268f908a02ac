"""Send a share of passed answers to the next tier for an audit (see :mod:`workers.audit`)."""

from __future__ import annotations

import hashlib

from router.dispatch import enqueue_audit
from tierflow.core.config import ActionRule
from workers.pipeline.context import AttemptContext, Step


def chosen_for_audit(job_id: str, share: float) -> bool:
    """Whether this job is in the audited share (deterministic per job)."""
    if share <= 0:
        return False
    return hashlib.sha256(f"audit|{job_id}".encode()).digest()[0] / 256 < share


class Audit(Step):
    """After a fresh success on a tier that has a next one in the job's chain, the action's
    ``audit_share`` of jobs is audited there. Never on a replay (one audit per answer)."""

    def applies(self, ctx: AttemptContext) -> bool:
        return (
            ctx.move is not None
            and ctx.move.kind == "succeed"
            and not ctx.replayed
            and ctx.attempt is not None
            and ctx.attempt.cached is None  # a cache hit: nothing new to judge
            and ctx.plan is not None
            and ctx.step + 1 < len(ctx.plan.chain)
        )

    def run(self, ctx: AttemptContext) -> None:
        assert ctx.job is not None and ctx.plan is not None
        rule = ctx.config.routing.actions.get(ctx.job.action_type, ActionRule())
        if chosen_for_audit(ctx.job_id, rule.audit_share):
            enqueue_audit(ctx.job_id, ctx.attempt_no, ctx.plan.chain[ctx.step + 1])
