"""``tierflow up`` with the engine's options set where users set them, on the engine-served
models: ``options: {slots: 2, extra_buffers: off}`` reach the engine (its start-up line says
them), the models' ``max_concurrency`` follows the slots, and a job answers."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.support.services import REPO, fake_model
from tierflow.app.embedded import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

OPTIONS = {"slots": 2, "extra_buffers": "off"}


def _config(engine_url: str) -> dict[str, Any]:
    def gemma(name: str) -> dict[str, Any]:
        return {"name": name, "provider": "openai_compatible", "model_id": "gemma-3-270m",
                "base_url": engine_url, "max_tokens": 24, "timeout_s": 60,
                "supports_json": False, "options": dict(OPTIONS)}  # fmt: skip

    api = fake_model("fake-api", input_cost_per_million=3.0, output_cost_per_million=15.0)
    return {
        "tiers": {"local_fast": {"models": [gemma("gemma-fast")]},
                  "local_quality": {"models": [gemma("gemma-quality")]},
                  "api_fallback": {"models": [api]}},
        "routing": {"baseline_model": "fake-api", "self_critique": False},
    }  # fmt: skip


@pytest.fixture
def up(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    """``tierflow up`` on embedded services with the config above; Ctrl-C at the end."""
    state = Path(tempfile.mkdtemp(prefix="tf-"))  # short: PostgreSQL's socket path
    engine_url = f"http://127.0.0.1:{free_port()}/v1"
    config = tmp_path / "llm_config.yaml"
    config.write_text(json.dumps(_config(engine_url)))  # JSON is YAML
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIERFLOW_")}
    env.update(TIERFLOW_STATE_DIR=str(state), TIERFLOW_CONFIG=str(config),
               TIERFLOW_LOCAL_ENGINE_URL=engine_url, PYTHONUNBUFFERED="1")  # fmt: skip
    log = tmp_path / "up.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tierflow.cli", "up"], cwd=REPO, env=env, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while "fleet up" not in log.read_text():
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "fleet did not come up: " + log.read_text()[-3000:]
            time.sleep(0.3)
        yield state, env
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(60)
        shutil.rmtree(state, ignore_errors=True)


def _slots_held(state: Path, model: str, stop: threading.Event, seen: list[int]) -> None:
    """Poll the fleet's in-flight slots of ``model`` (a zset per capped model) until ``stop``."""
    broker = json.loads((state / "fleet.json").read_text())["TIERFLOW_BROKER_URL"]
    client = redis.Redis.from_url(broker)
    while not stop.is_set():
        seen.append(int(client.zcard(f"tierflow:inflight:{model}")))
        time.sleep(0.01)


@pytest.mark.timeout(400)
def test_engine_options_reach_the_engine_and_the_caps_through_tierflow_up(up) -> None:
    state, env = up
    engine_log = (state / "logs" / "local-engine.log").read_text()
    started = [line for line in engine_log.splitlines() if "serving gemma" in line]
    assert started, engine_log[-2000:]
    assert "; 2 slots x " in started[-1] and "extra buffers off: " in started[-1], started[-1]

    # The limit every worker of this fleet reads: the same settings, the same environment.
    caps = subprocess.run(
        [sys.executable, "-c", "from tierflow.core.settings import get_settings as g; "
         "print([m.limits.max_concurrency for t in g().llm.tiers.values() for m in t.models])"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert caps.stdout.strip() == "[2, 2, None]", caps.stdout + caps.stderr

    seen: list[int] = []
    stop = threading.Event()
    watcher = threading.Thread(target=_slots_held, args=(state, "gemma-fast", stop, seen))
    watcher.start()
    try:
        submitted = subprocess.run(
            [sys.executable, "-m", "tierflow.cli", "submit", "The capital of France is",
             "--action", "read_file", "--timeout", "120"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=180,
        )  # fmt: skip
    finally:
        stop.set()
        watcher.join(10)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    assert "local_fast" in submitted.stdout and "gemma-fast" in submitted.stdout
    # The worker held one of the model's capped slots while it called the engine (a model with
    # no max_concurrency holds none), and never more than the engine's 2.
    assert max(seen) >= 1 and max(seen) <= 2, sorted(set(seen))
