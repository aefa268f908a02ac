"""``tierflow budget``: the daemons' spend ceilings, stored where the whole fleet reads them."""

from __future__ import annotations

import typer
from rich.table import Table

from tierflow.app.console import console
from tierflow.app.fleet import adopt_running_fleet
from tierflow.core.redis_client import get_keys, get_redis
from tierflow.core.settings import get_settings
from tierflow.store.budgets import all_budgets, clear_budget, set_budget

app = typer.Typer()  # this module's commands, loaded by name (tierflow/cli/commands.py)

budget_app = typer.Typer(no_args_is_help=True, help="Per-daemon spend ceilings (US dollars).")
app.add_typer(budget_app, name="budget")


def _ceiling(value: float | None) -> str:
    return "-" if value is None else f"{value:.6f}"


@budget_app.command("set")
def budget_set(
    daemon: str = typer.Option(..., "--daemon", help="The daemon (its gateway key's)."),
    daily: float = typer.Option(None, "--daily", min=0, help="USD per UTC day (omit: none)."),
    monthly: float = typer.Option(None, "--monthly", min=0, help="USD per UTC month (omit: none)."),
) -> None:
    """Store a daemon's ceilings; every worker and submit uses them from the next job on, in
    place of the config's entry for that daemon."""
    adopt_running_fleet()
    if daily is None and monthly is None:
        raise typer.BadParameter("give --daily, --monthly or both", param_hint="--daily")
    set_budget(daemon, daily, monthly)
    console.print(f"budget of {daemon}: daily {_ceiling(daily)}, monthly {_ceiling(monthly)} USD")


@budget_app.command("clear")
def budget_clear(
    daemon: str = typer.Option(..., "--daemon", help="The daemon."),
) -> None:
    """Remove a daemon's stored ceilings (the config's, if any, apply again)."""
    adopt_running_fleet()
    removed = clear_budget(daemon)
    console.print(f"budget of {daemon}: {'cleared' if removed else 'none was stored'}")


@budget_app.command("show")
def budget_show() -> None:
    """Every daemon's ceilings (stored or from the config) and its spend so far."""
    adopt_running_fleet()
    keys, client = get_keys(), get_redis()
    table = Table(
        "daemon", "daily $", "monthly $", "spent today $", "spent this month $", "source",
        title="Budgets",
    )  # fmt: skip
    for row in all_budgets(get_settings().llm):
        day, month = (float(v or 0) for v in client.mget(keys.budget_periods(row.daemon)))  # type: ignore[union-attr]
        table.add_row(
            row.daemon, _ceiling(row.daily_usd), _ceiling(row.monthly_usd),
            f"{day:.6f}", f"{month:.6f}", row.source,
        )  # fmt: skip
    console.print(table)
