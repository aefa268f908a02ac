"""``tierflow autoscale``'s loop with its default launcher (local ``celery worker`` processes)
against a simulated vLLM server: it starts workers when the tier's queue grows and stops them
with a warm shutdown, only once the work they hold has drained."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

import pytest

from router import submit_job
from tests.support.services import fleet_config
from tests.support.sim_vllm import SimVLLMProcess
from tierflow import store
from tierflow.app.embedded import free_port
from tierflow.core.redis_client import get_keys, get_redis
from tierflow.core.settings import get_settings
from workers.autoscale import Autoscaler, LocalProcessLauncher
from workers.limits import FleetLimits

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def sim() -> Iterator[SimVLLMProcess]:
    srv = SimVLLMProcess(free_port(), "--max-num-seqs", "256", "--output-tokens", "60",
                         "--tokens-per-s", "20")  # fmt: skip
    with srv:
        srv.wait_healthy()
        yield srv


def test_autoscaler_starts_on_queue_growth_and_stops_only_drained(fleet, sim, tmp_path) -> None:
    node = {
        "name": "sim-node", "provider": "vllm", "model_id": "simulated-llama-70b",
        "base_url": sim.url, "max_tokens": 128, "timeout_s": 60,
        "limits": {"max_concurrency": 256},
    }  # fmt: skip
    config = fleet_config(
        local_quality=[node],
        action_tier_overrides={"summarize": "local_quality"},
        auto_cloud_after_s=None,
    )
    fleet(config, queues="router,maintenance", concurrency=8)  # routes; no tier worker yet
    launcher = LocalProcessLauncher(
        "local_quality", env={**os.environ, "PYTHONUNBUFFERED": "1"}, concurrency=40,
        log_dir=tmp_path,
    )  # fmt: skip
    scaler = Autoscaler(
        "local_quality", launcher, per_worker=40, min_workers=0, max_workers=2, cooldown_s=3,
        config=get_settings().llm, limits=FleetLimits(get_redis(), get_keys()),
    )  # fmt: skip
    stop = threading.Event()
    loop = threading.Thread(target=scaler.run, args=(0.3, stop.is_set), daemon=True)
    loop.start()
    try:
        time.sleep(2)
        assert scaler.events == []  # nothing queued: nothing started
        handles = [submit_job(f"Summarize note {i}.", "summarize") for i in range(70)]
        results = [h.wait(timeout=120) for h in handles]
        assert all(r.status == "succeeded" for r in results), [r.error for r in results]
        deadline = time.monotonic() + 60
        while scaler.active or scaler.draining:
            assert time.monotonic() < deadline, [(e.action, e.handle) for e in scaler.events]
            time.sleep(0.3)
    finally:
        stop.set()
        loop.join(10)
        scaler.drain_all(timeout_s=30)
    started = [e for e in scaler.events if e.action == "start"]
    drained = [e for e in scaler.events if e.action == "drain"]
    exited = [e for e in scaler.events if e.action == "exited"]
    assert 1 <= len(started) <= 2 and started[0].load.queued > 0
    assert {e.handle for e in drained} == {e.handle for e in started} == {e.handle for e in exited}
    # the last worker is drained only once nothing is reserved or in flight; every worker
    # exits by itself (warm shutdown, exit status 0), none is killed
    assert drained[-1].load.reserved == 0 and drained[-1].load.in_flight == 0
    assert all(launcher.returncode(e.handle) == 0 for e in started)
    # nothing was cut off and redone: one attempt and one server call per job
    assert all(len(store.attempts_of(h.job_id)) == 1 for h in handles)
    metrics = sim.metrics()
    assert metrics["sim_vllm_requests_received_total"] == 70
    assert metrics["sim_vllm_requests_completed_total"] == 70
