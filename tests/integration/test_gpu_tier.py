"""The GPU tier against simulated vLLM servers (tests/support/sim_vllm.py, no model runs): real
worker processes, real HTTP, counts read from the servers' /metrics."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from router import submit_job
from router.client import JobHandle
from tests.support.services import fake_model, fleet_config
from tests.support.sim_vllm import SimVLLMProcess
from tierflow import store
from tierflow.app.embedded import free_port
from tierflow.core.constants import tier_queue
from workers.pools import POOLS

pytestmark = [pytest.mark.integration, pytest.mark.slow]

QUALITY = POOLS["local_quality"]
ROUTING = {
    "action_tier_overrides": {"summarize": "local_quality"},
    "auto_cloud_after_s": None,
}


def sim_node(name: str, srv: SimVLLMProcess, cap: int, **extra: Any) -> dict[str, Any]:
    return {
        "name": name, "provider": "vllm", "model_id": "simulated-llama-70b",
        "base_url": srv.url, "max_tokens": 512, "timeout_s": 120,
        "input_cost_per_million": 1.0, "output_cost_per_million": 2.0,
        "limits": {"max_concurrency": cap}, **extra,
    }  # fmt: skip


@pytest.fixture
def sims(request: pytest.FixtureRequest) -> Iterator[list[SimVLLMProcess]]:
    started: list[SimVLLMProcess] = []

    def start(*args: str) -> SimVLLMProcess:
        srv = SimVLLMProcess(free_port(), *args).start().wait_listening().wait_healthy()
        started.append(srv)
        return srv

    request.node.start_sim = start  # type: ignore[attr-defined]
    yield started
    for srv in started:
        srv.stop()


def start_fleet(fleet, config: dict[str, Any], concurrency: int = QUALITY.concurrency) -> list:
    router = fleet(config, queues="router,maintenance", concurrency=8)
    return router + fleet(
        config,
        queues=tier_queue("local_quality"),
        concurrency=concurrency,
        extra_args=["--prefetch-multiplier", str(QUALITY.prefetch)],
    )


def submit(n: int) -> list[JobHandle]:
    return [submit_job(f"Summarize item {i} of the simulated run.", "summarize") for i in range(n)]


def test_one_worker_keeps_over_512_in_flight(fleet, request) -> None:
    srv = SimVLLMProcess(free_port(), "--max-num-seqs", "1024", "--output-tokens", "400",
                         "--tokens-per-s", "20")  # fmt: skip
    with srv:
        srv.wait_healthy()
        config = fleet_config(local_quality=[sim_node("sim70b", srv, 1024)], **ROUTING)
        workers = start_fleet(fleet, config)
        handles = submit(600)
        peak = 0.0
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            m = srv.metrics()
            peak = max(peak, m["vllm:num_requests_running"])
            if m["sim_vllm_requests_completed_total"] >= 600:
                break
            time.sleep(0.5)
        try:
            results = [h.wait(timeout=60) for h in handles]
        except Exception:
            for w in workers:
                print(w.log, w.output()[-6000:])
            raise
        assert [r.status for r in results].count("succeeded") == 600
        assert srv.metrics()["sim_vllm_peak_requests_running"] >= 512, peak
        assert peak >= 512
