"""The front door: ``tierflow up`` on the embedded default, ``submit`` from another process,
Ctrl-C stops everything."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from tests.support.services import REPO
from tierflow.app.embedded import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _env(state_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIERFLOW_")}
    env.update(TIERFLOW_STATE_DIR=str(state_dir), PYTHONUNBUFFERED="1")
    for key in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY"):
        env.pop(key, None)
    return env


@pytest.mark.timeout(900)  # starts two servers, the engine and four workers on a 2-core machine
def test_up_submit_and_ctrl_c_on_embedded_services(tmp_path: Path) -> None:
    # A short state dir: PostgreSQL's socket path must stay under ~100 characters.
    state = Path(tempfile.mkdtemp(prefix="tf-"))
    env = _env(state)
    env["TIERFLOW_LOCAL_ENGINE_URL"] = f"http://127.0.0.1:{free_port()}/v1"
    log = (tmp_path / "up.log").open("w+")
    up = subprocess.Popen(
        [sys.executable, "-m", "tierflow.cli", "up"], cwd=REPO, env=env, stdout=log,
        stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while "fleet up" not in Path(log.name).read_text():
            assert up.poll() is None, Path(log.name).read_text()[-3000:]
            assert time.monotonic() < deadline, "fleet did not come up"
            time.sleep(0.5)
        children = psutil.Process(up.pid).children(recursive=True)
        assert len(children) >= 5  # engine, router, three tiers (plus the embedded servers)
        submitted = subprocess.run(
            [sys.executable, "-m", "tierflow.cli", "submit", "The capital of France is",
             "--action", "read_file", "--timeout", "400"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=450,
        )  # fmt: skip
        assert submitted.returncode == 0, submitted.stdout + submitted.stderr
        # The real embedded model ran the first attempt, on the tier the router chose.
        assert "local_fast" in submitted.stdout and "gemma3-270m" in submitted.stdout
        assert "succeeded" in submitted.stdout or "rejected" in submitted.stdout
        bad = subprocess.run(
            [sys.executable, "-m", "tierflow.cli", "submit", "   ", "--action", "Bad Action"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert bad.returncode == 2
        assert "action_type" in bad.stderr and "Traceback" not in bad.stderr
    finally:
        os.killpg(up.pid, signal.SIGINT)
        up.wait(60)
    assert "fleet stopped" in Path(log.name).read_text()
    for child in children:
        assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE, child.cmdline()
    shutil.rmtree(state, ignore_errors=True)
