"""Commands that run parts of the fleet: up, worker, local-engine, db upgrade."""

from __future__ import annotations

import logging
import os
import signal
import sys
import time

import typer

from tierflow.app.console import console, print_event
from tierflow.app.fleet import running_fleet
from tierflow.core.config import EXTRA_BUFFERS_CHOICES
from tierflow.core.db import upgrade_database
from tierflow.core.settings import get_settings, redact_url
from workers.engine.server import serve
from workers.pools import POOLS, worker_argv

app = typer.Typer()  # this module's commands, loaded by name (tierflow/cli/commands.py)
db_app = typer.Typer(no_args_is_help=True, help="Database migrations.")
app.add_typer(db_app, name="db")


@app.command()
def up(
    flower: int = typer.Option(0, help="Also start Flower on this port (0: no Flower)."),
    dashboard: int = typer.Option(8787, help="Dashboard port (0: none; taken: any free one)."),
    no_engine: bool = typer.Option(False, "--no-engine", help="Do not start the embedded engine."),
) -> None:
    """Run the whole fleet on this machine until Ctrl-C: services, router, one worker per tier.

    A part that dies is restarted with backoff (1 s doubling to 30 s) and the restart is printed;
    the fleet keeps running. Its children die with it, even by ``kill -9``.
    """

    stop = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    try:
        with running_fleet(
            with_engine=not no_engine,
            flower_port=flower or None,
            dashboard_port=dashboard or None,
            on_event=print_event,
        ) as fleet:
            for note in fleet.notes:
                console.print(f"  {note}")
            names = ", ".join(fleet.names)
            console.print(f"[green]fleet up[/green]: {names}. Logs in {fleet.state_dir}/logs.")
            console.print('Submit with `tierflow submit "prompt" --action ACTION`; Ctrl-C stops.')
            while not stop:
                time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    console.print("fleet stopped")


@app.command()
def worker(
    tier: str = typer.Option(..., help="local_fast, local_quality, api_fallback or router."),
    concurrency: int = typer.Option(0, help="Threads (0: the tier's default)."),
    loglevel: str = typer.Option("INFO"),
) -> None:
    """Run one worker for one tier, for real deployments (replaces this process with Celery)."""
    if tier not in POOLS:
        raise typer.BadParameter(f"choose one of {', '.join(POOLS)}", param_hint="--tier")

    get_settings().effective_redis_url  # noqa: B018 - fail now, clearly, without a broker
    argv = [sys.executable, "-m", "celery", *worker_argv(tier, concurrency or None, loglevel)]
    os.execv(sys.executable, argv)


@app.command("local-engine")
def local_engine(
    port: int = typer.Option(8765, help="TCP port on 127.0.0.1."),
    host: str = typer.Option("127.0.0.1"),
    extra_buffers: str = typer.Option(
        "auto",
        help="llama.cpp extra buffer types (AMX, repacking): auto (probe once), on or off.",
    ),
) -> None:
    """Serve the embedded llama.cpp model (Gemma 3 270M) over the OpenAI-compatible HTTP API."""
    if extra_buffers not in EXTRA_BUFFERS_CHOICES:
        choices = ", ".join(EXTRA_BUFFERS_CHOICES)
        raise typer.BadParameter(f"choose one of {choices}", param_hint="--extra-buffers")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    serve(host=host, port=port, extra_buffers=extra_buffers)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply every migration (``alembic upgrade head``) to TIERFLOW_DATABASE_URL."""

    upgrade_database()
    console.print(f"database at head: {redact_url(get_settings().database_url)}")
