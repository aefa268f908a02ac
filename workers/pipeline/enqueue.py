"""Send the job's next attempt: a retry, a fallback, or this attempt again after a wait."""

from __future__ import annotations

from router.dispatch import enqueue_attempt
from workers.pipeline.context import AttemptContext, Step


class Enqueue(Step):
    def applies(self, ctx: AttemptContext) -> bool:
        return ctx.move is not None and ctx.move.kind in ("retry", "fallback", "wait")

    def run(self, ctx: AttemptContext) -> None:
        assert ctx.move is not None and ctx.plan is not None and ctx.job is not None
        move = ctx.move
        enqueue_attempt(
            ctx.job_id,
            ctx.plan.chain[move.step],
            move.step,
            move.attempt_no,
            move.retries_in_step,
            countdown=move.countdown,
            priority=ctx.job.priority,
            action=ctx.job.action_type,
        )
