"""Reads for the dashboard's fairness and overhead panel: where recent jobs' time went, per tier,
and how each daemon's attempts spread over the tiers. Two aggregate statements, no per-job loop.

The window is **jobs submitted in the last** ``window_s`` **seconds** (``jobs.created_at``, read
through ``ix_jobs_created_at``), timed by PostgreSQL's clock.

The times follow :func:`tierflow.store.timing.split_times` in SQL, so the page's figures are the
ones each :class:`~schemas.jobs.JobResult` carries (and the Prometheus histograms of
:mod:`workers.job_metrics` count): an attempt **waited** from the end of what came before it
(the job's insert for the first attempt, the previous attempt's end, or its claim when it has no
end) to its own claim, by the attempt's tier; a finished job's **overhead** is its submit to
finish less its model calls (the model time clamped to what the waits leave), by the tier that
ended it (else its last attempt's, else ``none``). Milliseconds; a value below 0 (hosts' clocks)
is clamped at 0, as there.

A daemon is named as :mod:`router.fairshare` names its line: a batch line
(priority ``BATCH_PRIORITY`` and below) is ``BATCH_LINE``, a job's ``metadata.daemon`` when it
is a string of 1-64 characters, else ``DEFAULT_DAEMON``; the caller passes those names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import text

from tierflow.core.db import session_scope

_TIMES_SQL = text(
    """
WITH spans AS (
  SELECT j.id AS job_id, j.tier AS job_tier, a.tier, a.attempt_no,
         greatest(extract(epoch FROM j.finished_at - j.created_at) * 1000, 0)::float8 AS total_ms,
         coalesce(a.latency_ms, 0)::float8 AS model_ms,
         greatest(extract(epoch FROM a.started_at - coalesce(
           lag(coalesce(a.finished_at, a.started_at)) OVER by_job, j.created_at)) * 1000, 0
         )::float8 AS wait_ms
  FROM jobs j LEFT JOIN attempts a ON a.job_id = j.id
  WHERE j.created_at >= now() - make_interval(secs => :window_s) AND j.finished_at IS NOT NULL
  WINDOW by_job AS (PARTITION BY j.id ORDER BY a.attempt_no)
),
overheads AS (
  SELECT tier, total_ms - least(model_ms, total_ms - least(waits_ms, total_ms)) AS overhead_ms
  FROM (
    SELECT coalesce(min(job_tier), (array_agg(tier ORDER BY attempt_no DESC))[1], 'none') AS tier,
           min(total_ms) AS total_ms, coalesce(sum(wait_ms), 0) AS waits_ms,
           sum(model_ms) AS model_ms
    FROM spans GROUP BY job_id
  ) per_job
)
SELECT 'queue_wait' AS measure, tier, count(*) AS n,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY wait_ms) AS p50,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY wait_ms) AS p95
FROM spans WHERE attempt_no IS NOT NULL GROUP BY tier
UNION ALL
SELECT 'overhead', tier, count(*),
       percentile_cont(0.5) WITHIN GROUP (ORDER BY overhead_ms),
       percentile_cont(0.95) WITHIN GROUP (ORDER BY overhead_ms)
FROM overheads GROUP BY tier
"""
)

# For this transaction alone: its sorts (an hour of attempts) fit in memory rather than spill to
# disk, and no JIT compile (tens of ms, more than it saves on a statement this size).
_REPORT_SETTINGS = text("SET LOCAL work_mem = '64MB'; SET LOCAL jit = off")

_SHARES_SQL = text(
    """
SELECT a.tier,
       CASE WHEN j.priority <= :batch_priority THEN :batch_line
            WHEN jsonb_typeof(j.metadata -> 'daemon') = 'string'
                 AND length(j.metadata ->> 'daemon') BETWEEN 1 AND 64
            THEN j.metadata ->> 'daemon'
            ELSE :default_daemon END AS daemon,
       count(*) AS attempts,
       count(*) FILTER (WHERE a.finished_at IS NOT NULL) AS finished
FROM jobs j JOIN attempts a ON a.job_id = j.id
WHERE j.created_at >= now() - make_interval(secs => :window_s)
GROUP BY 1, 2
"""
)


@dataclass(frozen=True)
class Spread:
    """How many values (``n``) and their median and 95th percentile (milliseconds, linear
    interpolation between the closest ranks, as ``percentile_cont``); None when ``n`` is 0."""

    n: int
    p50_ms: float | None
    p95_ms: float | None

    def as_dict(self) -> dict[str, Any]:
        return {"n": self.n, "p50_ms": self.p50_ms, "p95_ms": self.p95_ms}


EMPTY = Spread(0, None, None)


def _check_window(window_s: float) -> None:
    if not window_s > 0:
        raise ValueError(f"window_s must be above 0 seconds, got {window_s}")


def recent_times(window_s: float) -> dict[str, dict[str, Spread]]:
    """Per tier that has any: ``queue_wait`` (the attempts of the finished jobs submitted in the
    last ``window_s`` seconds, by attempt tier) and ``overhead`` (those jobs, by the tier that
    ended them), each a :class:`Spread`; a measure a tier has none of is :data:`EMPTY`. One
    statement. Raises ValueError for a window not above 0."""
    _check_window(window_s)
    found: dict[str, dict[str, Spread]] = {}
    with session_scope() as session:
        session.execute(_REPORT_SETTINGS)
        for measure, tier, n, p50, p95 in session.execute(_TIMES_SQL, {"window_s": window_s}):
            row = found.setdefault(str(tier), {"queue_wait": EMPTY, "overhead": EMPTY})
            row[str(measure)] = Spread(int(n), float(p50), float(p95))
    return found


@dataclass(frozen=True)
class DaemonAttempts:
    """One daemon's attempts on one tier in the window: claimed (``attempts``) and ended."""

    attempts: int
    finished: int


def daemon_attempts(
    window_s: float, *, batch_priority: int, batch_line: str, default_daemon: str
) -> dict[str, dict[str, DaemonAttempts]]:
    """Per attempt tier, per daemon (named as the module docstring says, from the names given):
    the attempts of the jobs submitted in the last ``window_s`` seconds. One statement. Raises
    ValueError for a window not above 0."""
    _check_window(window_s)
    params = {
        "window_s": window_s,
        "batch_priority": batch_priority,
        "batch_line": batch_line,
        "default_daemon": default_daemon,
    }
    found: dict[str, dict[str, DaemonAttempts]] = {}
    with session_scope() as session:
        for tier, daemon, attempts, finished in session.execute(_SHARES_SQL, params):
            found.setdefault(str(tier), {})[str(daemon)] = DaemonAttempts(
                int(attempts), int(finished)
            )
    return found
