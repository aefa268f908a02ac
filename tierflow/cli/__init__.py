"""The ``tierflow`` command: run the fleet, submit jobs, watch modes and costs."""

from __future__ import annotations

import sys
import warnings

from tierflow.app.console import err_console
from tierflow.cli import (
    autoscale_cmds,
    batch_cmds,
    budget_cmds,
    dashboard_cmds,
    eval_cmds,
    fleet_cmds,
    gateway_cmds,
    job_cmds,
    queue_cmds,
    report_cmds,
)
from tierflow.cli.base import app
from tierflow.core.errors import TierflowError

__all__ = [
    "app",
    "autoscale_cmds",
    "batch_cmds",
    "budget_cmds",
    "dashboard_cmds",
    "eval_cmds",
    "fleet_cmds",
    "gateway_cmds",
    "job_cmds",
    "main",
    "queue_cmds",
    "report_cmds",
]


def main() -> None:
    """Entry point: TierflowError becomes one clear line and exit code 2, never a traceback."""
    # pgserver asks platformdirs for a runtime dir that headless machines lack; harmless.
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    try:
        app()
    except TierflowError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        sys.exit(2)
