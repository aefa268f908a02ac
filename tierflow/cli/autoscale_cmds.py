"""``tierflow autoscale``: start and stop a tier's workers on its load (workers/autoscale.py)."""

from __future__ import annotations

import logging
import signal

import typer

from tierflow.app.console import console
from tierflow.app.fleet import adopt_running_fleet
from tierflow.core.redis_client import get_keys, get_redis
from tierflow.core.settings import get_settings
from workers.autoscale import Autoscaler, LocalProcessLauncher
from workers.limits import FleetLimits
from workers.pools import pool_concurrency

app = typer.Typer()  # this module's commands, loaded by name (tierflow/cli/commands.py)


@app.command()
def autoscale(
    tier: str = typer.Option("local_quality", help="The tier whose workers to scale."),
    min_workers: int = typer.Option(0, "--min", help="Workers kept running however idle."),
    max_workers: int = typer.Option(4, "--max", help="Most workers (one per GPU node)."),
    per_worker: int = typer.Option(
        0, help="Load one worker carries (0: its pool size; KEDA's targetValue)."
    ),
    cooldown: float = typer.Option(60.0, help="Seconds the load must stay low before scale-in."),
    interval: float = typer.Option(2.0, help="Seconds between ticks."),
) -> None:
    """Start workers (local processes) as the tier's queue grows; drain them (SIGTERM, warm
    shutdown: no kill while a job runs) once it has stayed low for ``--cooldown``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    adopt_running_fleet()
    settings = get_settings()
    launcher = LocalProcessLauncher(tier)
    scaler = Autoscaler(
        tier, launcher, per_worker=per_worker or pool_concurrency(tier),
        min_workers=min_workers, max_workers=max_workers, cooldown_s=cooldown,
        config=settings.llm,
        limits=FleetLimits(get_redis(), get_keys(), slot_ttl_s=settings.task_time_limit + 60),
    )  # fmt: skip
    stopping = False

    def on_signal(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    console.print(f"autoscaling {tier}: {min_workers}..{max_workers} workers, "
                  f"{scaler.per_worker} per worker; Ctrl-C drains them and exits")  # fmt: skip
    scaler.run(interval, stop=lambda: stopping)
    console.print("draining the workers (warm shutdown) ...")
    scaler.drain_all()
