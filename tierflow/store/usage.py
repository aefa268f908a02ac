"""Reads of attempts for the status view and the usage log."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

from sqlalchemy import case, func, select

from schemas.tables import Attempt, Job
from tierflow.core.constants import AttemptStatus, Mode
from tierflow.core.db import session_scope


def provider_stats(since: datetime) -> dict[str, dict[str, Any]]:
    """Requests, tokens, mean latency (ms) and errors of local and cloud tiers since ``since``."""
    side = case((Attempt.tier.in_(sorted(Mode.LOCAL.tiers)), "local"), else_="cloud")
    query = (
        select(
            side,
            func.count(Attempt.model),
            func.coalesce(func.sum(Attempt.input_tokens + Attempt.output_tokens), 0),
            func.avg(Attempt.latency_ms),
            func.sum(case((Attempt.status == "error", 1), else_=0)),
        )
        .where(Attempt.started_at >= since, Attempt.model.is_not(None))
        .group_by(side)
    )
    stats = {
        name: {"requests": 0, "tokens": 0, "avg_ms": 0.0, "errors": 0}
        for name in ("local", "cloud")
    }
    with session_scope() as session:
        for name, requests, tokens, avg_ms, errors in session.execute(query):
            stats[name] = {
                "requests": int(requests),
                "tokens": int(tokens),
                "avg_ms": float(avg_ms or 0),
                "errors": int(errors or 0),
            }
    return stats


def finished_attempts(since: datetime | None) -> Iterator[tuple[Attempt, str]]:
    """Every attempt that is not running (started at or after ``since``), with its job's action,
    oldest first; streamed from the database in batches of 500."""
    query = (
        select(Attempt, Job.action_type)
        .join(Job, Job.id == Attempt.job_id)
        .where(Attempt.status != AttemptStatus.RUNNING.value)
        .order_by(Attempt.started_at, Attempt.id)
        .execution_options(yield_per=500)
    )
    if since is not None:
        query = query.where(Attempt.started_at >= since)
    with session_scope() as session:
        yield from session.execute(query).tuples()
