"""Cost accounting (first seed's ``get_cost_summary``), from PostgreSQL with SQL aggregates.

What was spent is the sum of ``attempts.cost_usd`` (every model call, passed, rejected or failed,
priced from its real token usage) and of ``superseded_calls.cost_usd`` (calls made by a delivery
that had lost its attempt's lease: their outcome was fenced out, their cost was real; counted in
``calls`` and ``superseded``). What an API-only fleet would have spent is the sum of
``jobs.api_baseline_cost_usd`` (each finished job's answer priced on ``routing.baseline_model``).
``savings = api_baseline_cost - total_cost`` in US dollars, ``savings_pct`` in percent of the
baseline (0 when the baseline is 0).

Answers served from the cache (``attempts.cached``: exact or semantic) called no model: they
are passed attempts at cost 0, not calls. ``cache`` sums them up: ``hits`` (and by kind),
``hit_rate`` (the share of the window's jobs answered from the cache) and ``saved_usd`` (what
those answers cost when they were first made: ``attempts.cache_saved_usd``), also per action.

A window (``since`` / ``until``) selects jobs by submission time and counts each with all of its
attempts, so the baseline and the spending always describe the same jobs; days are UTC days of
submission. Breakdowns: ``tier_stats`` (every tier, zeros included), ``model_stats``,
``action_stats`` and ``day_stats``; summing any breakdown's ``total_cost`` gives ``total_cost``.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Date, Select, case, cast, func, literal, select
from sqlalchemy.sql.elements import ColumnElement

from schemas.tables import Attempt, Job, SupersededCall
from tierflow.core.constants import TIER_ORDER, AttemptStatus, JobStatus
from tierflow.core.db import session_scope
from tierflow.store.labels import gate_figures

CALLED = (AttemptStatus.PASSED.value, AttemptStatus.REJECTED.value, AttemptStatus.ERROR.value)
"""Attempt statuses that called a model (skipped and running attempts did not, or not yet)."""

Window = datetime | timedelta | None


def as_time(value: Window) -> datetime | None:
    """A window bound as an aware UTC time: a timedelta means that long ago, naive means UTC."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        return datetime.now(UTC) - value
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _count_if(condition: ColumnElement[bool]) -> ColumnElement[int]:
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


def _money(value: Decimal | float | None) -> float:
    return float(value or 0)


def _job_filter(since: datetime | None, until: datetime | None) -> list[ColumnElement[bool]]:
    conditions = []
    if since is not None:
        conditions.append(Job.created_at >= since)
    if until is not None:
        conditions.append(Job.created_at < until)
    return conditions


def _grouped(query: Any, key: Any) -> Any:
    """Group by ``key``; ``None`` means one row for everything (keyed ``"all"``)."""
    return query.group_by(key) if key is not None else query


def _attempt_stats(
    key: Any, where: list[ColumnElement[bool]], superseded_key: Any = None
) -> dict[Any, dict[str, Any]]:
    """Per value of ``key``: calls, cost, tokens, mean latency and outcome counts, superseded
    calls included (grouped by ``superseded_key``, the same column of ``superseded_calls``, or
    ``key`` itself when it is a job's column)."""
    skey = superseded_key if superseded_key is not None else key
    stats: dict[Any, dict[str, Any]] = {}
    with session_scope() as session:
        for name, *values in session.execute(_attempts_query(key, where)):
            stats[name] = _attempt_row(*values)
        for name, count, cost, tin, tout in session.execute(_superseded_query(skey, where)):
            row = stats.setdefault(name, dict(_EMPTY_ATTEMPTS))
            row["calls"] += int(count)
            row["superseded"] += int(count)
            row["total_cost"] += _money(cost)
            row["input_tokens"] += int(tin)
            row["output_tokens"] += int(tout)
    return stats


