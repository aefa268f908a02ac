"""The broker crashes (``kill -9``) while jobs wait in its queues, with no worker running.

The test runs its own ``redis-server`` (AOF on, ``appendfsync always``, a password) on a free
loopback port; submitter and sweeper run in subprocesses pointed at it (this process's Celery app
stays bound to the shared Redis it was imported with). Jobs queued before the crash come back
from the AOF; jobs submitted while Redis is down are accepted (stored in PostgreSQL) and sent by
the sweeper once it is back. None is lost; the password appears in no log.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.faults.helpers import audit
from tests.support.services import REPO, RedisServer, fleet_config
from tierflow.core.settings import redact_url

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PASSWORD = "brokerpw-SECRETSCAN-98765"


def run_tool(env: dict[str, str], *args: str) -> tuple[object, str]:
    done = subprocess.run(
        [sys.executable, "-m", "tests.faults.submitter", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def queued_messages(srv: RedisServer, prefix: str) -> int:
    client = srv.client()
    try:
        total = 0
        for key in client.scan_iter(f"{prefix}:q:*"):
            if client.type(key) == b"list":
                total += int(client.llen(key))
        return total
    finally:
        client.close()


def test_redis_crash_with_aof_loses_no_queued_job(fleet, config_file, database, tmp_path) -> None:
    config = fleet_config()
    config_file(config)  # the submitter subprocesses read TIERFLOW_CONFIG
    prefix = os.environ["TIERFLOW_KEY_PREFIX"]
    with RedisServer(tmp_path / "redis", password=PASSWORD) as srv:
        env = {**os.environ, "TIERFLOW_BROKER_URL": srv.url}
        queued, _ = run_tool(env, "submit", "10", "extract_topic", "Extract topic from: aof")
        before_crash = queued_messages(srv, prefix)
        srv.crash()
        down, submit_log = run_tool(env, "submit", "2", "extract_topic", "Extract topic: down")
        srv.start()  # replays the AOF
        after_restart = queued_messages(srv, prefix)

        (worker,) = fleet(config, workers=1, env={"TIERFLOW_BROKER_URL": srv.url})
        fig = audit(database, "redis kill -9 + AOF restart", queued, timeout=30)
        swept, sweep_log = run_tool(env, "sweep", "0")
        fig_down = audit(database, "submitted while redis down", down, timeout=30)

    fig.faults = {"redis_crashes": 1, "messages_before": before_crash, "after": after_restart}
    fig.report().assert_clean()
    fig_down.faults = {"submits_while_down": len(down)}
    fig_down.notes["sweeper"] = swept
    fig_down.report().assert_clean()
    assert before_crash == after_restart == len(queued)
    assert fig.succeeded == len(queued)
    assert fig_down.succeeded == len(down)
    assert "stays queued for the sweeper" in submit_log
    # the broker password is in no log; the URL prints redacted
    for name, text in (("worker", worker.output()), ("submit", submit_log), ("sweep", sweep_log)):
        assert PASSWORD not in text, f"broker password in the {name} log"
    assert PASSWORD not in redact_url(srv.url) and "***" in redact_url(srv.url)
    assert f"127.0.0.1:{srv.port}" in worker.output()  # the banner names the broker, masked
