"""A process's pooled PostgreSQL connections, ended by the server or dropped on the way, cost its
next statements no error: the pool finds them dead when it hands them out and connects again.

The check costs no round trip in steady use (no ``pool_pre_ping``): a connection is pinged only
when its socket says the server sent something (an idle connection is sent nothing unless it is
being ended) or it was idle longer than ``IDLE_PING_S``. So the statements here come right after
the fault, well within that second, where only the socket can tell. A control test takes the
socket check away and sees the error the check saves the caller from.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy.exc

from tests.faults.helpers import execute
from tests.support.services import PG_HOST, PG_PORT
from tests.support.tcp_proxy import TcpProxy
from tierflow import store
from tierflow.core import db
from tierflow.core.settings import reset_settings

pytestmark = [pytest.mark.integration]

POOLED = 3


@pytest.fixture
def proxied(database: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[TcpProxy]:
    """This process's engine reaches the database through a proxy that can drop connections."""
    direct = os.environ["TIERFLOW_DATABASE_URL"]
    with TcpProxy(PG_HOST, PG_PORT) as proxy:
        monkeypatch.setenv(
            "TIERFLOW_DATABASE_URL",
            direct.replace(f"{PG_HOST}:{PG_PORT}/", f"127.0.0.1:{proxy.port}/"),
        )
        reset_settings()
        db.reset_engines()
        try:
            yield proxy
        finally:
            db.reset_engines()
    reset_settings()


@pytest.fixture
def direct_pool(database: str) -> Iterator[None]:
    db.reset_engines()
    yield
    db.reset_engines()


def _fill_pool() -> list[int]:
    """Check out POOLED connections at once and give them back: the pool keeps them idle.
    Returns their backends' pids."""
    fairies = [db.get_engine().raw_connection() for _ in range(POOLED)]
    pids = []
    for fairy in fairies:
        cursor = fairy.cursor()
        cursor.execute("SELECT pg_backend_pid()")
        pids.append(int(cursor.fetchone()[0]))
        cursor.close()
        fairy.commit()
        fairy.close()
    return pids


def _statements(count: int = 2 * POOLED) -> None:
    """Reads through both paths the fleet uses: one-statement reads and ORM sessions."""
    for _ in range(count):
        assert store.load_job(str(uuid.uuid4())) is None
        with db.session_scope() as session:
            assert session.execute(sqlalchemy.text("SELECT 1")).scalar_one() == 1


def test_connections_dropped_on_the_way_are_replaced_without_an_error(proxied) -> None:
    _fill_pool()
    assert proxied.cut() >= POOLED
    proxied.restore()
    time.sleep(0.05)  # the drop has reached this process's sockets
    _statements()
    assert proxied.cut_connections >= POOLED


def test_connections_the_server_ended_are_replaced_without_an_error(database, direct_pool) -> None:
    pids = _fill_pool()
    ended = execute(
        database,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = ANY(:pids)",
        pids=pids,
    )
    assert ended == POOLED
    time.sleep(0.05)
    _statements()


def test_control_without_the_socket_check_the_first_statement_fails(
    database, direct_pool, monkeypatch
) -> None:
    monkeypatch.setattr(db, "_readable", lambda dbapi_connection: False)
    pids = _fill_pool()
    execute(
        database,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = ANY(:pids)",
        pids=pids,
    )
    time.sleep(0.05)
    with pytest.raises(sqlalchemy.exc.OperationalError):
        store.load_job(str(uuid.uuid4()))