def _attempts_query(key: Any, where: list[ColumnElement[bool]]) -> Select[Any]:
    """Per ``key``: calls (not cached), cost, tokens, mean latency of calls, then passed,
    rejected, error and skipped counts."""
    called = Attempt.status.in_(CALLED) & Attempt.cached.is_(None)
    return _grouped(
        select(
            key if key is not None else literal("all"),
            _count_if(called),
            func.coalesce(func.sum(Attempt.cost_usd), 0),
            func.coalesce(func.sum(Attempt.input_tokens), 0),
            func.coalesce(func.sum(Attempt.output_tokens), 0),
            func.avg(case((called, Attempt.latency_ms))),
            _count_if(Attempt.status == AttemptStatus.PASSED.value),
            _count_if(Attempt.status == AttemptStatus.REJECTED.value),
            _count_if(Attempt.status == AttemptStatus.ERROR.value),
            _count_if(Attempt.status == AttemptStatus.SKIPPED.value),
        )
        .join(Job, Job.id == Attempt.job_id)
        .where(*where),
        key,
    )


def _superseded_query(key: Any, where: list[ColumnElement[bool]]) -> Select[Any]:
    """Per ``key``: superseded calls, their cost and tokens."""
    return _grouped(
        select(
            key if key is not None else literal("all"),
            func.count(SupersededCall.id),
            func.coalesce(func.sum(SupersededCall.cost_usd), 0),
            func.coalesce(func.sum(SupersededCall.input_tokens), 0),
            func.coalesce(func.sum(SupersededCall.output_tokens), 0),
        )
        .join(Job, Job.id == SupersededCall.job_id)
        .where(*where),
        key,
    )


def _attempt_row(
    calls: Any, cost: Any, tin: Any, tout: Any, latency: Any, *outcomes: Any
) -> dict[str, Any]:
    """One row of :func:`_attempts_query` as the stats' dict (superseded calls added later)."""
    passed, rejected, errors, skipped = (int(n) for n in outcomes)
    return {
        "calls": int(calls),
        "total_cost": _money(cost),
        "input_tokens": int(tin),
        "output_tokens": int(tout),
        "avg_latency_ms": round(float(latency), 1) if latency is not None else None,
        "passed": passed,
        "rejected": rejected,
        "errors": errors,
        "skipped": skipped,
        "superseded": 0,
    }


def _job_stats(key: Any, where: list[ColumnElement[bool]]) -> dict[Any, dict[str, Any]]:
    """Per value of ``key``: jobs, their outcomes and their API-only baseline cost."""
    query = _grouped(
        select(
            key if key is not None else literal("all"),
            func.count(Job.id),
            _count_if(Job.status == JobStatus.SUCCEEDED.value),
            _count_if(Job.status == JobStatus.FAILED.value),
            _count_if(Job.degraded.is_(True)),
            func.coalesce(func.sum(Job.api_baseline_cost_usd), 0),
        ).where(*where),
        key,
    )
    with session_scope() as session:
        return {
            name: {
                "jobs": int(jobs),
                "succeeded": int(ok),
                "failed": int(failed),
                "degraded": int(degraded),
                "api_baseline_cost": _money(baseline),
            }
            for name, jobs, ok, failed, degraded, baseline in session.execute(query)
        }


def _with_savings(stats: dict[str, Any]) -> dict[str, Any]:
    baseline, spent = stats.get("api_baseline_cost", 0.0), stats.get("total_cost", 0.0)
    stats["savings"] = baseline - spent
    stats["savings_pct"] = (baseline - spent) / baseline * 100 if baseline > 0 else 0.0
    return stats


_EMPTY_ATTEMPTS = {
    "calls": 0,
    "total_cost": 0.0,
    "input_tokens": 0,
    "output_tokens": 0,
    "avg_latency_ms": None,
    "passed": 0,
    "rejected": 0,
    "errors": 0,
    "skipped": 0,
    "superseded": 0,
}
_EMPTY_JOBS = {"jobs": 0, "succeeded": 0, "failed": 0, "degraded": 0, "api_baseline_cost": 0.0}


