"""Every escalation is a free label (:class:`LabelEscalation`): the next tier's answer was paid
for anyway, so it is compared with the cheap answer the gate rejected, through the action's
answer kind, and the agreement is stored as a label with the cheap answer's features (those the
gate saw), for the learned scorer and the threshold (:mod:`router.gate.calibration`)."""

from __future__ import annotations

from router.gate import extract
from schemas.tables import Attempt
from tierflow import store
from tierflow.core.config import ActionRule
from tierflow.core.constants import AttemptStatus
from workers.pipeline.context import AttemptContext, Step, fresh_success


def rejected_cheap_answer(attempts: list[Attempt], passed: Attempt) -> Attempt | None:
    """The first answer the gate rejected on a tier before ``passed``'s, with the features it
    was judged on; None when the job escalated for another reason (an error, a skip)."""
    for attempt in attempts:
        if attempt.attempt_no >= passed.attempt_no or attempt.tier == passed.tier:
            continue
        evidence = attempt.quality_components or {}
        if attempt.status == AttemptStatus.REJECTED.value and evidence.get("features"):
            return attempt
    return None


class LabelEscalation(Step):
    """After a fresh success on a later tier than the job's first answer, store whether the
    rejected cheap answer agreed with this one (``source: escalation``). Never on a replay."""

    def applies(self, ctx: AttemptContext) -> bool:
        return fresh_success(ctx) and ctx.attempt is not None and ctx.attempt.attempt_no > 0

    def run(self, ctx: AttemptContext) -> None:
        assert ctx.attempt is not None and ctx.job is not None
        cheap = rejected_cheap_answer(store.attempts_of(ctx.job_id), ctx.attempt)
        if cheap is None:
            return
        rule = ctx.config.routing.actions.get(ctx.job.action_type, ActionRule())
        mine = extract(cheap.text or "", rule).value
        theirs = extract(ctx.attempt.text or "", rule).value
        store.record_label(
            ctx.job_id,
            ctx.job.action_type,
            source="escalation",
            good=mine is not None and mine == theirs,
            gate_passed=False,
            score=cheap.quality_score,
            features=dict((cheap.quality_components or {}).get("features") or {}),
            note=f"{cheap.tier}/{cheap.model} vs {ctx.attempt.tier}/{ctx.attempt.model}: "
            f"{str(mine)[:80]} vs {str(theirs)[:80]}",
        )
