"""The second seed's status widget for a terminal: mode, local vs cloud, availability, history."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from rich.console import Console
from rich.table import Table
from sqlalchemy import case, func, select

from router.mode import get_mode, mode_history
from schemas.tables import Attempt
from tierflow.core.constants import Tier
from tierflow.core.db import session_scope
from tierflow.core.settings import get_settings
from workers.backends.base import registry
from workers.notify import recent_fallbacks


def provider_stats(since: datetime) -> dict[str, dict[str, Any]]:
    """Requests, tokens, mean latency (ms) and errors of local and cloud tiers since ``since``."""
    side = case((Attempt.tier == Tier.API_FALLBACK.value, "cloud"), else_="local")
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
    history = mode_history(5)
    if history:
        console.print("[bold]Mode switches[/bold]")
        for c in history:
            console.print(f"  {c.at:%Y-%m-%d %H:%M:%S} {c.from_mode} → {c.to_mode} ({c.source})")
