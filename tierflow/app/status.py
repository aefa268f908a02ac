"""The second seed's status widget for a terminal: mode, local vs cloud, availability, history.

``tierflow status`` prints it once; ``tierflow status --watch`` redraws it in place every 5 s
(like the widget's refresh) until Ctrl-C.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from router.gate.health import gate_health
from router.mode import get_mode, mode_history
from tierflow.core.settings import get_settings
from tierflow.store.usage import provider_stats
from workers.automode import automatic_cloud
from workers.backends.base import registry
from workers.notify import recent_fallbacks

WATCH_INTERVAL_S = 5.0


def status_renderables() -> list[RenderableType]:
    """The widget's parts, read now."""
    parts: list[RenderableType] = []
    mode = get_mode()
    line = f"[bold]Mode[/bold]: {mode.value}"
    auto = automatic_cloud()
    if auto is not None:
        line += f" [yellow](automatic since {auto.at:%H:%M:%S}: {auto.reason})[/yellow]"
    parts.append(Text.from_markup(line))
    table = Table("side", "requests", "tokens", "avg time", "errors", title="Last 24 h")
    for name, s in provider_stats(datetime.now(UTC) - timedelta(hours=24)).items():
        table.add_row(
            name, str(s["requests"]), f"{s['tokens']:,}", f"{s['avg_ms']:.0f} ms", str(s["errors"])
        )
    parts.append(table)
    table = Table("tier", "model", "provider", "available", title="Availability")
    config = get_settings().llm
    for tier in config.tiers:
        for model in config.tier_models(tier):
            avail = registry.backend_for(model).availability()
            mark = "[green]ready[/green]" if avail.ok else f"[red]no[/red]: {avail.reason}"
            fake = " (FAKE)" if model.provider == "fake" else ""
            table.add_row(tier.value, model.name + fake, model.provider, mark)
    parts.append(table)
    fallbacks = recent_fallbacks(5)
    if fallbacks:
        parts.append(Text.from_markup("[bold]Recent fallbacks[/bold]"))
        for fb in fallbacks:
            at = datetime.fromtimestamp(fb["at"], UTC).strftime("%H:%M:%S")
            parts.append(
                Text(f"  {at} {fb['from_tier']}/{fb['from_model']} → {fb['to']}: "
                     f"{fb['reason'][:100]}")
            )  # fmt: skip
    figures = gate_health(get_settings().llm)
    if figures:
        parts.append(gate_table(figures))
    history = mode_history(5)
    if history:
        parts.append(Text.from_markup("[bold]Mode switches[/bold]"))
        for c in history:
            reason = f": {c.reason}" if c.reason else ""
            parts.append(
                Text(f"  {c.at:%Y-%m-%d %H:%M:%S} {c.from_mode} → {c.to_mode} ({c.source}){reason}")
            )
    return parts


def render_status(console: Console) -> None:
    for part in status_renderables():
        console.print(part)


def watch_status(
    console: Console, interval_s: float = WATCH_INTERVAL_S, rounds: int | None = None
) -> None:
    """Redraw the widget every ``interval_s`` until Ctrl-C (or ``rounds`` redraws); a failed
    read shows its error and the next round tries again. In a terminal the widget is redrawn
    in place (rich ``Live``); piped, each round is printed after the last."""
    drawn = 0

    def frame() -> RenderableType:
        try:
            body: RenderableType = Group(*status_renderables())
        except Exception as exc:  # Redis or PostgreSQL away: keep watching
            body = Text(f"could not read the fleet: {type(exc).__name__}: {exc}"[:300])
        stamp = f"updated {datetime.now():%H:%M:%S}, every {interval_s:g} s; Ctrl-C stops"
        # The stamp first: Live crops what a short terminal cannot show from the bottom.
        return Group(Text(stamp, style="dim"), body)

    def rounds_left() -> bool:
        return rounds is None or drawn < rounds

    try:
        if not console.is_terminal:
            while rounds_left():
                console.print(frame())
                drawn += 1
                if rounds_left():
                    time.sleep(interval_s)
            return
        with Live(console=console, auto_refresh=False) as live:
            while rounds_left():
                live.update(frame(), refresh=True)
                drawn += 1
                if rounds_left():
                    time.sleep(interval_s)
    except KeyboardInterrupt:
        pass


def gate_table(figures: dict[str, dict[str, Any]]) -> Table:
    """The gate's own figures per action: escalation, labels, estimated miss rate of passes."""
    table = Table(
        "action", "gate", "jobs", "escalated", "labels", "audited passes", "est. miss rate",
        "AUROC (held out)", title="Quality gate (all time)",
    )  # fmt: skip
    for action, row in sorted(figures.items()):
        miss = row.get("miss_rate")
        auc = row.get("auroc")
        table.add_row(
            action,
            str(row.get("gate", "")),
            str(row.get("jobs", 0)),
            f"{float(row.get('escalation_rate') or 0):.0%}",
            str(row.get("labels", 0)),
            str(row.get("audited_passes", 0)),
            "-" if miss is None else f"{float(miss):.0%}",
            "-" if auc is None else f"{float(auc):.2f}",
        )
    return table
