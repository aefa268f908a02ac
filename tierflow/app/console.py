"""The terminal the roof prints to: one wide console for tables, one for errors on stderr."""

from __future__ import annotations

from rich.console import Console

console = Console(width=max(Console().width, 120))
err_console = Console(stderr=True)
