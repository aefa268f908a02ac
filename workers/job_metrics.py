"""Prometheus histograms of where finished jobs' time went (:mod:`tierflow.store.timing`).

Observed once per job, by the process that ended it (:func:`workers.outcome.announce`), from
the :class:`JobResult` that ending returned: ``tierflow_overhead_seconds{tier}`` (submit to
finish less the model calls, by the tier that ended the job) and
``tierflow_queue_wait_seconds{tier}`` (each attempt's wait before its claim, by the attempt's
tier). Multiprocess mode as for the attempts' counters (:mod:`workers.pipeline.metrics`).
"""

from __future__ import annotations

from prometheus_client import Histogram

from schemas.jobs import JobResult

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
OVERHEAD = Histogram(
    "tierflow_overhead_seconds",
    "A finished job's time from submit to finish less its model calls, by its last tier.",
    ["tier"],
    buckets=_BUCKETS,
)
QUEUE_WAIT = Histogram(
    "tierflow_queue_wait_seconds",
    "An attempt's wait from the end of what came before it to its claim, by its tier.",
    ["tier"],
    buckets=_BUCKETS,
)


def observe_job(result: JobResult) -> None:
    """Count one finished job's overhead and its attempts' waits (nothing while unfinished)."""
    if result.overhead_ms is None:
        return
    tier = result.tier or (result.attempts[-1].tier if result.attempts else "none")
    OVERHEAD.labels(tier).observe(result.overhead_ms / 1000)
    for attempt in result.attempts:
        if attempt.queue_ms is not None:
            QUEUE_WAIT.labels(attempt.tier).observe(attempt.queue_ms / 1000)
