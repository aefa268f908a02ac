"""``tierflow batch status`` and ``tierflow batch results``: reads of a batch's state from the store
alone (no router, no broker, no backend), so watching a batch starts at once; loaded when one of
them runs (:data:`tierflow.cli.batch_cmds.BATCH_COMMANDS`)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import typer
from rich.live import Live
from rich.table import Table

from tierflow.app.adopt import adopt_running_fleet
from tierflow.app.console import console
from tierflow.store.batches import batch_rows, batch_status, get_batch

app = typer.Typer()  # this module's commands of the batch group


def find_batch(batch_id_or_name: str) -> str:
    """The id of the batch named or numbered so; a clear error (exit 1) when there is none."""
    batch = get_batch(batch_id_or_name)
    if batch is None:
        console.print(f"[red]no batch {batch_id_or_name!r}[/red]")
        raise typer.Exit(1)
    return batch.id


def progress_table(found: dict[str, Any]) -> Table:
    """Done / failed / running per tier, cost so far and the ETA."""
    statuses = found["statuses"]
    eta = found.get("eta_s")
    title = (
        f"batch {found.get('name')} [{found.get('state')}]  {found['finished']}/{found['jobs']} "
        f"finished  ${found['cost_usd']:.6f}  ETA {'-' if eta is None else f'{eta:.0f}s'}"
    )
    table = Table("status", "jobs", title=title)
    for status in sorted(statuses):
        table.add_row(status, str(statuses[status]))
    for tier, count in sorted(found["by_tier"].items()):
        table.add_row(f"served by {tier}", str(count))
    return table


@app.command("status")
def status(
    batch: str,
    watch: bool = typer.Option(False, "--watch", help="Refresh every 2 s until it ends."),
) -> None:
    """Progress of a batch (by id or name): per status and tier, cost so far, ETA."""
    adopt_running_fleet()
    batch_id = find_batch(batch)
    if not watch:
        console.print(progress_table(batch_status(batch_id)))
        return
    first = progress_table(batch_status(batch_id))
    with Live(first, console=console, refresh_per_second=1) as live:
        while True:
            found = batch_status(batch_id)
            live.update(progress_table(found))
            if found["state"] in ("done", "cancelled"):
                return
            time.sleep(2)


@app.command("results")
def results(
    batch: str,
    jsonl: Path = typer.Option(Path("-"), "--jsonl", help="File to write (- for stdout)."),
    order: str = typer.Option("input", help="input (line order) or completed (finish order)."),
) -> None:
    """One JSON line per job of the batch; partial results are readable at any time."""
    if order not in ("input", "completed"):
        raise typer.BadParameter("input or completed", param_hint="--order")
    adopt_running_fleet()
    rows = batch_rows(find_batch(batch), order)
    if str(jsonl) == "-":
        for row in rows:
            sys.stdout.write(json.dumps(row) + "\n")
        return
    count = 0
    with jsonl.open("w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row) + "\n")
            count += 1
    console.print(f"{count} results written to {jsonl}")
