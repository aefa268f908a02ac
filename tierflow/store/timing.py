"""Where a job's time went: in queues, in model calls, in the fleet's own work.

Read from the rows alone (the job's insert and each claim are PostgreSQL's clock; an end may
be the writing worker's, so a small skew between hosts is clamped at 0): an attempt
**waited** from the end of what came before it (the job's insert for the first attempt, the
previous attempt's end for the next) to its claim (``attempts.started_at``): the router's queue
and the route, the tier's queue, admission to a contended tier, a countdown. Its **model
time** is its call's ``latency_ms``. What is left of submit to finish is the fleet's own work
(claims, the gate, writes, the finish). ``overhead`` is everything but the model time, the
way TensorZero and LiteLLM report theirs.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class AttemptSpan:
    """One attempt's claim and end (None: not ended) and its model call time in ms."""

    started_at: datetime
    finished_at: datetime | None
    model_ms: float | None


@dataclass(frozen=True)
class JobTimes:
    """Milliseconds of one job: per attempt waits (in attempt order) and the totals."""

    waits_ms: list[float]
    queue_ms: float
    model_ms: float
    fleet_ms: float
    overhead_ms: float


def split_times(
    created_at: datetime, finished_at: datetime | None, spans: list[AttemptSpan]
) -> JobTimes | None:
    """The job's time split (milliseconds, none below 0); None while the job is not finished.
    ``spans`` in attempt order."""
    if finished_at is None:
        return None
    total = max((finished_at - created_at).total_seconds() * 1000, 0.0)
    waits = []
    before = created_at
    for span in spans:
        waits.append(max((span.started_at - before).total_seconds() * 1000, 0.0))
        before = span.finished_at or span.started_at
    model = sum(s.model_ms or 0.0 for s in spans)
    queue = min(sum(waits), total)
    model = min(model, total - queue)
    return JobTimes(waits, queue, model, total - queue - model, total - model)
