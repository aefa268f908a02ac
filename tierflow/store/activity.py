"""Reads for the dashboard: what runs now, and spending over time in hourly buckets.

Spending follows :mod:`tierflow.store.costs`: a job's attempts are counted in the hour the job
was submitted (UTC), next to the job's API-only baseline, so each bucket's ``cost`` and
``api_baseline_cost`` describe the same jobs (US dollars).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import exists, func, select

from schemas.tables import Attempt, Job
from tierflow.core.constants import TERMINAL_STATUSES, TIER_ORDER, AttemptStatus
from tierflow.core.db import session_scope


def running_attempts() -> dict[str, int]:
    """Attempts claimed, not finished and held under a live lease (a model call in flight, or
    about to be), per tier; every tier is present. A running attempt whose holder died (its
    lease ran out, by PostgreSQL's clock) is not counted: nothing is running it."""
    query = (
        select(Attempt.tier, func.count())
        .where(
            Attempt.status == AttemptStatus.RUNNING.value,
            Attempt.lease_until.is_not(None),
            Attempt.lease_until > func.now(),
        )
        .group_by(Attempt.tier)
    )
    counts = {t.value: 0 for t in TIER_ORDER}
    with session_scope() as session:
        for tier, count in session.execute(query):
            counts[str(tier)] = int(count)
    return counts


def stuck_jobs(stale_after_s: float) -> dict[str, int]:
    """Jobs accepted, not finished, untouched for ``stale_after_s`` seconds and with no attempt
    running under a live lease (what the sweep re-sends), per tier: the last attempt's, else
    the plan's first, else ``router`` (never routed); every tier is present."""
    last_tier = (
        select(Attempt.tier)
        .where(Attempt.job_id == Job.id)
        .order_by(Attempt.attempt_no.desc())
        .limit(1)
        .scalar_subquery()
    )
    live = exists().where(
        Attempt.job_id == Job.id,
        Attempt.status == AttemptStatus.RUNNING.value,
        Attempt.lease_until > func.now(),
    )
    tier = func.coalesce(last_tier, Job.plan["chain"][0].as_string(), "router")
    query = (
        select(tier, func.count())
        .where(
            Job.finished_at.is_(None),  # ix_jobs_open's predicate: the open jobs alone
            Job.status.not_in(TERMINAL_STATUSES),
            Job.updated_at < func.now() - timedelta(seconds=stale_after_s),
            ~live,
        )
        .group_by(tier)
    )
    counts = {t.value: 0 for t in TIER_ORDER} | {"router": 0}
    with session_scope() as session:
        for name, count in session.execute(query):
            counts[str(name)] = int(count)
    return counts


def last_attempt_finished_at() -> datetime | None:
    """When the newest attempt finished; None before the first."""
    with session_scope() as session:
        return session.execute(select(func.max(Attempt.finished_at))).scalar_one_or_none()


def hourly_costs(since: datetime) -> list[dict[str, Any]]:
    """Per UTC hour of submission since ``since``, oldest first, hours without jobs left out:
    ``hour`` (aware datetime), ``jobs``, ``cost`` (every attempt's) and ``api_baseline_cost``."""
    hour = func.date_trunc("hour", func.timezone("UTC", Job.created_at))
    jobs_query = (
        select(hour, func.count(Job.id), func.coalesce(func.sum(Job.api_baseline_cost_usd), 0))
        .where(Job.created_at >= since)
        .group_by(hour)
    )
    cost_query = (
        select(hour, func.coalesce(func.sum(Attempt.cost_usd), 0))
        .join(Job, Job.id == Attempt.job_id)
        .where(Job.created_at >= since)
        .group_by(hour)
    )
    buckets: dict[datetime, dict[str, Any]] = {}
    with session_scope() as session:
        for at, jobs, baseline in session.execute(jobs_query):
            buckets[at] = {"jobs": int(jobs), "cost": 0.0, "api_baseline_cost": float(baseline)}
        for at, cost in session.execute(cost_query):
            buckets.setdefault(at, {"jobs": 0, "cost": 0.0, "api_baseline_cost": 0.0})
            buckets[at]["cost"] = float(cost)
    return [{"hour": _utc(at), **row} for at, row in sorted(buckets.items())]


def _utc(naive_utc: datetime) -> datetime:
    # date_trunc over timezone('UTC', ...) gives a naive timestamp that is UTC.
    return naive_utc.replace(tzinfo=UTC)
