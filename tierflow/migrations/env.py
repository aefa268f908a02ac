"""Alembic environment: the URL comes from tierflow's settings, ``compare_type`` is on.

One upgrade at a time per database: an online run holds a PostgreSQL advisory lock
(:data:`MIGRATION_LOCK`, on its own connection's session) from before it reads the database's
revision until that connection closes, after its last commit, so replicas that each run
``tierflow db upgrade`` as they start (two routers' init containers) take turns: the first
migrates, the others wait for it (polling, holding no transaction) and then find the database
at head. Without it they all read the old revision and all but one failed on the objects the
first had just created.
"""

from __future__ import annotations

import logging
import time

from sqlalchemy import Connection, create_engine, pool, text

from alembic import context
from schemas.tables import Base
from tierflow.core.settings import get_settings

config = context.config

# pg_advisory_lock's key for "a migration is running": an arbitrary bigint, the same in every
# version of tierflow ("tierflow" in ASCII)
MIGRATION_LOCK = 0x74696572666C6F77
LOCK_POLL_S = 0.2  # seconds between tries while another upgrade holds the lock

log = logging.getLogger("tierflow.migrations")


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if url:
        return url
    return get_settings().sqlalchemy_url


def run_migrations_offline() -> None:
    context.configure(
        url=_url(), target_metadata=Base.metadata, literal_binds=True, compare_type=True
    )
    with context.begin_transaction():
        context.run_migrations()


def _lock(connection: Connection) -> None:
    """Take :data:`MIGRATION_LOCK` for ``connection``'s session, waiting for another run's.

    Polled, each try its own short transaction, rather than waited for in one: a waiter must
    hold no transaction open, or the running upgrade's ``CREATE INDEX CONCURRENTLY`` (which
    waits for every transaction older than itself to end) and the waiter would wait on each
    other. The lock is a session's, so it outlasts the commits of migrations run outside a
    transaction."""
    waited = False
    while True:
        got = connection.execute(
            text("SELECT pg_try_advisory_lock(:key)"), {"key": MIGRATION_LOCK}
        ).scalar()
        connection.commit()
        if got:
            return
        if not waited:
            log.info("another upgrade of this database is running; waiting for it to end")
            waited = True
        time.sleep(LOCK_POLL_S)


def run_migrations_online() -> None:
    engine = create_engine(_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        # held until this connection closes (NullPool: at the end of the block), whatever the
        # migrations did, so a failed or lost run releases it too
        _lock(connection)
        context.configure(connection=connection, target_metadata=Base.metadata, compare_type=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
