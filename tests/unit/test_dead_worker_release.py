"""``tierflow up`` acts on a worker child's death before restarting it: the supervisor's exit
event names the dead process, and the fleet releases exactly that process's leases."""

from __future__ import annotations

import signal
import socket
import sys
import time
from pathlib import Path

import pytest

from tierflow.app import fleet
from tierflow.app.supervisor import Backoff, Event, Supervisor

SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]


def test_the_exit_event_names_the_dead_process_before_its_restart(tmp_path: Path) -> None:
    seen: list[tuple[Event, bool]] = []
    sup: Supervisor

    def on_event(event: Event) -> None:  # runs on the supervisor thread
        seen.append((event, sup.child("worker-x").running))

    sup = Supervisor(tmp_path, backoff=Backoff(0.1, 0.1), on_event=on_event, tick_s=0.05)
    sup.start()
    try:
        child = sup.add("worker-x", SLEEPER)
        pid = child.pid
        assert pid is not None
        child.proc.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
        deadline = time.monotonic() + 10
        while sup.restarts("worker-x") < 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        sup.stop(5)
    exited = [(e, running) for e, running in seen if e.kind == "exited"]
    assert exited and exited[0][0].pid == pid
    assert exited[0][1] is False  # no new process yet when the handler ran
    assert child.pid != pid  # restarted since, as another process


def test_the_fleet_releases_that_process_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    prefixes: list[str] = []
    monkeypatch.setattr(fleet, "release_dead_worker", lambda p: prefixes.append(p) or ["j"])
    host = socket.gethostname()
    died = Event("exited", "worker-local_fast", "m", "SIGKILL", 1, 1.0, pid=4321)
    assert fleet.release_dead_worker_leases(died) == ["j"]
    assert prefixes == [f"local_fast@{host}/4321."]
    for other in (
        Event("exited", "beat", "m", "SIGKILL", 1, 1.0, pid=1),  # not a worker
        Event("started", "worker-local_fast", "m", pid=4321),
        Event("exited", "worker-local_fast", "m", "could not start", 1, 1.0),  # no process
    ):
        assert fleet.release_dead_worker_leases(other) == []
    assert len(prefixes) == 1


def test_a_database_away_leaves_it_to_the_lease(monkeypatch: pytest.MonkeyPatch) -> None:
    def away(prefix: str) -> list[str]:
        raise OSError("connection refused")

    monkeypatch.setattr(fleet, "release_dead_worker", away)
    died = Event("exited", "worker-router", "m", "SIGKILL", 1, 1.0, pid=7)
    assert fleet.release_dead_worker_leases(died) == []  # logged; the sweeper re-sends later
