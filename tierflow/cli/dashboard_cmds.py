"""``tierflow dashboard``: the web dashboard (see :mod:`tierflow.app.dashboard`)."""

from __future__ import annotations

import contextlib

import typer

from tierflow.app.console import console
from tierflow.app.dashboard import DEFAULT_PORT, TOKEN_ENV, configured_token, new_token, serve
from tierflow.app.fleet import adopt_running_fleet

app = typer.Typer()  # this module's commands, loaded by name (tierflow/cli/commands.py)


@app.command()
def dashboard(
    host: str = typer.Option("127.0.0.1", help="Address to bind (loopback by default)."),
    port: int = typer.Option(DEFAULT_PORT, help="TCP port."),
) -> None:
    """Serve the web dashboard until Ctrl-C: mode, local vs cloud, queues, costs, /metrics.

    Read-only without the token; switching the mode needs TIERFLOW_DASHBOARD_TOKEN (or the one
    generated and printed here).
    """
    adopt_running_fleet()
    token = configured_token()
    shown = f"[{host}]" if ":" in host else host
    console.print(f"dashboard http://{shown}:{port}/ (read-only without the token)")
    if token:
        console.print(f"  mode switches need the token in {TOKEN_ENV}")
    else:
        token = new_token()
        console.print(f"  to switch modes open http://{shown}:{port}/#token={token}")
    console.print(f"  metrics http://{shown}:{port}/metrics")
    with contextlib.suppress(KeyboardInterrupt):
        serve(host, port, token)
