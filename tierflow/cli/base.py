"""The Typer applications every command module registers on."""

from __future__ import annotations

import typer

from tierflow.core.settings import get_settings
from workers.backends import registry

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="The tierflow command: run the fleet, submit jobs, watch modes and costs.",
)
db_app = typer.Typer(no_args_is_help=True, help="Database migrations.")
app.add_typer(db_app, name="db")


@app.callback()
def check_config_at_start() -> None:
    """Every command validates the settings and the whole config first (providers and their
    options included), so a bad file fails naming its field before anything runs."""
    registry.check(get_settings().llm)
