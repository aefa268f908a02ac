"""Store the attempt's outcome once (the first outcome of an attempt wins)."""

from __future__ import annotations

from tierflow import store
from workers.pipeline.context import AttemptContext, Step


class Persist(Step):
    """Write the outcome onto the claimed attempt row; the stored row is what follows it."""

    def applies(self, ctx: AttemptContext) -> bool:
        return ctx.outcome is not None and ctx.attempt is None

    def run(self, ctx: AttemptContext) -> None:
        assert ctx.outcome is not None
        ctx.attempt = store.finish_attempt(ctx.job_id, ctx.attempt_no, **ctx.outcome)
