"""Store the attempt's outcome once, fenced by the claim (the first outcome of an attempt wins,
and only the delivery that holds the attempt may write it)."""

from __future__ import annotations

from typing import Any

from schemas.tables import Attempt
from tierflow import store
from tierflow.core.constants import JobStatus
from tierflow.store.attempts import Ending
from workers.outcome import decide, success_fields
from workers.pipeline.context import AttemptContext, Step


class Persist(Step):
    """Write the outcome onto the claimed attempt row; the stored row is what follows it.

    When the write is fenced out (this delivery stalled past its lease and another took the
    attempt over), the call it made is recorded as superseded, with its cost, and the row the
    new holder owns is read back but left alone; the pipeline stops with no move. The new holder
    decides, enqueues and finishes for the job: deciding here as well would send its next
    attempt twice, or end the job from a row another delivery is still writing.
    """

    def applies(self, ctx: AttemptContext) -> bool:
        return ctx.outcome is not None and ctx.attempt is None

    def run(self, ctx: AttemptContext) -> None:
        assert ctx.outcome is not None and ctx.tier is not None
        finished = store.finish_attempt(
            ctx.job_id,
            ctx.attempt_no,
            worker=ctx.worker,
            ending=self._ending(ctx),
            tier=ctx.tier.value,
            **ctx.outcome,
        )
        if finished.landed:
            ctx.attempt = finished.attempt
            if finished.ended:
                ctx.ended, ctx.final = True, finished.result
            return
        outcome = ctx.outcome
        if ctx.pick is not None:  # a model was called (and maybe paid): its cost is kept
            store.record_superseded_call(
                ctx.job_id,
                ctx.attempt_no,
                ctx.worker,
                status=outcome["status"],
                tier=ctx.tier.value,
                model=outcome.get("model"),
                provider=outcome.get("provider"),
                input_tokens=outcome.get("input_tokens", 0),
                output_tokens=outcome.get("output_tokens", 0),
                cost_usd=outcome.get("cost_usd", 0.0),
            )
        ctx.superseded = True
        ctx.holder_attempt = store.load_attempt(ctx.job_id, ctx.attempt_no)
        ctx.stop()

    @staticmethod
    def _ending(ctx: AttemptContext) -> Ending:
        """The job ends with the attempt when the decision on its stored row (pure: the one
        :class:`~workers.pipeline.decide.Decide` takes next) is to succeed: then the answer and
        the job's end are one commit."""

        def ending(row: Attempt) -> tuple[JobStatus, dict[str, Any]] | None:
            assert ctx.plan is not None
            if decide(ctx.plan, ctx.step, row, ctx.retries_in_step, ctx.config).kind != "succeed":
                return None
            return JobStatus.SUCCEEDED, success_fields(row, ctx.config)

        return ending
