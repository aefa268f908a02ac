"""A daemon's budget hold on an attempt, settled outside the attempt's delivery.

BudgetGate (:mod:`workers.pipeline.budget`) holds a paid call's estimate under
:func:`hold_key` on the budget of the job's daemon (:func:`daemon_in`) and SettleBudget settles
it after the call. An attempt deferred to a provider batch stops before SettleBudget: its resume
settles the hold to the batch price, and the provider batch ticks settle the holds of the jobs
that ended without using their request (:func:`settle_hold`: dropped before it was sent,
cancelled or expired before its result was used).
"""

from __future__ import annotations

from typing import Any

from tierflow.core.redis_client import get_keys, get_redis
from workers.budget import Budgets


def daemon_in(metadata: dict[str, Any] | None) -> str | None:
    """The daemon whose budget a job with this metadata spends (``metadata.daemon``), or None."""
    daemon = (metadata or {}).get("daemon")
    return daemon if isinstance(daemon, str) and daemon else None


def hold_key(job_id: str, attempt_no: int) -> str:
    """The name of one attempt's hold on its daemon's budget."""
    return f"{job_id}:{attempt_no}"


def budgets() -> Budgets:
    """The fleet's daemon budgets (its Redis, its key prefix)."""
    return Budgets(get_redis(), get_keys().prefix)


def settle_hold(
    metadata: dict[str, Any] | None, job_id: str, attempt_no: int, cost_usd: float
) -> bool:
    """Settle ``(job_id, attempt_no)``'s hold on the budget of its job's daemon (from the job's
    ``metadata``) to ``cost_usd`` US dollars (0: released); False when nothing was held (no
    daemon, no budget, or settled before: a hold is settled once)."""
    daemon = daemon_in(metadata)
    if daemon is None:
        return False
    return budgets().settle(daemon, hold_key(job_id, attempt_no), cost_usd)
