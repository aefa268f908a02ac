"""Real services for tests: PostgreSQL databases, Redis prefixes and Celery worker processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import pytest
import yaml

from tierflow.app.embedded import free_port

REPO = Path(__file__).resolve().parents[2]
PG_HOST = os.environ.get("TIERFLOW_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("TIERFLOW_TEST_PG_PORT", "5432"))
REDIS_URL = os.environ.get("TIERFLOW_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
ADMIN_URL = f"postgresql+psycopg://postgres@{PG_HOST}:{PG_PORT}/postgres"


def under_ci() -> bool:
    """Whether ``CI`` is set (1, true, yes): a missing service then fails a test, never skips."""
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def skip_unless_ci(reason: str) -> NoReturn:
    """Skip the test on a laptop; fail it under ``CI=true``, where it must run."""
    if under_ci():
        pytest.fail(f"{reason} (CI=true: this test must run)")
    pytest.skip(reason)


def port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def services_up() -> list[str]:
    """Names of the services that are missing."""
    missing = []
    if not port_open(PG_HOST, PG_PORT):
        missing.append(f"PostgreSQL at {PG_HOST}:{PG_PORT}")
    if not port_open("127.0.0.1", 6379):
        missing.append("Redis at 127.0.0.1:6379")
    return missing


def create_database(name: str) -> str:
    from sqlalchemy import create_engine, text

    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return f"postgresql+psycopg://postgres@{PG_HOST}:{PG_PORT}/{name}"


def drop_database(name: str) -> None:
    from sqlalchemy import create_engine, text

    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def delete_prefix(prefix: str, pattern: str = "*") -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    batch = list(client.scan_iter(f"{prefix}:{pattern}", count=1000))
    for i in range(0, len(batch), 500):
        client.delete(*batch[i : i + 500])
    client.close()


def write_config(config: dict[str, Any], directory: Path | None = None) -> Path:
    directory = directory or Path(tempfile.mkdtemp(prefix="tierflow-cfg-"))
    path = directory / f"llm_config-{uuid.uuid4().hex[:8]}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def fake_model(name: str, **options: Any) -> dict[str, Any]:
    """A fake model entry; prices given as input/output keys are passed through."""
    entry: dict[str, Any] = {"name": name, "provider": "fake", "model_id": f"fake-{name}"}
    for key in (
        "input_cost_per_million",
        "output_cost_per_million",
        "limits",
        "max_tokens",
        "enabled",
        "timeout_s",
        "base_url",
        "provider",
        "model_id",
        "api_key_env",
        "supports_json",
    ):
        if key in options:
            entry[key] = options.pop(key)
    entry["options"] = options
    return entry


def fleet_config(
    local_fast: list[dict[str, Any]] | None = None,
    local_quality: list[dict[str, Any]] | None = None,
    api_fallback: list[dict[str, Any]] | None = None,
    **routing: Any,
) -> dict[str, Any]:
    """A whole config, fake models by default; the baseline is the first API model."""
    api = api_fallback or [
        fake_model("fake-api", input_cost_per_million=3.0, output_cost_per_million=15.0)
    ]
    base_routing: dict[str, Any] = {
        "baseline_model": api[0]["name"],
        "self_critique": False,
        "actions": {
            "classify_memory": {"expects_json": True, "required_fields": ["category"]},
            "edit_file": {"expects_code": True},
        },
    }
    base_routing.update(routing)
    return {
        "tiers": {
            "local_fast": {"models": local_fast or [fake_model("fake-fast")]},
            "local_quality": {"models": local_quality or [fake_model("fake-quality")]},
            "api_fallback": {"models": api},
        },
        "routing": base_routing,
    }


class WorkerProcess:
    """A real ``celery worker`` in its own process, with its own environment."""

    def __init__(
        self,
        env: dict[str, str],
        queues: str = "router,tier.local_fast,tier.local_quality,tier.api_fallback,maintenance",
        concurrency: int = 4,
        pool: str = "threads",
        name: str | None = None,
        extra_args: list[str] | None = None,
        app: str = "workers.app",
    ) -> None:
        self.name = name or f"w{uuid.uuid4().hex[:6]}"
        self.log = Path(tempfile.mkdtemp(prefix="tierflow-worker-")) / f"{self.name}.log"
        cmd = [
            sys.executable, "-m", "celery", "-A", app, "worker",
            "-Q", queues, "-P", pool, "-c", str(concurrency), "-n", f"{self.name}@%h",
            "--without-gossip", "--without-mingle", "--loglevel", "INFO",
            *(extra_args or []),
        ]  # fmt: skip
        self._log_file = self.log.open("wb")
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=self._log_file, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log.read_text(errors="replace")
            if " ready." in text:
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{text[-4000:]}")
            time.sleep(0.1)
        raise RuntimeError(f"worker not ready after {timeout}s:\n{self.log.read_text()[-4000:]}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._log_file.close()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def running_workers(
    env: dict[str, str], count: int = 1, **kwargs: Any
) -> Iterator[list[WorkerProcess]]:
    workers = [WorkerProcess(env, **kwargs) for _ in range(count)]
    try:
        for w in workers:
            w.wait_ready()
        yield workers
    finally:
        for w in workers:
            w.stop()


class RedisServer:
    """A private ``redis-server`` on a free loopback port, its data in ``directory``.

    ``appendonly`` turns on the AOF (fsync on every write with ``appendfsync="always"``), so a
    crash (:meth:`crash`, ``kill -9``) and :meth:`start` again brings back every acknowledged
    write. ``password`` sets ``requirepass``.
    """

    def __init__(
        self,
        directory: Path,
        *,
        password: str | None = None,
        appendonly: bool = True,
        appendfsync: str = "always",
        port: int | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.password = password
        self.port = port or free_port()
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.directory / "redis.log"

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        cmd = [
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.directory), "--save", "", "--logfile", str(self.log),
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.appendfsync,
        ]  # fmt: skip
        if self.password:
            cmd += ["--requirepass", self.password]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ping():
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self.log.read_text(errors='replace')}")
            time.sleep(0.05)
        raise RuntimeError(f"redis-server on {self.port} not ready after {timeout}s")

    def client(self) -> Any:
        import redis

        return redis.Redis(
            host="127.0.0.1", port=self.port, password=self.password, socket_timeout=5
        )

    def ping(self) -> bool:
        try:
            client = self.client()
            try:
                return bool(client.ping())
            finally:
                client.close()
        except Exception:
            return False

    def crash(self) -> None:
        """``kill -9``: no shutdown save, only what the AOF already holds survives."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        self.crash()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
