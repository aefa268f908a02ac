"""The fleet deployed the way the README deploys it: ``tierflow worker --tier NAME`` for the router
and each tier, each its own process, with a config in the seed's own schema (fake providers:
no Ollama or API here). Jobs run end to end, and the sweeper fires with no ``tierflow up``:
once per interval fleet-wide even with two router workers."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from router import submit_job
from schemas.jobs import JobRequest, utcnow
from schemas.tables import Job
from tests.deploy.test_config_at_start import SEED_YAML
from tests.support.services import REPO
from tierflow import store
from tierflow.core.constants import TERMINAL_STATUSES
from tierflow.core.db import session_scope
from tierflow.core.settings import get_settings, reset_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

README_TIERS = ["router", "router", "local_fast", "local_quality", "api_fallback"]


class TierWorker:
    """``tierflow worker --tier NAME``, exactly as the README runs it."""

    def __init__(self, tier: str, env: dict[str, str]) -> None:
        self.log = Path(tempfile.mkdtemp(prefix="tierflow-deploy-")) / f"{tier}.log"
        handle = self.log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tierflow.cli", "worker", "--tier", tier],
            cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        handle.close()

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while " ready." not in self.output():
            assert self.proc.poll() is None, self.output()[-3000:]
            assert time.monotonic() < deadline, self.output()[-3000:]
            time.sleep(0.2)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


@pytest.fixture
def deployed(database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[list]:
    path = tmp_path / "llm_config.yaml"
    path.write_text(SEED_YAML)
    monkeypatch.setenv("TIERFLOW_CONFIG", str(path))
    reset_settings()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    workers = [TierWorker(tier, env) for tier in README_TIERS]
    try:
        for w in workers:
            w.wait_ready()
        yield workers
    finally:
        for w in workers:
            w.stop()
        reset_settings()


def test_readme_topology_runs_seed_schema_jobs_and_sweeps_once_per_interval(deployed) -> None:
    handles = [
        submit_job("Extract topic from: 'Fixed authentication bug in login flow'", "extract_topic"),
        submit_job("ORCHESTRATE: Implement user authentication with tests", "spawn_daemon"),
        submit_job("Summarize these 5 decisions into a coherent note", "write_memory"),
    ]
    results = [h.wait(timeout=60) for h in handles]
    assert [r.status for r in results] == ["succeeded"] * 3, [r.error for r in results]
    assert results[1].tier == "api_fallback"  # the seed's override
    assert all(r.api_baseline_cost_usd >= 0 for r in results)
    assert results[1].api_baseline_cost_usd == pytest.approx(results[1].cost_usd)

    # A job stored but never sent, already past its deadline: only the sweeper can end it.
    request = JobRequest(prompt="never sent", action_type="extract_topic")
    job_id, _ = store.create_job(request, get_settings().job_deadline_s)
    with session_scope() as session:  # as a crash leaves it: late, and on no queue
        session.execute(
            update(Job).where(Job.id == job_id).values(deadline=utcnow() - timedelta(seconds=1))
        )
    deadline = time.monotonic() + 75
    while store.job_status(job_id) not in TERMINAL_STATUSES:
        assert time.monotonic() < deadline, "no sweep ended the late job"
        time.sleep(0.5)
    result = store.job_result(job_id)
    assert result is not None and "deadline exceeded" in (result.error or "")

    routers = [w for w in deployed if w.proc.args[-1] == "router"]
    time.sleep(35)  # at least one more interval
    ran = skipped = 0
    for w in routers:
        for line in re.findall(r"sweep_stuck_jobs\[[^\]]+\] succeeded in [^:]+: (.*)", w.output()):
            if "skipped" in line:
                skipped += 1
            else:
                ran += 1
    # Two beats tick every 30 s: two sweeps are sent per interval, one runs, one is skipped.
    assert ran >= 2 and skipped >= 1, (ran, skipped)
    assert ran <= skipped + 1, (ran, skipped)
