"""The ``tierflow`` command: run the fleet, submit jobs, watch modes and costs."""

from __future__ import annotations

import sys
import warnings

import typer
from rich.console import Console

from tierflow.errors import TierflowError

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
db_app = typer.Typer(no_args_is_help=True, help="Database migrations.")
app.add_typer(db_app, name="db")
console = Console(width=max(Console().width, 120))
err_console = Console(stderr=True)


def main() -> None:
    """Entry point: TierflowError becomes one clear line and exit code 2, never a traceback."""
    from tierflow.cli import fleet_cmds, job_cmds, report_cmds  # noqa: F401 - register commands

    # pgserver asks platformdirs for a runtime dir that headless machines lack; harmless.
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    try:
        app()
    except TierflowError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        sys.exit(2)
