"""End the job when the move says so: its result (or every attempt's story) and the wake-up."""

from __future__ import annotations

from workers.outcome import announce, finish_failure, finish_success
from workers.pipeline.context import AttemptContext, Step


class Finish(Step):
    """The job's end: written here, or already in :class:`~workers.pipeline.persist.Persist`'s
    transaction (then only its waiters are woken, with the result that transaction returned)."""

    def applies(self, ctx: AttemptContext) -> bool:
        return ctx.move is not None and ctx.move.kind in ("succeed", "fail")

    def run(self, ctx: AttemptContext) -> None:
        assert ctx.job is not None and ctx.move is not None
        if ctx.ended:
            announce(ctx.final)
        elif ctx.move.kind == "succeed":
            assert ctx.attempt is not None
            finish_success(ctx.job, ctx.attempt, ctx.config)
        else:
            finish_failure(ctx.job, ctx.config)
