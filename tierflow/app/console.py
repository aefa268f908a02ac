"""The terminal the roof prints to: one wide console for tables, one for errors on stderr."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape

from tierflow.app.supervisor import Event

console = Console(width=max(Console().width, 120))
err_console = Console(stderr=True, soft_wrap=True)  # one error, one line: never folded


def print_event(event: Event) -> None:
    """A supervisor event worth a line: exits, restarts and children ready again (start-up is
    quiet: the "fleet up" line names every part)."""
    text = escape(event.message)
    if event.kind == "exited":
        console.print(f"[red]{text}[/red]")
    elif event.restarts and event.kind == "started":
        console.print(f"[yellow]{text}[/yellow]")
    elif event.restarts and event.kind == "ready":
        console.print(f"[green]{text} again[/green]")
