"""Guards a test can put on what one job costs PostgreSQL, measured from outside the product.

Both take ``run_one(i)``: one complete job (e.g. ``lambda i: submit_job(p, a).wait(timeout=30)``)
against a fleet that is already running (the suite's ``fleet`` fixture), and the bench/test
database's name (``tests.conftest.DB_NAME``). Neither instruments tierflow's code.

- :func:`commits_per_job` works wherever PostgreSQL does: the ``pg_stat`` commit counter of the
  database over ``n`` sequential jobs. Counts every transaction, read-only ones and SQLAlchemy's
  ``pool_pre_ping`` (an empty statement in an implicit transaction of its own) included. Takes
  about 21 s more than the jobs (two waits for PostgreSQL's 10 s stats flush); run nothing else
  against that database meanwhile.
- :func:`count_statements_per_job` lists every statement in order (``log_statement = 'all'`` and
  the server log). Needs the server log to be readable by the test (root, or the ``adm`` group on
  Debian); returns None where it is not, so a test can ``pytest.skip``.

Example::

    def test_job_costs_at_most(fleet):
        fleet(fleet_config(...))
        one = lambda i: submit_job(f"Extract topic from: 'job {i}'", "extract_topic").wait(30)
        one(-1)  # warm
        assert commits_per_job(DB_NAME, one, n=10) <= 20
        traced = count_statements_per_job(DB_NAME, one, n=2)
        if traced is None:
            pytest.skip("PostgreSQL server log not readable")
        assert max(len(t.statements) for t in traced) <= 44
"""

from __future__ import annotations

import os
from collections.abc import Callable

import psycopg

from tests.bench import counters
from tests.support.services import ADMIN_URL

ADMIN = ADMIN_URL.replace("+psycopg", "")


def commits_per_job(db_name: str, run_one: Callable[[int], None], n: int = 10) -> float:
    """PostgreSQL transactions committed per job over ``n`` sequential jobs (pg_stat delta)."""
    import time

    pg = counters.PgCommits(ADMIN, db_name)
    try:
        time.sleep(counters.PGSTAT_FLUSH_WAIT_S)
        before = pg.read()
        for i in range(n):
            run_one(i)
        time.sleep(counters.PGSTAT_FLUSH_WAIT_S)
        return (pg.read() - before) / n
    finally:
        pg.close()


def count_statements_per_job(
    db_name: str,
    run_one: Callable[[int], None],
    n: int = 2,
    procs: dict[str, int] | None = None,
    warm: int = 2,
) -> list[counters.TracedJob] | None:
    """Every SQL statement (pre-pings, BEGIN and COMMIT included) of each of ``n`` jobs, in order.

    ``procs`` names the processes (name → OS pid) whose connections to attribute; this process is
    always ``client``. Existing connections to the database are terminated so that every pool
    reconnects under ``log_statement = 'all'`` (``warm`` untraced jobs do that). Returns None when
    the server log cannot be read.
    """
    with psycopg.connect(ADMIN, autocommit=True) as admin:
        log_path = counters.server_log_path(admin)
        if log_path is None:
            return None
        counters.enable_statement_log(admin, db_name)
        try:
            for i in range(warm):
                run_one(-1 - i)
            return counters.trace_jobs(
                log_path, admin, db_name, {**(procs or {}), "client": os.getpid()}, run_one, n
            )
        finally:
            counters.disable_statement_log(admin, db_name)
