"""Count each stored attempt in Prometheus: outcome, latency, cost, tokens, fallbacks, rejections.

The counters live in the worker process. With ``PROMETHEUS_MULTIPROC_DIR`` set (``tierflow up``
sets it to ``STATE_DIR/metrics``; a deployment sets it per host), prometheus_client keeps them
in memory-mapped files there, and the dashboard's ``/metrics`` adds up every process's files
(:mod:`tierflow.app.metrics`). The directory must be emptied before the workers start. Without
it the counters stay in this process, for a scrape of this process.

A replay counts nothing: the delivery that stored the attempt counted it, so a redelivered
message never counts twice (the same rule as charging).
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from tierflow.core.constants import AttemptStatus
from workers.pipeline.context import AttemptContext, Step

ATTEMPTS = Counter(
    "tierflow_attempts",
    "Attempts stored, by tier, model and outcome (passed, rejected, error, skipped).",
    ["tier", "model", "outcome"],
)
DURATION = Histogram(
    "tierflow_attempt_duration_seconds",
    "Model call time of attempts that called a model, in seconds.",
    ["tier"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
COST = Counter("tierflow_cost_usd", "US dollars spent on model calls (the gate's included).")
TOKENS = Counter("tierflow_tokens", "Tokens of model calls, by direction.", ["direction"])
FALLBACKS = Counter("tierflow_fallbacks", "Jobs moved on to the next tier of their chain.")
GATE_REJECTIONS = Counter(
    "tierflow_gate_rejections",
    "Answers the quality gate rejected, by action and the verifier of the first issue.",
    ["action", "reason"],
)


def rejection_reason(issues: list[str] | None) -> str:
    """A low-cardinality label for a rejection: the verifier naming the first issue
    (``checks``, ``coherence``, ``gate``, ...), never the issue's free text."""
    first = (issues or ["gate"])[0]
    head = first.split(":", 1)[0].strip().lower()
    return head[:40] if head and head.replace("-", "").replace("_", "").isalnum() else "gate"


class Metrics(Step):
    """After the attempt row exists and its move is known; never on a replay."""

    def applies(self, ctx: AttemptContext) -> bool:
        return ctx.attempt is not None and not ctx.replayed

    def run(self, ctx: AttemptContext) -> None:
        attempt = ctx.attempt
        assert attempt is not None
        ATTEMPTS.labels(attempt.tier, attempt.model or "", attempt.status).inc()
        called = attempt.status != AttemptStatus.SKIPPED.value and attempt.model is not None
        if called and attempt.latency_ms is not None:
            DURATION.labels(attempt.tier).observe(attempt.latency_ms / 1000.0)
        if attempt.cost_usd:
            COST.inc(float(attempt.cost_usd))
        if attempt.input_tokens:
            TOKENS.labels("input").inc(attempt.input_tokens)
        if attempt.output_tokens:
            TOKENS.labels("output").inc(attempt.output_tokens)
        if ctx.move is not None and ctx.move.kind == "fallback":
            FALLBACKS.inc()
        if attempt.status == AttemptStatus.REJECTED.value and ctx.job is not None:
            GATE_REJECTIONS.labels(
                ctx.job.action_type, rejection_reason(attempt.quality_issues)
            ).inc()
