"""``tierflow up``: the whole fleet on one machine, each part in its own process.

Starts (as needed) the embedded Redis and PostgreSQL, migrates the database, starts the embedded
llama.cpp engine when a local model points at ``TIERFLOW_LOCAL_ENGINE_URL``, then one worker for
the router and one per tier. Children inherit the environment with every URL filled in. Ctrl-C
(or SIGTERM) stops the workers warmly (in-flight jobs finish), then the engine, then the services.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from tierflow.app.dashboard import dashboard_child
from tierflow.app.embedded import EmbeddedServices
from tierflow.app.metrics import prepare_multiprocess_dir
from tierflow.core.db import upgrade_database
from tierflow.core.errors import ConfigError
from tierflow.core.settings import get_settings, redact_url, reset_settings
from workers.pools import POOLS, worker_argv


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path


@dataclass
class Fleet:
    state_dir: Path
    services: EmbeddedServices
    children: list[Child] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def spawn(self, name: str, argv: list[str]) -> Child:
        log_dir = self.state_dir / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        log = log_dir / f"{name}.log"
        handle = log.open("ab")
        proc = subprocess.Popen(
            [sys.executable, *argv], stdout=handle, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True,
        )  # fmt: skip
        handle.close()
        child = Child(name, proc, log)
        self.children.append(child)
        return child

    def wait_workers_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        for child in self.children:
            if not child.name.startswith("worker-"):
                continue
            while " ready." not in child.log.read_text(errors="replace"):
                if child.proc.poll() is not None:
                    raise ConfigError(f"{child.name} exited: see {child.log}")
                if time.monotonic() > deadline:
                    raise ConfigError(f"{child.name} not ready after {timeout}s: see {child.log}")
                time.sleep(0.2)

    def dead(self) -> list[Child]:
        return [c for c in self.children if c.proc.poll() is not None]

    def stop(self, timeout: float = 30.0) -> None:
        """Warm shutdown: SIGTERM to every child, SIGKILL to those still alive after ``timeout``."""
        for child in reversed(self.children):
            if child.proc.poll() is None:
                os.killpg(child.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in self.children:
            try:
                child.proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                os.killpg(child.proc.pid, signal.SIGKILL)
        self.children.clear()
        self.services.stop()


def _engine_needed() -> bool:
    settings = get_settings()
    target = settings.local_engine_url.rstrip("/")
    return any(
        (m.base_url or "").rstrip("/") == target
        for tier in settings.llm.tiers.values()
        for m in tier.models
        if m.enabled
    )


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/models", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def endpoints_file(state_dir: Path) -> Path:
    return state_dir / "fleet.json"


def adopt_running_fleet() -> bool:
    """Point this process at the fleet ``tierflow up`` runs, when no URL is configured.

    ``tierflow up`` records the embedded services' URLs (no passwords: they have none) in
    ``STATE_DIR/fleet.json``; ``submit``, ``mode``, ``costs`` and friends read it.
    """
    if os.environ.get("TIERFLOW_BROKER_URL") and os.environ.get("TIERFLOW_DATABASE_URL"):
        return False
    path = endpoints_file(get_settings().state_dir)
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    for key in ("TIERFLOW_BROKER_URL", "TIERFLOW_DATABASE_URL"):
        if not os.environ.get(key) and recorded.get(key):
            os.environ[key] = recorded[key]
    reset_settings()
    return True


def prepare_services(state_dir: Path) -> EmbeddedServices:
    """Fill TIERFLOW_BROKER_URL / TIERFLOW_DATABASE_URL with embedded servers where unset."""
    services = EmbeddedServices(state_dir)
    if not os.environ.get("TIERFLOW_BROKER_URL"):
        os.environ["TIERFLOW_BROKER_URL"] = services.start_redis()
    if not os.environ.get("TIERFLOW_DATABASE_URL"):
        os.environ["TIERFLOW_DATABASE_URL"] = services.start_postgres()
    reset_settings()
    return services


@contextmanager
def running_fleet(
    *,
    tiers: list[str] | None = None,
    with_engine: bool = True,
    flower_port: int | None = None,
    dashboard_port: int | None = None,
) -> Iterator[Fleet]:
    """Start the fleet, yield it, and stop every part on the way out (also on Ctrl-C)."""

    state_dir = get_settings().state_dir
    state_dir.mkdir(parents=True, exist_ok=True)
    services = prepare_services(state_dir)
    fleet = Fleet(state_dir, services)
    try:
        settings = get_settings()
        fleet.notes.append(f"broker   {redact_url(settings.broker_url)}")
        fleet.notes.append(f"database {redact_url(settings.database_url)}")
        upgrade_database()
        if services.redis_url or services.database_url:
            endpoints_file(state_dir).write_text(
                json.dumps(
                    {
                        "TIERFLOW_BROKER_URL": services.redis_url,
                        "TIERFLOW_DATABASE_URL": services.database_url,
                    }
                )
            )
        engine_url = settings.local_engine_url
        if with_engine and _engine_needed() and not _healthy(engine_url):
            port = urlsplit(engine_url).port or 8765
            fleet.spawn("local-engine", ["-m", "tierflow.cli", "local-engine", "--port", str(port)])
            deadline = time.monotonic() + 180
            while not _healthy(engine_url):
                if fleet.dead() or time.monotonic() > deadline:
                    raise ConfigError(
                        f"local engine did not start: see {state_dir}/logs/local-engine.log"
                    )
                time.sleep(0.5)
            fleet.notes.append(f"engine   {engine_url} (embedded llama.cpp, Gemma 3 270M)")
        prepare_multiprocess_dir(state_dir / "metrics")  # the workers' Prometheus counters
        for name in ["router", *(tiers or [n for n in POOLS if n != "router"])]:
            argv = ["-m", "celery", *worker_argv(name)]
            if name == "router":
                argv += ["-B", "-s", str(state_dir / "celerybeat-schedule")]
            fleet.spawn(f"worker-{name}", argv)
        if flower_port:
            fleet.spawn(
                "flower",
                ["-m", "celery", "-A", "workers.app", "flower", f"--port={flower_port}",
                 "--address=127.0.0.1"],
            )  # fmt: skip
            fleet.notes.append(f"flower   http://127.0.0.1:{flower_port}")
        if dashboard_port:
            argv, note = dashboard_child(dashboard_port)
            fleet.spawn("dashboard", argv)
            fleet.notes.append(note)
        fleet.wait_workers_ready()
        yield fleet
    finally:
        endpoints_file(state_dir).unlink(missing_ok=True)
        fleet.stop()
