"""The move after the stored attempt, derived from the row alone (so a replay decides alike)."""

from __future__ import annotations

import hashlib

from workers.leases import max_countdown
from workers.outcome import Move, decide
from workers.pipeline.context import AttemptContext, Step


class Decide(Step):
    """Succeed, retry in the tier, fall back to the next tier, or fail (see
    :func:`workers.outcome.decide`); a retry that waits for a cooldown is spread over half of it
    again, so the jobs waiting for one cooldown do not all hit the model the instant it ends."""

    def applies(self, ctx: AttemptContext) -> bool:
        return ctx.attempt is not None and ctx.move is None

    def run(self, ctx: AttemptContext) -> None:
        assert ctx.attempt is not None and ctx.plan is not None
        attempt = ctx.attempt
        move = decide(ctx.plan, ctx.step, attempt, ctx.retries_in_step, ctx.config)
        if move.kind == "retry" and attempt.error_kind == "cooling":
            wait = attempt.retry_after_s or 1.0
            digest = hashlib.sha256(f"{ctx.job_id}:{attempt.attempt_no}".encode()).digest()
            spread = digest[0] / 255  # the same job and attempt always get the same countdown
            countdown = min(wait * (1 + 0.5 * spread), max_countdown())
            move = Move("retry", move.step, move.attempt_no, move.retries_in_step, countdown)
        ctx.move = move
