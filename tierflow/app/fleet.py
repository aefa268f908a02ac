"""``tierflow up``: the whole fleet on one machine, each part in its own supervised process.

Starts (as needed) the embedded Redis and PostgreSQL, migrates the database, starts the embedded
llama.cpp engine when a local model points at ``TIERFLOW_LOCAL_ENGINE_URL``, then one worker for
the router and one per tier, Celery beat (the sweeper's schedule) and Flower if asked. Children
inherit the environment with every URL filled in. A :class:`~tierflow.app.supervisor.Supervisor`
restarts any child that dies, with backoff, and logs it; children die with the supervisor, even
by ``kill -9``. A worker child that dies has its leases released and its jobs re-sent before it
is restarted, so its jobs move on in seconds, not a lease later. The engine's state (down and
why, restarting, up) goes to Redis for workers' error messages
(:mod:`tierflow.core.engine_state`). Leaving the context (Ctrl-C, SIGTERM) stops the workers
warmly (in-flight jobs finish), then the engine, then the services.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from tierflow.app.adopt import adopt_running_fleet as adopt_running_fleet  # re-exported
from tierflow.app.adopt import endpoints_file
from tierflow.app.dashboard import dashboard_child
from tierflow.app.embedded import EmbeddedServices
from tierflow.app.metrics import prepare_multiprocess_dir
from tierflow.app.supervisor import Event, Supervisor
from tierflow.core.db import upgrade_database
from tierflow.core.engine_state import record_engine_state
from tierflow.core.errors import ConfigError
from tierflow.core.settings import get_settings, redact_url, reset_settings
from workers.engine.slots import engine_models
from workers.pools import POOLS, worker_argv
from workers.sweeper import release_dead_worker

log = logging.getLogger(__name__)

ENGINE = "local-engine"
ENGINE_START_S = 180.0  # first start may assemble the GGUF and run the extra-buffers probe
WORKERS_START_S = 90.0


@dataclass
class Fleet:
    state_dir: Path
    services: EmbeddedServices
    supervisor: Supervisor
    notes: list[str] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        """The supervised children, in start order."""
        return self.supervisor.names

    def restarts(self, name: str) -> int:
        """How many times the supervisor restarted ``name`` (e.g. ``"local-engine"``)."""
        return self.supervisor.restarts(name)

    def exits(self, name: str) -> int:
        """How many times ``name`` died while supervised (stops by the fleet not counted)."""
        return self.supervisor.exits(name)


def _record_engine_event(event: Event) -> None:
    if event.child != ENGINE:
        return
    if event.kind == "exited":
        reason = f"local engine exited with {event.exit}"
        record_engine_state("down", reason, restarting=True, restarts=event.restarts)
    elif event.kind == "ready":
        record_engine_state("up", "local engine ready", restarts=event.restarts)


def _engine_extra_buffers() -> str:
    """``options.extra_buffers`` of the models the engine serves (one value, default auto)."""
    values = {str(m.options.get("extra_buffers", "auto")) for m in engine_models()}
    if len(values) > 1:
        raise ConfigError(
            f"models served by the local engine disagree on options.extra_buffers: {sorted(values)}"
        )
    return values.pop() if values else "auto"


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/models", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def prepare_services(state_dir: Path) -> EmbeddedServices:
    """Fill TIERFLOW_BROKER_URL / TIERFLOW_DATABASE_URL with embedded servers where unset."""
    services = EmbeddedServices(state_dir)
    if not os.environ.get("TIERFLOW_BROKER_URL"):
        os.environ["TIERFLOW_BROKER_URL"] = services.start_redis()
    if not os.environ.get("TIERFLOW_DATABASE_URL"):
        os.environ["TIERFLOW_DATABASE_URL"] = services.start_postgres()
    reset_settings()
    return services


def release_dead_worker_leases(event: Event) -> list[str]:
    """When a worker child died (an ``exited`` event of ``worker-NAME``): end the leases its
    process held and send its jobs' attempts again, at once (the jobs re-sent). Its deliveries
    are named ``NAME@HOST/PID.run:task`` (:func:`workers.tasks.delivery_name`), so exactly that
    process's attempts are released, never another fleet's on the same host."""
    if event.kind != "exited" or event.pid is None or not event.child.startswith("worker-"):
        return []
    name = event.child.removeprefix("worker-")
    prefix = f"{name}@{socket.gethostname()}/{event.pid}."
    try:
        sent = release_dead_worker(prefix)
    except Exception:  # the database is away: the leases lapse and the sweeper re-sends
        log.warning("could not release the leases of %s", prefix, exc_info=True)
        return []
    if sent:
        log.warning("%s died holding %d jobs: released and re-sent", event.child, len(sent))
    return sent


@contextmanager
def running_fleet(
    *,
    tiers: list[str] | None = None,
    with_engine: bool = True,
    flower_port: int | None = None,
    on_event: Callable[[Event], None] | None = None,
    dashboard_port: int | None = None,
) -> Iterator[Fleet]:
    """Start the fleet, yield it, and stop every part on the way out (also on Ctrl-C).

    ``on_event`` sees every supervisor event (starts, exits with their restart delay, ready),
    from the supervisor's thread. A worker child's death releases its leases and re-sends its
    jobs before it is restarted (:func:`release_dead_worker_leases`). Raises ConfigError when
    a part cannot start at all.
    """
    state_dir = get_settings().state_dir
    state_dir.mkdir(parents=True, exist_ok=True)
    if flower_port:  # Flower shows queued jobs too: the workers send task events from the start
        os.environ["TIERFLOW_TASK_EVENTS"] = "true"
    services = prepare_services(state_dir)

    def handle(event: Event) -> None:
        _record_engine_event(event)
        release_dead_worker_leases(event)
        if on_event is not None:
            on_event(event)

    supervisor = Supervisor(state_dir / "logs", on_event=handle)
    fleet = Fleet(state_dir, services, supervisor)
    try:
        settings = get_settings()
        fleet.notes.append(f"broker   {redact_url(settings.broker_url)}")
        fleet.notes.append(f"database {redact_url(settings.database_url)}")
        upgrade_database()
        _record_endpoints(state_dir, services)
        supervisor.start()
        if with_engine:
            _start_engine(fleet)
        prepare_multiprocess_dir(state_dir / "metrics")  # the workers' Prometheus counters
        workers = _add_workers(supervisor, tiers)
        _add_extras(fleet, flower_port, dashboard_port)
        supervisor.wait_ready(workers, WORKERS_START_S)
        yield fleet
    finally:
        endpoints_file(state_dir).unlink(missing_ok=True)
        supervisor.stop()
        if ENGINE in supervisor.names:
            record_engine_state("stopped", "local engine stopped with the fleet")
        services.stop()


def _record_endpoints(state_dir: Path, services: EmbeddedServices) -> None:
    """Write the embedded services' URLs and this pid for :func:`adopt_running_fleet`."""
    if services.redis_url or services.database_url:
        endpoints_file(state_dir).write_text(
            json.dumps(
                {
                    "TIERFLOW_BROKER_URL": services.redis_url,
                    "TIERFLOW_DATABASE_URL": services.database_url,
                    "pid": os.getpid(),
                }
            )
        )


