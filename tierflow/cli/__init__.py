"""The ``tierflow`` command: run the fleet, submit jobs, watch modes and costs.

Importing this package imports the command table (:mod:`tierflow.cli.commands`) and nothing of
the fleet: each command's module is imported when that command runs.
"""

from __future__ import annotations

import importlib
import sys
import warnings

import typer

from tierflow.app.console import err_console
from tierflow.cli.commands import COMMANDS, LazyGroup, load_command
from tierflow.core.errors import TierflowError

__all__ = ["COMMANDS", "app", "load_command", "main"]

app = typer.Typer(
    cls=LazyGroup,
    no_args_is_help=True,
    add_completion=False,
    help="The tierflow command: run the fleet, submit jobs, watch modes and costs.",
)

# The check imports the backends (and their SDKs): loaded with the command, not for --help.
_CONFIG_CHECK = "tierflow.cli.base"
# Groups that run the check themselves, for those of their commands that need it (tierflow
# batch: status and results only read the store, and start without the backends' SDKs).
_GROUPS_THAT_CHECK = frozenset({"batch"})


@app.callback()
def check_config_at_start(ctx: typer.Context) -> None:
    """Every command validates the settings and the whole config first (providers and their
    options included), so a bad file fails naming its field before anything runs."""
    if ctx.invoked_subcommand in _GROUPS_THAT_CHECK:
        return
    importlib.import_module(_CONFIG_CHECK).check_config_at_start()


def main() -> None:
    """Entry point: TierflowError becomes one clear line and exit code 2, never a traceback."""
    # pgserver asks platformdirs for a runtime dir that headless machines lack; harmless.
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    try:
        app()
    except TierflowError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        sys.exit(2)
