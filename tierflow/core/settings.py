"""The one settings object: environment plus ``llm_config.yaml``.

Environment (all optional):

- ``TIERFLOW_BROKER_URL``    Celery broker, e.g. ``redis://:pw@host:6379/0`` or ``rediss://...``
- ``TIERFLOW_REDIS_URL``     Redis for notifications and limits (default: the broker URL)
- ``TIERFLOW_DATABASE_URL``  PostgreSQL, e.g. ``postgresql+psycopg://user:pw@host/db``
- ``TIERFLOW_CONFIG``        path to ``llm_config.yaml`` (default: the packaged one)
- ``TIERFLOW_STATE_DIR``     embedded Redis/PostgreSQL data (default: the user's data dir)
- ``TIERFLOW_KEY_PREFIX``    prefix of every Redis key and queue (default ``tierflow``)
- ``TIERFLOW_DASHBOARD_TOKEN``  the dashboard's token for mode switches (16 to 512 printable
  ASCII characters, no spaces; unset or blank: one is generated at start). Only the dashboard's
  process gets it: ``tierflow up`` withholds it from workers, beat and Flower.

With no broker or database URL the CLI starts embedded ones (see :mod:`tierflow.app.embedded`).
"""

from __future__ import annotations

import re
from functools import cached_property, lru_cache
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from platformdirs import user_data_dir
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from tierflow.core.config import LLMConfig, load_config
from tierflow.core.errors import ConfigError, describe_validation_error

# What a dashboard token may be: long enough not to be guessed, and sendable in a header.
DASHBOARD_TOKEN = re.compile(r"[!-~]{16,512}")


def redact_url(url: str | None) -> str:
    """A URL with its password replaced by ``***``, safe to print or log."""
    if not url:
        return ""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


