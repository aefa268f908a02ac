"""PostgreSQL becomes unreachable for the workers while they finish jobs.

The machine's PostgreSQL is left alone: the workers reach it through a TCP proxy
(:class:`tests.support.tcp_proxy.TcpProxy`) that drops every open connection and refuses new
ones for a few seconds, twice, while jobs are in flight and while more are being routed. The
tasks retry on ``OperationalError`` (with backoff); a retried attempt is re-claimed by the same
delivery at once (it does not wait out its own lease). Every job is stored exactly once.
The test process reads and submits straight to PostgreSQL, not through the proxy.
"""

from __future__ import annotations

import os
import time

import pytest

from router import submit_job
from tests.faults.helpers import attempts, audit, describe_unfinished, rows
from tests.support.services import PG_HOST, PG_PORT, fake_model, fleet_config
from tests.support.tcp_proxy import TcpProxy
from tierflow.core.settings import reset_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_postgres_cut_twice_mid_run_loses_nothing(fleet, database, monkeypatch) -> None:
    config = fleet_config(
        local_fast=[
            fake_model(
                "fake-fast",
                latency_ms=1200,
                input_cost_per_million=1.0,
                output_cost_per_million=2.0,
            )
        ]
    )
    direct = os.environ["TIERFLOW_DATABASE_URL"]
    with TcpProxy(PG_HOST, PG_PORT) as proxy:
        proxied = direct.replace(f"{PG_HOST}:{PG_PORT}/", f"127.0.0.1:{proxy.port}/")
        assert proxied != direct
        workers = fleet(config, workers=2, env={"TIERFLOW_DATABASE_URL": proxied}, concurrency=3)
        monkeypatch.setenv("TIERFLOW_DATABASE_URL", direct)  # this process goes direct
        reset_settings()

        jobs = [
            submit_job(f"Extract topic from: 'pg outage {i}'", "extract_topic").job_id
            for i in range(10)
        ]
        outages = []
        for round_no in range(2):
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and not rows(
                database, "SELECT 1 FROM attempts WHERE status = 'running' LIMIT 1"
            ):
                time.sleep(0.05)
            in_flight = len(rows(database, "SELECT id FROM attempts WHERE status = 'running'"))
            proxy.cut()
            # jobs submitted during the outage must be routed once it is over
            jobs += [
                submit_job(
                    f"Extract topic from: 'during outage {round_no}.{i}'", "extract_topic"
                ).job_id
                for i in range(3)
            ]
            time.sleep(4)
            proxy.restore()
            outages.append(in_flight)
            time.sleep(1.5)

        fig = audit(database, "postgres cut x2 (4 s each)", jobs, timeout=90)
        story = attempts(database, jobs)
    fig.faults = {
        "outages": 2,
        "attempts_in_flight_at_cuts": sum(outages),
        "connections_dropped": proxy.cut_connections,
        "connections_refused": proxy.refused,
    }
    worker_logs = "".join(w.output() for w in workers)
    fig.notes["task_retries_logged"] = worker_logs.count("Retry in")
    fig.report()
    assert fig.lost == 0, describe_unfinished(database, jobs, worker_logs)
    fig.assert_clean()
    assert fig.succeeded == len(jobs), fig.line()
    assert proxy.cut_connections + proxy.refused > 0
    assert all(a["status"] == "passed" for a in story)  # no attempt was lost half-written
    assert len(story) == len(jobs)