def _merged(key: Any, where: list[ColumnElement[bool]]) -> dict[Any, Any]:
    """Job and attempt statistics side by side, with savings, per value of a job column."""
    jobs, attempts = _job_stats(key, where), _attempt_stats(key, where)
    return {
        name: _with_savings(
            {**_EMPTY_JOBS, **jobs.get(name, {}), **_EMPTY_ATTEMPTS, **attempts.get(name, {})}
        )
        for name in sorted(set(jobs) | set(attempts), key=str)
    }


def cache_stats(where: list[ColumnElement[bool]]) -> dict[str, Any]:
    """Cache hits of the jobs ``where`` selects, in all and per action (see the docstring)."""
    query = (
        select(
            Job.action_type,
            func.count(func.distinct(Job.id)),
            _count_if(Attempt.cached == "exact"),
            _count_if(Attempt.cached == "semantic"),
            func.coalesce(func.sum(Attempt.cache_saved_usd), 0),
        )
        .select_from(Job)
        .outerjoin(Attempt, Attempt.job_id == Job.id)
        .where(*where)
        .group_by(Job.action_type)
    )

    def row(jobs: int, exact: int, semantic: int, saved: Any) -> dict[str, Any]:
        hits = exact + semantic
        return {
            "jobs": jobs,
            "hits": hits,
            "exact_hits": exact,
            "semantic_hits": semantic,
            "hit_rate": hits / jobs if jobs else 0.0,
            "saved_usd": _money(saved),
        }

    with session_scope() as session:
        found = session.execute(query).all()
    actions = {a: row(int(j), int(x), int(m), saved) for a, j, x, m, saved in found}
    totals = row(
        sum(r["jobs"] for r in actions.values()),
        sum(r["exact_hits"] for r in actions.values()),
        sum(r["semantic_hits"] for r in actions.values()),
        sum(r["saved_usd"] for r in actions.values()),
    )
    return {**totals, "by_action": {a: actions[a] for a in sorted(actions)}}


def get_cost_summary(since: Window = None, until: Window = None) -> dict[str, Any]:
    """Totals, savings versus API-only and breakdowns, for jobs submitted in ``[since, until)``.

    ``since``/``until`` are aware datetimes (naive ones are read as UTC), timedeltas (that long
    ago) or None (unbounded). Money is US dollars as ``float``; ``savings_pct`` is a percentage.
    Keys: ``total_cost``, ``api_baseline_cost``, ``savings``, ``savings_pct``, ``jobs``,
    ``calls`` and the other counters of a breakdown row, ``tier_stats``, ``model_stats``,
    ``action_stats``, ``day_stats`` (keyed by ISO date), ``cache`` (hits, hit rate, dollars
    saved; see :func:`cache_stats`), ``gate`` (per action: jobs, escalation
    rate, labels, audited passes, estimated miss rate; see
    :func:`tierflow.store.labels.gate_figures`), ``since`` and ``until`` (ISO or None).
    """
    start, end = as_time(since), as_time(until)
    where = _job_filter(start, end)
    day = cast(func.timezone("UTC", Job.created_at), Date)
    totals = _merged(None, where).get("all")
    summary: dict[str, Any] = totals or _with_savings({**_EMPTY_JOBS, **_EMPTY_ATTEMPTS})
    tiers = _attempt_stats(Attempt.tier, where, SupersededCall.tier)
    summary["tier_stats"] = {
        t.value: {**_EMPTY_ATTEMPTS, **tiers.get(t.value, {})} for t in TIER_ORDER
    }
    summary["model_stats"] = {
        name: stats
        for name, stats in sorted(
            _attempt_stats(Attempt.model, where, SupersededCall.model).items(),
            key=lambda kv: str(kv[0]),
        )
        if name is not None  # skipped attempts never reached a model
    }
    summary["action_stats"] = _merged(Job.action_type, where)
    by_day = _merged(day, where)
    summary["day_stats"] = {
        (d.isoformat() if isinstance(d, date) else str(d)): stats for d, stats in by_day.items()
    }
    summary["cache"] = cache_stats(where)
    summary["gate"] = gate_figures()  # all time: labels accumulate across windows
    summary["since"] = start.isoformat() if start else None
    summary["until"] = end.isoformat() if end else None
    return summary
