"""A process's pooled PostgreSQL connections, ended by the server or dropped on the way, cost its
next statements no error: the pool finds them dead when it hands them out and connects again.
Both pools: the engine's (sessions) and the statement pool (one-statement transactions,
:mod:`tierflow.core.connections`), which is also bounded, and keeps a connection an ordinary
statement error left healthy.

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
from contextlib import ExitStack

import pytest
import sqlalchemy.exc

from tests.faults.helpers import execute
from tests.support.services import PG_HOST, PG_PORT
from tests.support.tcp_proxy import TcpProxy
from tierflow import store
from tierflow.core import connections, db
from tierflow.core.connections import statement_pool
from tierflow.core.settings import get_settings, reset_settings
from tierflow.store import rows

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


def _fill_pools() -> list[int]:
    """Check out POOLED connections at once from each of the process's pools (the engine's, for
    sessions, and the statement pool, for one-statement transactions) and give them back: the
    pools keep them idle. Returns their backends' pids."""
    pids = []
    fairies = [db.get_engine().raw_connection() for _ in range(POOLED)]
    for fairy in fairies:
        cursor = fairy.cursor()
        cursor.execute("SELECT pg_backend_pid()")
        pids.append(int(cursor.fetchone()[0]))
        cursor.close()
        fairy.commit()
        fairy.close()
    pool = statement_pool(get_settings().sqlalchemy_url)
    with ExitStack() as stack:
        for _ in range(POOLED):
            conn = stack.enter_context(pool.connection())
            pids.append(int(conn.execute("SELECT pg_backend_pid()").fetchone()[0]))
    assert len(set(pids)) == 2 * POOLED
    return pids


def _statements(count: int = 2 * POOLED) -> None:
    """Reads through both paths the fleet uses: one-statement reads and ORM sessions."""
    for _ in range(count):
        assert store.load_job(str(uuid.uuid4())) is None
        with db.session_scope() as session:
            assert session.execute(sqlalchemy.text("SELECT 1")).scalar_one() == 1


def test_connections_dropped_on_the_way_are_replaced_without_an_error(proxied) -> None:
    _fill_pools()
    assert proxied.cut() >= 2 * POOLED
    proxied.restore()
    time.sleep(0.05)  # the drop has reached this process's sockets
    _statements()
    assert proxied.cut_connections >= 2 * POOLED


def test_connections_the_server_ended_are_replaced_without_an_error(database, direct_pool) -> None:
    pids = _fill_pools()
    ended = execute(
        database,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = ANY(:pids)",
        pids=pids,
    )
    assert ended == 2 * POOLED
    time.sleep(0.05)
    _statements()


def test_control_without_the_socket_check_the_first_statement_fails(
    database, direct_pool, monkeypatch
) -> None:
    monkeypatch.setattr(connections, "readable", lambda dbapi_connection: False)
    pids = _fill_pools()
    execute(
        database,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = ANY(:pids)",
        pids=pids,
    )
    time.sleep(0.05)
    with pytest.raises(sqlalchemy.exc.OperationalError):
        store.load_job(str(uuid.uuid4()))


def test_the_statement_pool_is_bounded_and_a_caller_waits_then_hears_why(
    database, monkeypatch
) -> None:
    monkeypatch.setattr(connections, "CHECKOUT_TIMEOUT_S", 0.3)
    pool = connections.StatementPool(database, max_size=2)
    try:
        with pool.connection(), pool.connection():
            began = time.monotonic()
            with (
                pytest.raises(sqlalchemy.exc.TimeoutError, match="all 2 statement connections"),
                pool.connection(),
            ):
                pass
            assert time.monotonic() - began >= 0.3
        with pool.connection() as conn:  # given back: usable again
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        pool.close()


def test_an_ordinary_statement_error_keeps_the_connection(database, direct_pool) -> None:
    bad = rows.statement("SELECT 1 / (:zero)::int")
    pid = rows.statement("SELECT pg_backend_pid()")
    before = rows.run_one(pid, {})
    with pytest.raises(sqlalchemy.exc.DataError):
        rows.run_one(bad, {"zero": 0})
    assert rows.run_one(pid, {}) == before  # the same backend: not discarded, not broken


def test_a_forked_child_opens_its_own_and_leaves_the_parents_alone(database) -> None:
    pool = connections.StatementPool(database, max_size=2)
    try:
        with pool.connection() as conn:
            parent_pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        child = os.fork()
        if child == 0:  # the child: a statement of its own, then gone (collecting everything)
            code = 1
            try:
                with pool.connection() as conn:
                    mine = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
                code = 0 if mine != parent_pid else 2
                pool.close()
                import gc

                gc.collect()
            finally:
                os._exit(code)
        _, status = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        with pool.connection() as conn:  # the parent's session was not ended by the child
            assert conn.execute("SELECT pg_backend_pid()").fetchone()[0] == parent_pid
    finally:
        pool.close()
