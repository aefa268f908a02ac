"""Test fixtures on real services.

Each test run gets its own PostgreSQL database and its own Redis key prefix (queues included), so
runs never see each other. Missing services skip the integration tests on a laptop and fail them
under ``CI=true``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.support import services

RUN_ID = uuid.uuid4().hex[:10]
DB_NAME = f"tierflow_test_{RUN_ID}"
PREFIX = f"tftest-{RUN_ID}"


def pytest_configure(config: pytest.Config) -> None:
    # Set before any tierflow module reads its settings (celeryconfig reads them at import).
    os.environ["TIERFLOW_BROKER_URL"] = services.REDIS_URL
    os.environ["TIERFLOW_DATABASE_URL"] = (
        f"postgresql://postgres@{services.PG_HOST}:{services.PG_PORT}/{DB_NAME}"
    )
    os.environ["TIERFLOW_KEY_PREFIX"] = PREFIX
    os.environ["TIERFLOW_AVAILABILITY_TTL_S"] = "0.5"
    os.environ.pop("TIERFLOW_CONFIG", None)
    os.environ.pop("TIERFLOW_REDIS_URL", None)


@pytest.fixture(scope="session")
def services_ready() -> None:
    missing = services.services_up()
    if missing:
        message = "missing services: " + ", ".join(missing)
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(message + " (CI=true: integration tests must run)")
        pytest.skip(message)


@pytest.fixture(scope="session")
def database(services_ready: None) -> Iterator[str]:
    """A fresh PostgreSQL database for this run, migrated to head."""
    url = services.create_database(DB_NAME)
    from tierflow.core.db import upgrade_database

    upgrade_database(url)
    yield url
    from tierflow.core.db import reset_engines

    reset_engines()
    services.drop_database(DB_NAME)
    services.delete_prefix(PREFIX)


def _reset_process_state() -> None:
    from tierflow.core.settings import reset_settings
    from workers.backends.base import registry

    reset_settings()
    registry.clear()


FleetFactory = Callable[..., list[services.WorkerProcess]]


@pytest.fixture
def fleet(database: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[FleetFactory]:
    """Start real Celery workers with a given config: ``fleet(config_dict, workers=1, env={})``."""
    started: list[services.WorkerProcess] = []

    def start(
        config: dict[str, Any], workers: int = 1, env: dict[str, str] | None = None, **kwargs: Any
    ) -> list[services.WorkerProcess]:
        path = services.write_config(config, tmp_path)
        monkeypatch.setenv("TIERFLOW_CONFIG", str(path))
        for key, value in (env or {}).items():
            monkeypatch.setenv(key, value)
        _reset_process_state()
        worker_env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        batch = [services.WorkerProcess(worker_env, **kwargs) for _ in range(workers)]
        started.extend(batch)
        for w in batch:
            w.wait_ready()
        return batch

    yield start
    for w in started:
        w.stop()
    # Nothing queued by this test may reach the next test's workers.
    services.delete_prefix(PREFIX, "q:*")
    services.delete_prefix(PREFIX, "rate:*")
    services.delete_prefix(PREFIX, "cooldown:*")
    services.delete_prefix(PREFIX, "circuit:*")
    services.delete_prefix(PREFIX, "inflight:*")
    services.delete_prefix(PREFIX, "fair:*")
    services.delete_prefix(PREFIX, "mode")
    _reset_process_state()


@pytest.fixture
def config_file(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Callable[[dict[str, Any]], None]:
    """Point this process's settings at a config (no worker started)."""

    def use(config: dict[str, Any]) -> None:
        monkeypatch.setenv("TIERFLOW_CONFIG", str(services.write_config(config, tmp_path)))
        _reset_process_state()

    yield use
    _reset_process_state()
