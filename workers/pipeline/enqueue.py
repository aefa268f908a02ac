"""Send the job's next attempt: a retry, a fallback, or this attempt again after a wait.

The job is touched first (its ``updated_at``, by PostgreSQL's clock): a job whose next attempt
was just sent is alive, and the sweeper leaves it alone while that message waits its turn.
"""

from __future__ import annotations

from router.dispatch import enqueue_attempt
from router.fairshare import job_daemon
from tierflow import store
from workers.pipeline.context import AttemptContext, Step


class Enqueue(Step):
    def applies(self, ctx: AttemptContext) -> bool:
        return ctx.move is not None and ctx.move.kind in ("retry", "fallback", "wait")

    def run(self, ctx: AttemptContext) -> None:
        assert ctx.move is not None and ctx.plan is not None and ctx.job is not None
        move = ctx.move
        store.touch_jobs([ctx.job_id])
        enqueue_attempt(
            ctx.job_id,
            ctx.plan.chain[move.step],
            move.step,
            move.attempt_no,
            move.retries_in_step,
            countdown=move.countdown,
            priority=ctx.job.priority,
            waits=move.waits,
            action=ctx.job.action_type,
            daemon=job_daemon(ctx.job.job_metadata),
        )
