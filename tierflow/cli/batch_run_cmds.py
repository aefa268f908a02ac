"""``tierflow batch run`` and ``tierflow batch cancel``: the commands that submit a batch (the
router's plan, the broker) or cancel one; loaded when one of them runs
(:data:`tierflow.cli.batch_cmds.BATCH_COMMANDS`)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from router.batch import BatchHandle, estimate_batch, read_jsonl, submit_batch
from tierflow.app.adopt import adopt_running_fleet
from tierflow.app.console import console
from tierflow.core.settings import get_settings

app = typer.Typer()  # this module's commands of the batch group


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Seconds in ``90m``, ``24h``, ``2d``, ``3600s`` (a bare number is hours)."""
    value = text.strip().lower()
    unit = _UNITS.get(value[-1:]) if value else None
    number = value[:-1] if unit is not None else value
    try:
        seconds = float(number) * (unit or 3600)
    except ValueError:
        raise typer.BadParameter(
            "a duration like 90m, 24h or 2d", param_hint="--deadline"
        ) from None
    if seconds <= 0:
        raise typer.BadParameter("must be positive", param_hint="--deadline")
    return seconds


@app.command("run")
def run(
    file: Path,
    name: str = typer.Option("", help="The batch's name (default: the file's name)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan and cost estimate."),
    max_cost: float = typer.Option(0.0, help="Stop sending new jobs once this much is spent."),
    deadline_hours: float = typer.Option(24.0, help="Every job's deadline, from the start."),
    deadline: str = typer.Option(
        "",
        "--deadline",
        help="Every job's deadline, e.g. 90m, 24h, 2d (overrides --deadline-hours). A day or "
        "more lets API-tier calls go through the providers' Batch APIs at their batch price.",
    ),
    pack: int = typer.Option(
        0,
        "--pack",
        help="Pack up to N consecutive small label jobs of one action into one local model "
        "call (each still gated alone; 0 or 1: off).",
    ),
    in_flight: int = typer.Option(
        -1,
        "--in-flight",
        help="Keep at most N of the batch's jobs unfinished at once, leaving the fleet's CPU "
        "to daemons' jobs (0: no window; default: TIERFLOW_BATCH_IN_FLIGHT).",
    ),
) -> None:
    """Send every line of FILE (JSONL: prompt, action_type, context, metadata) as one batch;
    running the same file (same name) again resumes it."""
    provider_batch: bool | None = None
    if deadline:
        deadline_hours = parse_duration(deadline) / 3600
        minimum = get_settings().llm.provider_batches.min_deadline_hours
        provider_batch = True if deadline_hours >= minimum else None
    if dry_run:
        _print_plan(file)
        return
    adopt_running_fleet()
    done = submit_batch(
        read_jsonl(file),
        name=name or file.stem,
        max_cost_usd=max_cost or None,
        deadline_s=deadline_hours * 3600,
        provider_batch=provider_batch,
        pack=pack or None,
        in_flight=None if in_flight == -1 else in_flight,
    )
    console.print(
        f"batch {done.name} ({done.batch_id}): {done.lines} lines, {done.sent} sent, "
        f"{done.existing} already there, {len(done.errors)} refused"
    )
    for error in done.errors[:20]:
        console.print(f"  [red]line {error.line}[/red]: {error.reason}")
    if done.stopped_at_cost is not None:
        console.print(
            f"[yellow]stopped at ${done.stopped_at_cost:.6f} (max {max_cost}); rerun to resume"
            "[/yellow]"
        )


@app.command("cancel")
def cancel(batch: str) -> None:
    """Cancel every queued job of the batch; jobs in flight finish and are kept."""
    adopt_running_fleet()
    console.print(f"{BatchHandle.find(batch).cancel()} queued jobs cancelled")


def _print_plan(file: Path) -> None:
    """``--dry-run``: the first tier of each line and the estimated cost; nothing sent."""
    plan = estimate_batch(read_jsonl(file), get_settings().llm)
    table = Table("first tier", "jobs", title=f"{plan['jobs']} jobs (dry run: nothing sent)")
    for tier, count in sorted(plan["per_tier"].items()):
        table.add_row(tier, str(count))
    console.print(table)
    console.print(f"estimated cost ${plan['cost_usd']:.6f}  API-only ${plan['api_only_usd']:.6f}")
