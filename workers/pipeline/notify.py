"""Tell the watchers what this delivery did: a streaming waiter that its answer so far is void,
the fallback history that the job moved on. A replay announces nothing again."""

from __future__ import annotations

from tierflow.core.constants import AttemptStatus
from workers import notify
from workers.pipeline.context import AttemptContext, Step


class Notify(Step):
    def applies(self, ctx: AttemptContext) -> bool:
        return ctx.attempt is not None and not ctx.replayed and ctx.move is not None

    def run(self, ctx: AttemptContext) -> None:
        assert ctx.attempt is not None and ctx.move is not None and ctx.job is not None
        attempt = ctx.attempt
        called = attempt.status in (AttemptStatus.ERROR.value, AttemptStatus.REJECTED.value)
        if ctx.job.stream and called:
            reason = "quality gate" if attempt.error_kind == "quality" else attempt.error_kind
            notify.publish_job_event(ctx.job_id, {"type": "reset", "reason": reason})
        if ctx.move.kind == "fallback":
            assert ctx.plan is not None
            notify.publish_fallback(
                ctx.job_id,
                attempt.tier,
                attempt.model,
                ctx.plan.chain[ctx.move.step].value,
                attempt.error or attempt.status,
            )
