"""The second seed's status widget for a terminal: mode, local vs cloud, availability, history."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from rich.console import Console
from rich.table import Table

from router.mode import get_mode, mode_history
from tierflow.core.settings import get_settings
from tierflow.store.labels import gate_figures
from tierflow.store.usage import provider_stats
from workers.backends.base import registry
from workers.notify import recent_fallbacks


def render_status(console: Console) -> None:

    mode = get_mode()
    console.print(f"[bold]Mode[/bold]: {mode.value}")
    table = Table("side", "requests", "tokens", "avg time", "errors", title="Last 24 h")
    for name, s in provider_stats(datetime.now(UTC) - timedelta(hours=24)).items():
        table.add_row(
            name, str(s["requests"]), f"{s['tokens']:,}", f"{s['avg_ms']:.0f} ms", str(s["errors"])
        )
    console.print(table)
    table = Table("tier", "model", "provider", "available", title="Availability")
    config = get_settings().llm
    for tier in config.tiers:
        for model in config.tier_models(tier):
            avail = registry.backend_for(model).availability()
            mark = "[green]ready[/green]" if avail.ok else f"[red]no[/red]: {avail.reason}"
            fake = " (FAKE)" if model.provider == "fake" else ""
            table.add_row(tier.value, model.name + fake, model.provider, mark)
    console.print(table)
    fallbacks = recent_fallbacks(5)
    if fallbacks:
        console.print("[bold]Recent fallbacks[/bold]")
        for fb in fallbacks:
            at = datetime.fromtimestamp(fb["at"], UTC).strftime("%H:%M:%S")
            console.print(
                f"  {at} {fb['from_tier']}/{fb['from_model']} → {fb['to']}: {fb['reason'][:100]}"
            )
    figures = gate_figures()
    if figures:
        console.print(gate_table(figures))
    history = mode_history(5)
    if history:
        console.print("[bold]Mode switches[/bold]")
        for c in history:
            console.print(f"  {c.at:%Y-%m-%d %H:%M:%S} {c.from_mode} → {c.to_mode} ({c.source})")


def gate_table(figures: dict[str, dict[str, Any]]) -> Table:
    """The gate's own figures per action: escalation, labels, estimated miss rate of passes."""
    table = Table(
        "action", "jobs", "escalated", "labels", "audited passes", "est. miss rate",
        title="Quality gate (all time)",
    )  # fmt: skip
    for action, row in sorted(figures.items()):
        miss = row.get("miss_rate")
        table.add_row(
            action,
            str(row.get("jobs", 0)),
            f"{float(row.get('escalation_rate') or 0):.0%}",
            str(row.get("labels", 0)),
            str(row.get("audited_passes", 0)),
            "-" if miss is None else f"{float(miss):.0%}",
        )
    return table
