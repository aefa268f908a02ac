"""The watchdog stops the embedded Redis (a real ``redis-server``) once its supervisor is gone,
and leaves it alone when the supervisor says it stopped the servers itself."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.services import REPO, RedisServer, skip_unless_ci
from tierflow.app.watchdog import watch


@pytest.fixture(autouse=True)
def _redis_server() -> None:
    if not shutil.which("redis-server"):
        skip_unless_ci("needs redis-server")


OWNER = """
import sys, time
from pathlib import Path
from tierflow.app.watchdog import Watchdog
dog = Watchdog(Path(sys.argv[1]))
dog.guard("redis " + sys.argv[2])
print("guarding", flush=True)
time.sleep(120)
"""


def test_done_means_hands_off(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "redis") as server:
        assert server.proc is not None
        watch(io.StringIO(f"redis {server.proc.pid}\ndone\n"))
        assert server.ping()


def test_end_of_input_stops_a_registered_redis(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis").start()
    assert server.proc is not None
    watch(io.StringIO(f"redis {server.proc.pid}\npostgres {tmp_path / 'no-pg'}\n"))
    assert server.proc.wait(20) == 0  # SIGTERM: Redis shuts down cleanly


def test_a_supervisor_killed_with_sigkill_takes_its_redis_along(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis").start()
    assert server.proc is not None
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, str(tmp_path / "watchdog.log"), str(server.proc.pid)],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert owner.stdout is not None and owner.stdout.readline().strip() == "guarding"
        owner.kill()
        owner.wait(10)
        assert server.proc.wait(20) == 0
        assert "outlived the supervisor" in (tmp_path / "watchdog.log").read_text()
    finally:
        owner.kill()
        server.stop()
