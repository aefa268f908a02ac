"""``tierflow up`` supervises: a crashed engine or worker is restarted and jobs run on the local
tier again; a ``kill -9`` of ``tierflow up`` leaves no process behind, embedded servers included.

One fleet (embedded Redis and PostgreSQL, the real engine, every worker) serves the module; the
tests run in file order and the last one kills it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import redis

from tests.support.services import REPO
from tierflow.app.embedded import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@dataclass
class UpProcess:
    proc: subprocess.Popen[bytes]
    state: Path
    out: Path  # tierflow up's own output
    env: dict[str, str]

    @property
    def journal(self) -> str:
        """The supervisor's log: one line per start, exit and ready."""
        return (self.state / "logs" / "supervisor.log").read_text()

    def child_pid(self, name: str) -> int:
        """The pid of the latest start of ``name``, from the journal."""
        return int(re.findall(rf"{re.escape(name)} started.*?, pid (\d+)", self.journal)[-1])

    def submit(self) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "tierflow.cli", "submit", "The capital of France is",
             "--action", "read_file", "--timeout", "300"],
            cwd=REPO, env=self.env, capture_output=True, text=True, timeout=360,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout


def _until(what: Callable[[], bool], timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, message
        time.sleep(0.2)


def _ran_on_the_local_engine(submitted: str) -> bool:
    """The job's first attempt was a real generation by Gemma on local_fast (not skipped)."""
    return any(
        "local_fast" in line and "gemma3-270m" in line and re.search(r"passed|rejected", line)
        for line in submitted.splitlines()
    )


@pytest.fixture(scope="module")
def up() -> Iterator[UpProcess]:
    state = Path(tempfile.mkdtemp(prefix="tf-"))  # short: PostgreSQL's socket path limit
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIERFLOW_")}
    env.update(TIERFLOW_STATE_DIR=str(state), PYTHONUNBUFFERED="1")
    env["TIERFLOW_LOCAL_ENGINE_URL"] = f"http://127.0.0.1:{free_port()}/v1"
    for key in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY"):
        env.pop(key, None)
    out = state.with_name(state.name + ".up.log")
    with out.open("wb") as handle:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tierflow.cli", "up"], cwd=REPO, env=env, stdout=handle,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    fleet = UpProcess(proc, state, out, env)
    try:
        _until(
            lambda: "fleet up" in out.read_text() or proc.poll() is not None,
            300,
            "fleet did not come up",
        )
        assert proc.poll() is None, out.read_text()[-3000:]
        yield fleet
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(90)
        shutil.rmtree(state, ignore_errors=True)
        out.unlink(missing_ok=True)


@pytest.mark.timeout(600)
def test_engine_killed_with_sigsegv_is_restarted_and_serves_again(up: UpProcess) -> None:
    os.kill(up.child_pid("local-engine"), signal.SIGSEGV)
    _until(
        lambda: "local-engine exited with SIGSEGV; restart 1 in 1.0s" in up.journal,
        30,
        "the engine's death was not logged",
    )
    _until(
        lambda: "local-engine ready" in up.journal.split("exited with SIGSEGV", 1)[1],
        120,
        "the engine did not come back",
    )
    assert "local-engine exited with SIGSEGV; restart 1 in 1.0s" in up.out.read_text()
    assert up.proc.poll() is None  # the fleet did not stop for it
    broker = json.loads((up.state / "fleet.json").read_text())["TIERFLOW_BROKER_URL"]
    client = redis.Redis.from_url(broker, decode_responses=True)
    raw = client.get("tierflow:engine:local")
    client.close()
    assert isinstance(raw, str), "the supervisor recorded no engine state"
    recorded = json.loads(raw)
    assert (recorded.get("state"), recorded.get("restarts")) == ("up", 1)
    assert _ran_on_the_local_engine(up.submit())


@pytest.mark.timeout(600)
def test_worker_killed_with_sigkill_is_restarted(up: UpProcess) -> None:
    victim = up.child_pid("worker-local_fast")
    os.kill(victim, signal.SIGKILL)
    _until(
        lambda: "worker-local_fast exited with SIGKILL; restart 1 in 1.0s" in up.journal,
        30,
        "the worker's death was not logged",
    )
    _until(
        lambda: "worker-local_fast ready" in up.journal.split("exited with SIGKILL", 1)[1],
        120,
        "the worker did not come back",
    )
    assert up.child_pid("worker-local_fast") != victim and up.proc.poll() is None
    assert _ran_on_the_local_engine(up.submit())


def _ours(state: Path) -> list[psutil.Process]:
    """Processes that run from or name the fleet's state dir (Redis and PostgreSQL run in it)."""
    found = []
    for process in psutil.process_iter():
        try:
            if str(state) in " ".join(process.cmdline()) or process.cwd().startswith(str(state)):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return [p for p in found if p.pid != os.getpid()]


def _gone(processes: list[psutil.Process]) -> bool:
    def alive(p: psutil.Process) -> bool:
        try:
            return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    return not any(alive(p) for p in processes)


@pytest.mark.timeout(300)
def test_kill_9_of_up_leaves_no_process_behind(up: UpProcess) -> None:
    children = psutil.Process(up.proc.pid).children(recursive=True)
    names = " ".join(" ".join(c.cmdline()) for c in children)
    assert "local-engine" in names and "worker" in names and "beat" in names
    servers = _ours(up.state)
    assert {"redis-server", "postgres"} <= {p.name() for p in servers}  # the embedded ones
    up.proc.kill()
    up.proc.wait(10)
    _until(lambda: _gone(children + servers), 60, "children or servers outlived tierflow up")
    assert not [p for p in _ours(up.state) if p.status() != psutil.STATUS_ZOMBIE]
    # The dead fleet's record is still there: a command that would adopt it says so at once.
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "tierflow.cli", "submit", "Is this a fact?", "--action",
         "classify_memory"],
        cwd=REPO, env=up.env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    assert "is not running" in done.stderr and "tierflow up" in done.stderr, done.stderr
    assert time.monotonic() - started < 15
    assert not [p for p in _ours(up.state) if p.status() != psutil.STATUS_ZOMBIE]
