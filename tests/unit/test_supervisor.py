"""The supervisor on tiny real children: restarts with backoff, readiness, warm stop, and children
that die with their supervisor (``prctl(PR_SET_PDEATHSIG)``), even after its ``kill -9``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from tierflow.app import deathsig
from tierflow.app.supervisor import Backoff, Event, Supervisor, describe_exit

SLEEPER = [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(120)"]
FAST = Backoff(first_s=0.1, max_s=0.4, reset_after_s=60.0)


def _until(what: Callable[[], bool], timeout: float = 15.0, message: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, message or "condition not met in time"
        time.sleep(0.05)


@pytest.fixture
def events() -> list[Event]:
    return []


@pytest.fixture
def supervisor(tmp_path: Path, events: list[Event]) -> Iterator[Supervisor]:
    sup = Supervisor(tmp_path / "logs", backoff=FAST, on_event=events.append, tick_s=0.05)
    sup.start()
    yield sup
    sup.stop(timeout=5)


def test_backoff_doubles_to_its_ceiling() -> None:
    backoff = Backoff()
    assert [backoff.delay(n) for n in range(1, 8)] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


def test_exit_descriptions() -> None:
    assert describe_exit(-signal.SIGSEGV) == "SIGSEGV"
    assert describe_exit(-signal.SIGKILL) == "SIGKILL"
    assert describe_exit(3) == "exit code 3"


def test_a_killed_child_is_restarted_with_growing_delays(
    supervisor: Supervisor, events: list[Event]
) -> None:
    child = supervisor.add("worker-x", SLEEPER, ready_marker="up")
    supervisor.wait_ready(["worker-x"], 15)
    for restart in (1, 2, 3):
        pid = child.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        _until(lambda pid=pid: child.pid not in (None, pid) and child.ready)  # type: ignore[misc]
        assert supervisor.restarts("worker-x") == restart
    exits = [e.message for e in events if e.kind == "exited"]
    assert exits == [
        "worker-x exited with SIGKILL; restart 1 in 0.1s",
        "worker-x exited with SIGKILL; restart 2 in 0.2s",
        "worker-x exited with SIGKILL; restart 3 in 0.4s",
    ]
    journal = (supervisor.log_dir / "supervisor.log").read_text()
    assert "worker-x exited with SIGKILL; restart 3 in 0.4s" in journal
    assert [e.restarts for e in events if e.kind == "ready"] == [0, 1, 2, 3]


def test_a_child_that_keeps_dying_is_never_given_up(
    supervisor: Supervisor, events: list[Event]
) -> None:
    supervisor.add("flaky", [sys.executable, "-c", "import sys; sys.exit(7)"])
    _until(lambda: supervisor.restarts("flaky") >= 5, timeout=20)
    delays = [e.delay_s for e in events if e.kind == "exited"][:5]
    assert delays == [0.1, 0.2, 0.4, 0.4, 0.4]  # capped, never stopped
    assert all(e.exit == "exit code 7" for e in events if e.kind == "exited")


def test_a_child_that_stayed_up_starts_its_backoff_again(tmp_path: Path) -> None:
    events: list[Event] = []
    backoff = Backoff(first_s=0.1, max_s=5.0, reset_after_s=0.5)
    sup = Supervisor(tmp_path, backoff=backoff, on_event=events.append, tick_s=0.05)
    sup.start()
    try:
        script = "import time; time.sleep(0.8); raise SystemExit(1)"  # up longer than 0.5 s
        sup.add("steady", [sys.executable, "-c", script])
        _until(lambda: sum(e.kind == "exited" for e in events) >= 3, timeout=20)
    finally:
        sup.stop(timeout=5)
    assert [e.delay_s for e in events if e.kind == "exited"][:3] == [0.1, 0.1, 0.1]


def test_readiness_counts_only_output_since_the_latest_start(supervisor: Supervisor) -> None:
    script = textwrap.dedent(
        """
        import pathlib, sys, time
        flag = pathlib.Path(sys.argv[1])
        if flag.exists():
            time.sleep(120)  # the restart: never says it is ready
        flag.touch()
        print(" ready.", flush=True)
        time.sleep(120)
        """
    )
    flag = supervisor.log_dir / "started-once"
    child = supervisor.add("w", [sys.executable, "-c", script, str(flag)], ready_marker=" ready.")
    supervisor.wait_ready(["w"], 15)
    assert child.pid is not None
    os.kill(child.pid, signal.SIGTERM)
    _until(lambda: supervisor.restarts("w") == 1 and child.running)
    time.sleep(0.5)
    assert not child.ready  # the old " ready." in the log does not count


def test_wait_ready_fails_for_a_child_that_cannot_start(supervisor: Supervisor) -> None:
    broken = [sys.executable, "-c", "raise SystemExit('bad config')"]
    supervisor.add("broken", broken, ready_marker=" ready.")
    with pytest.raises(Exception, match=r"broken exited with exit code 1 before it was ready"):
        supervisor.wait_ready(["broken"], 15)


def test_stop_is_warm_then_firm_and_in_order(tmp_path: Path) -> None:
    order = tmp_path / "order"
    polite = (
        "import signal, sys, time\n"
        "def bye(*_):\n"
        f"    open({str(order)!r}, 'a').write(sys.argv[1] + '\\n'); sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, bye)\n"
        "print('up', flush=True)\n"
        "time.sleep(120)\n"
    )
    stubborn = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('up', flush=True); time.sleep(120)"
    )
    sup = Supervisor(tmp_path / "logs", tick_s=0.05)
    sup.start()
    engine = sup.add("engine", [sys.executable, "-c", polite, "engine"], ready_marker="up",
                     stop_order=1)  # fmt: skip
    worker = sup.add("worker", [sys.executable, "-c", polite, "worker"], ready_marker="up")
    mule = sup.add("mule", [sys.executable, "-c", stubborn], ready_marker="up")
    sup.wait_ready(["engine", "worker", "mule"], 15)
    procs = [c.proc for c in (engine, worker, mule)]
    started = time.monotonic()
    sup.stop(timeout=2)
    assert time.monotonic() - started < 10
    assert all(p is not None and p.poll() is not None for p in procs)
    assert mule.proc is not None and mule.proc.returncode == -signal.SIGKILL
    assert order.read_text().split() == ["worker", "engine"]  # workers first, then the engine
    assert sup.restarts("worker") == 0  # a stop is not an exit to restart


SUPERVISOR_SCRIPT = """
import sys, time
from pathlib import Path
from tierflow.app.supervisor import Supervisor
sup = Supervisor(Path(sys.argv[1]), tick_s=0.05)
sup.start()
child = sup.add("sleeper", [sys.executable, "-c", "import time; time.sleep(120)"])
print(child.pid, flush=True)
time.sleep(120)
"""


@pytest.mark.skipif(not deathsig.available(), reason="PR_SET_PDEATHSIG is Linux only")
def test_children_die_with_a_supervisor_killed_with_sigkill(tmp_path: Path) -> None:
    boss = subprocess.Popen(
        [sys.executable, "-c", SUPERVISOR_SCRIPT, str(tmp_path)],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    try:
        assert boss.stdout is not None
        pid = int(boss.stdout.readline())
        child = psutil.Process(pid)
        assert child.ppid() == boss.pid
        boss.kill()
        boss.wait(10)
        child.wait(10)  # raises psutil.TimeoutExpired if the child outlived its supervisor
    finally:
        if boss.poll() is None:
            boss.kill()
            boss.wait()


def test_deathsig_wrapper_refuses_when_its_parent_is_already_gone() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tierflow.app.deathsig", "1", "--", "true"],
        capture_output=True,
        timeout=30,
    )
    assert done.returncode == deathsig.PARENT_GONE
    assert deathsig.wrap(["true"])[-2:] == ["--", "true"]