def _start_engine(fleet: Fleet) -> None:
    """Start the embedded engine and wait for it, when a local model points at it and nothing
    answers there yet."""
    engine_url = get_settings().local_engine_url
    if not engine_models() or _healthy(engine_url):
        return
    port = urlsplit(engine_url).port or 8765
    argv = [sys.executable, "-m", "tierflow.cli", "local-engine", "--port", str(port),
            "--extra-buffers", _engine_extra_buffers()]  # fmt: skip
    fleet.supervisor.add(ENGINE, argv, health=lambda: _healthy(engine_url), stop_order=1)
    fleet.supervisor.wait_ready([ENGINE], ENGINE_START_S)
    fleet.notes.append(f"engine   {engine_url} (embedded llama.cpp, Gemma 3 270M)")


def _add_workers(supervisor: Supervisor, tiers: list[str] | None) -> list[str]:
    """One worker for the router and one per tier (all, or ``tiers``), then beat; the workers'
    names, to wait for."""
    state_dir = get_settings().state_dir
    workers = []
    for name in ["router", *(tiers or [n for n in POOLS if n != "router"])]:
        argv = [sys.executable, "-m", "celery", *worker_argv(name, beat=False)]
        supervisor.add(f"worker-{name}", argv, ready_marker=" ready.")
        workers.append(f"worker-{name}")
    # Beat in its own process, not the router's -B: the embedded beat is a grandchild that
    # a parent-death signal on the worker would not reach, so it could outlive the fleet.
    supervisor.add(
        "beat",
        [sys.executable, "-m", "celery", "-A", "workers.app", "beat",
         "-s", str(state_dir / "celerybeat-schedule"), "-l", "INFO"],
    )  # fmt: skip
    return workers


def _add_extras(fleet: Fleet, flower_port: int | None, dashboard_port: int | None) -> None:
    """Flower and the dashboard, when asked for."""
    if flower_port:
        fleet.supervisor.add(
            "flower",
            [sys.executable, "-m", "celery", "-A", "workers.app", "flower",
             f"--port={flower_port}", "--address=127.0.0.1"],
        )  # fmt: skip
        fleet.notes.append(f"flower   http://127.0.0.1:{flower_port}")
    if dashboard_port:
        argv, note, env = dashboard_child(dashboard_port)
        fleet.supervisor.add("dashboard", [sys.executable, *argv], env=env)
        fleet.notes.append(note)
