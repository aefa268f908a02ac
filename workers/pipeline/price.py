"""Price a gated answer from its real token usage, and write down the attempt's outcome."""

from __future__ import annotations

from tierflow.core.constants import AttemptStatus
from workers.pipeline.context import AttemptContext, Step


class Price(Step):
    """The attempt's cost (US dollars, per-million prices on the reported usage): the answer's,
    plus the gate's own calls (samples, judge, critic; each listed in the evidence), and every
    field of the finished attempt, for :class:`~workers.pipeline.persist.Persist`."""

    def applies(self, ctx: AttemptContext) -> bool:
        return ctx.making and ctx.completion is not None and ctx.report is not None

    def run(self, ctx: AttemptContext) -> None:
        assert ctx.pick is not None and ctx.completion is not None and ctx.report is not None
        model, completion, report = ctx.pick.model, ctx.completion, ctx.report
        answer_cost = model.price(completion.input_tokens, completion.output_tokens)
        gate_cost = sum(call["cost_usd"] for call in ctx.extra_calls)
        evidence = report.evidence()
        if ctx.extra_calls:
            evidence["gate_calls"] = ctx.extra_calls
        if completion.fake_wrong is not None:
            evidence["fake_wrong"] = completion.fake_wrong  # the fake's record, for tests
        ctx.outcome = {
            "model": model.name,
            "provider": model.provider,
            "status": (AttemptStatus.PASSED if report.passed else AttemptStatus.REJECTED).value,
            "input_tokens": completion.input_tokens,
            "output_tokens": completion.output_tokens,
            "latency_ms": ctx.latency_ms,
            "cost_usd": answer_cost + gate_cost,
            "text": completion.text,
            "fake": completion.fake,
            "quality_score": report.confidence,
            "quality_components": evidence,
            "quality_issues": report.issues,
            "error": None if report.passed else "quality gate: " + "; ".join(report.issues),
            "error_kind": None if report.passed else "quality",
        }
