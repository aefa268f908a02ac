"""Engine, sessions and migrations for the PostgreSQL that holds the truth."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from importlib.resources import files
from pathlib import Path
from typing import Any

from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

from tierflow.core.connections import CONNECT_ARGS, may_be_dead, ping, reset_statement_pools
from tierflow.core.settings import get_settings

# The packaged migrations (tierflow/migrations/), wherever the package is installed: the source
# tree, a site-packages, a wheel. Alembic wants a directory on disk, which every installer gives.
MIGRATIONS_DIR = Path(str(files("tierflow.migrations")))


@lru_cache(maxsize=4)
def engine_for(url: str) -> Engine:
    """One pooled engine per URL per process, surviving a database restart.

    A pooled connection is checked before it is handed out, without a round trip in steady
    use (see :func:`_check_on_checkout`): a restarted or killed server, or a connection it
    ended, costs the caller no error, the pool connects again. One-statement transactions
    have a leaner pool of their own (:mod:`tierflow.core.connections`), checked the same way.

    Every statement is bounded (60 s) and so is connecting (10 s): the threads pool that the
    tiers run does not enforce Celery's time limits, so each blocking call carries its own.
    """
    engine = create_engine(url, pool_size=10, max_overflow=20, connect_args=CONNECT_ARGS)
    event.listen(engine, "checkout", _check_on_checkout)
    event.listen(engine, "checkin", _stamp_checkin)
    return engine


def _stamp_checkin(dbapi_connection: Any, record: Any) -> None:
    record.info["checked_in_at"] = time.monotonic()


def _check_on_checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
    """Ping a pooled connection only when it may be dead (:func:`connections.may_be_dead`: its
    socket is readable, or it idled past ``IDLE_PING_S``); otherwise hand it out as it is:
    SQLAlchemy's ``pool_pre_ping`` would cost a round trip at every checkout, several per job.

    A dead connection raises ``DisconnectionError``: the pool discards it and checks out
    another (SQLAlchemy's contract). A readable connection that answers the ping is kept."""
    if may_be_dead(dbapi_connection, record.info.get("checked_in_at")) and not ping(
        dbapi_connection
    ):
        raise DisconnectionError("pooled connection found dead at checkout")


# Opens the transaction and makes its commit non-durable in one round trip: a statement without
# parameters goes over the simple query protocol, which takes several at once.
_BEGIN_ASYNC_COMMIT = text("BEGIN; SET LOCAL synchronous_commit = off")


@contextmanager
def autocommit_scope() -> Iterator[Session]:
    """A session whose every statement is its own transaction (no ``BEGIN``/``COMMIT`` round
    trips): for a write that is one statement, or statements that need not commit together
    (each is made safe alone, e.g. by a conditional ``WHERE`` or ``ON CONFLICT``)."""
    session = _sessions_for(_autocommitting(get_engine()))()
    try:
        yield session
    finally:
        session.close()


@lru_cache(maxsize=4)
def _autocommitting(engine: Engine) -> Engine:
    return engine.execution_options(isolation_level="AUTOCOMMIT")


@lru_cache(maxsize=4)
def _sessions_for(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def get_engine() -> Engine:
    return engine_for(get_settings().sqlalchemy_url)


@contextmanager
def session_scope(*, durable: bool = True) -> Iterator[Session]:
    """A session committed on success and rolled back on any error.

    ``durable=False`` commits without waiting for the WAL flush (``SET LOCAL
    synchronous_commit = off``): the commit is visible to every other session at once, exactly
    like a durable one, but a PostgreSQL *crash* within about 0.6 s (three ``wal_writer_delay``)
    may lose it. Only for writes the fleet can lose and redo (a routing plan, an attempt's
    claim: see their callers); never for a job's acceptance, an outcome or a charge. On this
    machine a durable commit waits about 3 ms for the disk, a non-durable one 0.5 ms.

    Such a session opens its transaction itself, on a connection the driver leaves in
    autocommit: ``BEGIN`` and the ``SET LOCAL`` are one round trip instead of two. The driver
    still ends it: psycopg's ``commit()`` and ``rollback()`` send ``COMMIT``/``ROLLBACK``
    whenever the server reports a transaction open, and so does the pool's reset on return.
    """
    engine = get_engine() if durable else _autocommitting(get_engine())
    session = _sessions_for(engine)()
    try:
        if not durable:
            session.execute(_BEGIN_ASYNC_COMMIT)
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def alembic_config(url: str | None = None) -> Config:
    """An Alembic config for the packaged migrations, aimed at ``url`` (default: settings)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", (url or get_settings().sqlalchemy_url).replace("%", "%%"))
    return cfg


def upgrade_database(url: str | None = None) -> None:
    """Run ``alembic upgrade head``; safe to call on every start."""
    from alembic import command

    command.upgrade(alembic_config(url), "head")


def reset_engines() -> None:
    """Forget pooled engines and statement pools (after a fork, or when tests point at another
    database)."""
    engine_for.cache_clear()
    reset_statement_pools()