class Settings(BaseSettings):
    """Everything a tierflow process needs to know, read once."""

    model_config = SettingsConfigDict(env_prefix="TIERFLOW_", extra="ignore", frozen=True)

    broker_url: str | None = None
    redis_url: str | None = None
    database_url: str | None = None
    config: Path | None = None
    state_dir: Path = Field(default_factory=lambda: Path(user_data_dir("tierflow")))
    key_prefix: str = Field(default="tierflow", pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    local_engine_url: str = "http://127.0.0.1:8765/v1"

    # Delivery (seconds). The hard limit must stay below the visibility timeout, or Redis would
    # hand a running task to a second worker.
    task_soft_time_limit: int = Field(default=270, gt=0)
    task_time_limit: int = Field(default=300, gt=0)
    visibility_timeout: int = Field(default=900, gt=0)
    # An attempt's lease is a heartbeat: its holder renews it every third of lease_s while it
    # works, so a dead, frozen or cut-off holder loses it within lease_s. Not the time limit.
    lease_s: float = Field(default=15.0, ge=1.0, le=600.0)
    # Celery task events (for Flower): off by default, each costs Redis publishes per job;
    # Flower enables the workers' events itself when it starts.
    task_events: bool = False
    job_deadline_s: int = Field(default=1800, gt=0)
    # A batch submitter keeps at most this many of its jobs unfinished at once (0: no window;
    # `tierflow batch run --in-flight N` overrides it per run), and only batch_yield_in_flight
    # while daemons' jobs are being routed: on a small host a batch's running jobs take the CPU
    # (workers, PostgreSQL, Redis) a daemon's job needs. See router/batch.py.
    batch_in_flight: int = Field(default=64, ge=0)
    batch_yield_in_flight: int = Field(default=1, ge=1)
    # Seconds a local server's availability probe answer is reused (openai_compatible).
    availability_ttl_s: float = Field(default=5.0, ge=0)
    # Threads of a local_quality worker (None: workers/pools.py's size, sized for vLLM).
    local_quality_concurrency: int | None = Field(default=None, gt=0, le=4096)
    # The embedded engine: sequences decoded together (None: sized from the cores, see
    # workers/engine/slots.py) and context tokens per sequence.
    engine_slots: int | None = Field(default=None, ge=1, le=64)
    engine_slot_ctx: int = Field(default=2048, ge=256, le=32768)
    # The gate refits an action's scorer and threshold from its labels at most this often per
    # process (seconds; 0: before every judgement, one read of the labels each).
    gate_refit_s: float = Field(default=60.0, ge=0)
    # A secret: SecretStr keeps it out of the settings' repr (and so out of logs).
    dashboard_token: SecretStr | None = None

    @field_validator("dashboard_token", mode="before")
    @classmethod
    def _token_shape(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.strip() or None  # blank: none configured, one is generated
            if value is not None and not DASHBOARD_TOKEN.fullmatch(value):
                raise ValueError(
                    "must be 16 to 512 printable ASCII characters without spaces (it is sent "
                    "as 'Authorization: Bearer <token>')"
                )
        return value

    @model_validator(mode="after")
    def _limits_in_order(self) -> Settings:
        if self.task_soft_time_limit >= self.task_time_limit:
            raise ValueError("TIERFLOW_TASK_SOFT_TIME_LIMIT must be below TIERFLOW_TASK_TIME_LIMIT")
        if self.task_time_limit >= self.visibility_timeout:
            raise ValueError("TIERFLOW_TASK_TIME_LIMIT must be below TIERFLOW_VISIBILITY_TIMEOUT")
        if self.lease_s >= self.visibility_timeout:
            raise ValueError("TIERFLOW_LEASE_S must be below TIERFLOW_VISIBILITY_TIMEOUT")
        for name in ("broker_url", "redis_url"):
            url = getattr(self, name)
            if url and urlsplit(url).scheme not in {"redis", "rediss"}:
                raise ValueError(f"TIERFLOW_{name.upper()} must be a redis://, rediss:// URL")
        if self.database_url and not self.database_url.startswith("postgresql"):
            raise ValueError("TIERFLOW_DATABASE_URL must be a postgresql:// URL")
        return self

    @property
    def effective_redis_url(self) -> str:
        url = self.redis_url or self.broker_url
        if not url:
            raise ConfigError(
                "no Redis configured: set TIERFLOW_BROKER_URL (or run `tierflow up` for the "
                "embedded one)"
            )
        return url

    @property
    def sqlalchemy_url(self) -> str:
        """The database URL with the psycopg 3 driver named."""
        if not self.database_url:
            raise ConfigError(
                "no database configured: set TIERFLOW_DATABASE_URL (or run `tierflow up` for "
                "the embedded one)"
            )
        url = self.database_url
        for prefix in ("postgresql://", "postgres://"):
            if url.startswith(prefix):
                return "postgresql+psycopg://" + url[len(prefix) :]
        return url

    @cached_property
    def llm(self) -> LLMConfig:
        """``llm_config.yaml``, its engine-served models capped at the engine's slots
        (:func:`engine_caps`)."""
        return engine_caps(load_config(self.config), self.local_engine_url, self.engine_slots)


def engine_caps(config: LLMConfig, engine_url: str, engine_slots: int | None) -> LLMConfig:
    """``config`` with each model served by the embedded engine (``base_url`` = ``engine_url``)
    that sets no ``limits.max_concurrency`` capped at the engine's slots: its ``options.slots``,
    else ``engine_slots`` (``TIERFLOW_ENGINE_SLOTS``); neither set: left uncapped. More calls
    than slots would only wait inside the engine, each holding a worker's thread, while the
    fleet's cap lets them wait in the queue, where another model or tier can take them. An
    explicit ``max_concurrency`` is kept."""
    target = engine_url.rstrip("/")
    tiers, changed = {}, False
    for tier, tier_config in config.tiers.items():
        models = []
        for model in tier_config.models:
            slots = model.options.get("slots", engine_slots)
            if (
                (model.base_url or "").rstrip("/") == target
                and model.limits.max_concurrency is None
                and isinstance(slots, int)
                and not isinstance(slots, bool)
                and slots > 0
            ):
                limits = model.limits.model_copy(update={"max_concurrency": slots})
                model = model.model_copy(update={"limits": limits})
                changed = True
            models.append(model)
        tiers[tier] = tier_config.model_copy(update={"models": models})
    return config.model_copy(update={"tiers": tiers}) if changed else config


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings; raises ConfigError naming the bad field."""
    try:
        settings = Settings()
    except ValidationError as exc:
        problems = describe_validation_error(
            exc, empty="TIERFLOW_SETTINGS", name=lambda path: f"TIERFLOW_{path.upper()}"
        )
        raise ConfigError(f"invalid environment: {problems}") from None
    settings.llm  # noqa: B018 - validate the config file at start, not at the first job
    return settings


def reset_settings() -> None:
    """Forget cached settings (tests and the CLI change the environment)."""
    get_settings.cache_clear()
