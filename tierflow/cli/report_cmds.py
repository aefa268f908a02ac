"""Commands that watch and steer the fleet: mode, costs, export, status."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import typer
from rich.table import Table

from router import get_mode, mode_history, set_mode
from router.export import export_usage_log
from tierflow.app.console import console
from tierflow.app.fleet import adopt_running_fleet
from tierflow.app.status import gate_table, render_status, watch_status
from tierflow.store.costs import get_cost_summary

app = typer.Typer()  # this module's commands, loaded by name (tierflow/cli/commands.py)


def _since(hours: float | None) -> datetime | None:
    return datetime.now(UTC) - timedelta(hours=hours) if hours else None


@app.command()
def mode(
    new_mode: str = typer.Argument(None, help="auto, local or cloud (omit to show)."),
    reason: str = typer.Option(None, help="Why, kept in the switch history."),
) -> None:
    """Show or switch the fleet's mode; every worker follows from its next attempt."""

    adopt_running_fleet()
    if new_mode:
        change = set_mode(new_mode, source="manual", reason=reason)
        console.print(f"mode {change.from_mode} → [bold]{change.to_mode}[/bold]")
    else:
        console.print(f"mode [bold]{get_mode().value}[/bold]")
    table = Table("time", "from", "to", "source", "reason", title="Recent switches")
    for c in mode_history(5):
        table.add_row(
            c.at.isoformat(timespec="seconds"), c.from_mode, c.to_mode, c.source, c.reason or ""
        )
    console.print(table)


@app.command()
def costs(
    hours: float = typer.Option(None, help="Only the last N hours (default: everything)."),
) -> None:
    """Totals, savings versus API-only, and breakdowns by tier, model, action and day."""

    adopt_running_fleet()
    summary = get_cost_summary(since=_since(hours))
    console.print(
        f"cost ${summary['total_cost']:.6f}  API-only ${summary['api_baseline_cost']:.6f}  "
        f"savings ${summary['savings']:.6f} ({summary['savings_pct']:.1f}%)"
    )
    for key, title in (
        ("tier_stats", "tier"),
        ("model_stats", "model"),
        ("action_stats", "action"),
        ("day_stats", "day"),
    ):
        rows = summary.get(key) or {}
        if not rows:
            continue
        present = {c for stats in rows.values() for c in stats}
        columns = [c for c in COLUMNS if c in present]
        table = Table(title, *(COLUMNS[c] for c in columns), title=f"By {title}")
        for name, stats in rows.items():
            table.add_row(str(name), *(_fmt(stats.get(c)) for c in columns))
        console.print(table)
    cache = summary.get("cache") or {}
    if cache.get("hits"):
        console.print(cache_table(cache))
    if summary.get("gate"):
        console.print(gate_table(summary["gate"]))


def cache_table(cache: dict) -> Table:
    """Answers served from the cache: hits by kind, the hit rate and the dollars saved."""
    table = Table(
        "action", "jobs", "exact", "semantic", "hit rate", "saved $",
        title=f"Cache: {cache['hits']} hits of {cache['jobs']} jobs "
        f"({cache['hit_rate']:.1%}), ${cache['saved_usd']:.6f} saved",
    )  # fmt: skip
    for action, row in cache["by_action"].items():
        if row["hits"]:
            table.add_row(
                action, str(row["jobs"]), str(row["exact_hits"]), str(row["semantic_hits"]),
                f"{row['hit_rate']:.1%}", f"{row['saved_usd']:.6f}",
            )  # fmt: skip
    return table


COLUMNS = {
    "jobs": "jobs", "calls": "calls", "passed": "passed", "rejected": "rejected",
    "errors": "errors", "input_tokens": "tokens in", "output_tokens": "tokens out",
    "avg_latency_ms": "avg ms", "total_cost": "cost $", "api_baseline_cost": "API-only $",
    "savings": "savings $",
}  # fmt: skip


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.6f}"
    return "" if value is None else str(value)


@app.command()
def export(
    jsonl: Path = typer.Option(..., "--jsonl", help="File to write, one line per attempt."),
    hours: float = typer.Option(None, help="Only the last N hours."),
) -> None:
    """Write the usage log (the seed's JSONL: one line per attempt, no secrets)."""

    adopt_running_fleet()
    count = export_usage_log(jsonl, since=_since(hours))
    console.print(f"{count} attempts written to {jsonl}")


@app.command()
def status(
    watch: bool = typer.Option(False, "--watch", help="Redraw every 5 s until Ctrl-C."),
) -> None:
    """The second seed's status widget, in the terminal: mode, local vs cloud, fallbacks."""

    adopt_running_fleet()
    if watch:
        watch_status(console)
    else:
        render_status(console)
