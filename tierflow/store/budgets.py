"""Budgets set with ``tierflow budget set``: one row per daemon, read by the fleet at submit and
before each paid attempt. A stored row takes precedence over the config's ``budgets:`` entry
for the same daemon; without one, the config's applies (:func:`budget_for`)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert

from schemas.tables import StoredBudget
from tierflow.core.config import DaemonBudget, LLMConfig
from tierflow.core.db import session_scope

# The reason a job ends or a paid tier is skipped when its daemon's budget is spent: the submit's
# refusal (router/client.py) and the fleet's BudgetGate (workers/pipeline/budget.py) both start
# with it, so one search finds both.
BUDGET_EXHAUSTED = "budget exhausted"


@dataclass(frozen=True)
class BudgetRow:
    """A daemon's ceilings (US dollars; None: none) and where they come from."""

    daemon: str
    daily_usd: float | None
    monthly_usd: float | None
    source: str  # "stored" (tierflow budget set) or "config"


def _usd(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]


def set_budget(daemon: str, daily_usd: float | None, monthly_usd: float | None) -> None:
    """Store the daemon's ceilings (both replaced; None: no ceiling for that period)."""
    stmt = insert(StoredBudget).values(daemon=daemon, daily_usd=daily_usd, monthly_usd=monthly_usd)
    stmt = stmt.on_conflict_do_update(
        index_elements=["daemon"], set_={"daily_usd": daily_usd, "monthly_usd": monthly_usd}
    )
    with session_scope() as session:
        session.execute(stmt)


def clear_budget(daemon: str) -> bool:
    """Remove the stored ceilings (the config's apply again); False when none were stored."""
    with session_scope() as session:
        result = session.execute(delete(StoredBudget).where(StoredBudget.daemon == daemon))
        return bool(result.rowcount)  # type: ignore[attr-defined]


def stored_budget(daemon: str) -> DaemonBudget | None:
    """The stored ceilings of ``daemon`` (one primary-key read), or None."""
    with session_scope() as session:
        row = session.get(StoredBudget, daemon)
        if row is None:
            return None
        return DaemonBudget(daily_usd=_usd(row.daily_usd), monthly_usd=_usd(row.monthly_usd))


def budget_for(daemon: str | None, config: LLMConfig) -> DaemonBudget | None:
    """The ceilings the fleet holds ``daemon`` to: the stored ones, else the config's; None for
    no daemon or no ceiling."""
    if not daemon:
        return None
    return stored_budget(daemon) or config.budgets.get(daemon)


def all_budgets(config: LLMConfig) -> list[BudgetRow]:
    """Every daemon with a ceiling, stored or configured, by name (a stored row hides the
    config's entry for the same daemon)."""
    with session_scope() as session:
        stored = {
            r.daemon: BudgetRow(r.daemon, _usd(r.daily_usd), _usd(r.monthly_usd), "stored")
            for r in session.execute(select(StoredBudget)).scalars()
        }
    configured = {
        name: BudgetRow(name, b.daily_usd, b.monthly_usd, "config")
        for name, b in config.budgets.items()
    }
    rows = {**configured, **stored}
    return [rows[name] for name in sorted(rows)]
