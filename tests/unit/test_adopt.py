"""A fleet `tierflow up` recorded but that is not running is said at once, never waited on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.services import REPO
from tierflow.app.embedded import free_port


def record(state: Path, **fields: object) -> Path:
    state.mkdir(parents=True, exist_ok=True)
    path = state / "fleet.json"
    path.write_text(json.dumps(fields))
    return path


def submit(state: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIERFLOW_")}
    env["TIERFLOW_STATE_DIR"] = str(state)
    return subprocess.run(
        [sys.executable, "-m", "tierflow.cli", "submit", "Is this a fact?", "--action",
         "classify_memory"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("what", ["supervisor", "redis"])
def test_submit_to_a_recorded_dead_fleet_says_so_at_once(tmp_path: Path, what: str) -> None:
    closed = free_port()
    path = record(
        tmp_path,
        TIERFLOW_BROKER_URL=f"redis://127.0.0.1:{closed}/0",
        TIERFLOW_DATABASE_URL=f"postgresql://postgres@127.0.0.1:{closed}/tierflow",
        pid=dead_pid() if what == "supervisor" else os.getpid(),
    )
    started = time.monotonic()
    done = submit(tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "is not running" in done.stderr and "tierflow up" in done.stderr
    expected = "supervisor" if what == "supervisor" else "Redis"
    assert expected in done.stderr
    assert time.monotonic() - started < 20
    assert path.exists() == (what != "supervisor")  # a dead supervisor's record is removed
