"""Connections for one-statement transactions: a small pool of psycopg connections kept in
autocommit, beside the engine's (:mod:`tierflow.core.db`), for :func:`tierflow.store.rows.run_one`.

The fleet's hot path is a handful of single statements per job, each its own transaction. Through
SQLAlchemy's pool each paid about 60 µs of CPU around the statement (checkout and checkin events,
reset on return, autocommit switched on and off again). Here a checkout is a pop from a stack
under a lock, and a connection stays in autocommit for life.

Promises, the same as the engine's:

- bounded: at most :data:`MAX_SIZE` connections per database per process; a caller finding all
  of them in use waits up to :data:`CHECKOUT_TIMEOUT_S` seconds, then gets
  ``sqlalchemy.exc.TimeoutError`` (an infrastructure error: the tasks retry it);
- every statement bounded (60 s) and connecting too (10 s), as :data:`CONNECT_ARGS` say;
- a pooled connection is checked before it is handed out (:func:`may_be_dead`): one the server
  ended, or dropped on the way, is replaced without an error;
- a connection whose statement failed on the connection itself is discarded, never reused;
- after a fork the child opens its own and never touches the parent's (closing one would end
  the parent's session: they share the socket).
"""

from __future__ import annotations

import os
import select
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import psycopg
import sqlalchemy.exc
from sqlalchemy.engine import make_url
from sqlalchemy.engine.default import DefaultDialect

MAX_SIZE = 20
CHECKOUT_TIMEOUT_S = 30.0
IDLE_PING_S = 1.0  # a pooled connection idle longer than this is pinged before it is used
CONNECT_ARGS: dict[str, Any] = {"connect_timeout": 10, "options": "-c statement_timeout=60000"}


def readable(dbapi_connection: Any) -> bool:
    """Whether the server sent this idle connection anything (or closed it): no wait. An idle
    connection is sent nothing unless its server ends it (the goodbye of a shutdown or of a
    terminated backend, or the end of the stream when the server died)."""
    try:
        poller = select.poll()
        poller.register(dbapi_connection.fileno(), select.POLLIN | select.POLLERR)
        return bool(poller.poll(0))
    except Exception:  # no socket any more (closed): certainly not usable
        return True


def may_be_dead(dbapi_connection: Any, idle_since: float | None) -> bool:
    """Whether a pooled connection must be pinged before use: its socket is readable, or it
    was idle longer than :data:`IDLE_PING_S` (``idle_since``: ``time.monotonic()`` when it
    was given back; None: connected for this checkout, nothing to check)."""
    if idle_since is None:
        return False
    return time.monotonic() - idle_since > IDLE_PING_S or readable(dbapi_connection)


def ping(dbapi_connection: Any) -> bool:
    """``SELECT 1`` on the connection, leaving no transaction open; False when it failed."""
    try:
        cursor = dbapi_connection.cursor()
        cursor.execute("SELECT 1")
        cursor.close()
        dbapi_connection.rollback()
    except Exception:
        return False
    return True


class StatementPool:
    """Autocommit psycopg connections to one database (see the module)."""

    def __init__(self, url: str, max_size: int = MAX_SIZE) -> None:
        sa_url = make_url(url)
        dialect = sa_url.get_dialect()()
        assert isinstance(dialect, DefaultDialect)
        args, params = dialect.create_connect_args(sa_url)
        self._args = tuple(args)
        self._params = {**params, **CONNECT_ARGS}
        self.max_size = max_size
        self._idle: list[tuple[psycopg.Connection[Any], float]] = []  # LIFO: the warmest last
        self._open = 0
        self._lock = threading.Lock()
        self._freed = threading.Condition(self._lock)
        self._pid = os.getpid()
        self._closed = False

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A connection in autocommit for one statement; a connection-level error on it (the
        driver's ``OperationalError``, or the connection found closed) discards it."""
        conn = self._checkout()
        try:
            yield conn
        except psycopg.Error as exc:
            if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError) or conn.closed:
                self._discard(conn)
            else:
                self._checkin(conn)
            raise
        except BaseException:
            self._discard(conn)  # interrupted mid-statement: its state is unknown
            raise
        else:
            self._checkin(conn)

    def _checkout(self) -> psycopg.Connection[Any]:
        if os.getpid() != self._pid:
            self._after_fork()
        deadline = time.monotonic() + CHECKOUT_TIMEOUT_S
        while True:
            with self._lock:
                while not self._idle and self._open >= self.max_size:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise sqlalchemy.exc.TimeoutError(
                            f"all {self.max_size} statement connections in use for "
                            f"{CHECKOUT_TIMEOUT_S:.0f}s"
                        )
                    self._freed.wait(left)
                if self._idle:
                    conn, idle_since = self._idle.pop()
                else:
                    self._open += 1
                    conn, idle_since = None, None
            if conn is None:
                return self._connect()
            if not may_be_dead(conn, idle_since) or ping(conn):
                return conn
            self._discard(conn)  # dead: try the next one, or a new one

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(*self._args, autocommit=True, **self._params)
        except BaseException:
            with self._lock:
                self._open -= 1
                self._freed.notify()
            raise

    def _checkin(self, conn: psycopg.Connection[Any]) -> None:
        idle = psycopg.pq.TransactionStatus.IDLE
        if self._closed or conn.closed or conn.info.transaction_status != idle:
            self._discard(conn)
            return
        with self._lock:
            self._idle.append((conn, time.monotonic()))
            self._freed.notify()

    def _discard(self, conn: psycopg.Connection[Any]) -> None:
        with suppress(Exception):  # closing a broken connection may fail; it is gone either way
            conn.close()
        with self._lock:
            self._open -= 1
            self._freed.notify()

    def _after_fork(self) -> None:
        # The parent's connections are forgotten, not closed: they share their sockets with the
        # parent, and psycopg ends a connection only in the process that opened it.
        with self._lock:
            self._idle, self._open, self._pid = [], 0, os.getpid()

    def close(self) -> None:
        """Close every idle connection (those in use are closed when they come back)."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
            self._open -= len(idle)
        for conn, _ in idle:
            with suppress(Exception):
                conn.close()


_pools: dict[str, StatementPool] = {}
_pools_lock = threading.Lock()


def statement_pool(url: str) -> StatementPool:
    """One :class:`StatementPool` per database URL per process."""
    pool = _pools.get(url)
    if pool is None:
        with _pools_lock:
            pool = _pools.get(url)
            if pool is None:
                pool = _pools[url] = StatementPool(url)
    return pool


def reset_statement_pools() -> None:
    """Close and forget every pool (tests pointing at another database; see
    :func:`tierflow.core.db.reset_engines`)."""
    with _pools_lock:
        pools = list(_pools.values())
        _pools.clear()
    for pool in pools:
        pool.close()
