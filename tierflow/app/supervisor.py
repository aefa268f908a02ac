"""Keep child processes running: restart the dead with exponential backoff, say so, count it.

A :class:`Supervisor` owns one thread that starts every child (Linux's parent-death signal
follows the thread that started a child, see :mod:`tierflow.app.deathsig`, so children die with
the supervisor and only then), reaps the dead and restarts them after :class:`Backoff`'s delay:
1 s after an exit, doubling to 30 s, back to 1 s once a child has stayed up 60 s. It never gives
up on a child and never stops for one. Each exit is an :class:`Event` ("worker-local_fast exited
with SIGKILL; restart 2 in 2.0s"), written to ``supervisor.log`` in the log directory, handed to
``on_event`` (called on the supervisor thread before any restart, with the dead process's pid)
and counted in :attr:`Child.restarts`.

Readiness: a child may name a marker that its log shows once it is ready (Celery's ``" ready."``;
only output written since its latest start counts) or a health check (the engine's ``/health``);
a child with neither is ready once it runs. :meth:`Supervisor.wait_ready` waits for it, and a
``ready`` event fires each time a (re)started child becomes ready. Output goes to
``LOG_DIR/NAME.log``, appended across restarts.

Environment: a child inherits the supervisor's, less :data:`WITHHELD_ENV` (secrets only one child
needs), plus the ``env`` it was added with: the dashboard's token reaches the dashboard alone,
never a worker, beat or Flower.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Literal

from tierflow.app.deathsig import wrap
from tierflow.core.errors import ConfigError

log = logging.getLogger("tierflow.app.supervisor")

EventKind = Literal["started", "ready", "exited"]
# Variables no child inherits; a child that needs one is given it in ``add(env=...)``.
WITHHELD_ENV = frozenset({"TIERFLOW_DASHBOARD_TOKEN"})


@dataclass(frozen=True)
class Backoff:
    """Seconds before restart number ``streak`` of a child that keeps dying (1, 2, 4, ... 30)."""

    first_s: float = 1.0
    max_s: float = 30.0
    reset_after_s: float = 60.0  # a child up this long starts again from first_s

    def delay(self, streak: int) -> float:
        """The wait before the restart after the ``streak``-th exit in a row (1-based)."""
        return float(min(self.max_s, self.first_s * 2 ** max(0, streak - 1)))


@dataclass(frozen=True)
class Event:
    """Something that happened to one child; ``message`` is the line the supervisor logs."""

    kind: EventKind
    child: str
    message: str
    exit: str | None = None  # how it exited: "SIGSEGV", "exit code 1"
    restarts: int = 0  # restarts of this child so far (the one announced included)
    delay_s: float | None = None  # when it exited: seconds until the restart
    at: float = field(default_factory=time.time)  # Unix time
    pid: int | None = None  # the process the event is about (the dead one, for "exited")


@dataclass(eq=False)
class Child:
    """One supervised process and its history. Fields change only in the supervisor thread."""

    name: str
    argv: list[str]
    log: Path
    ready_marker: str | None = None
    health: Callable[[], bool] | None = None
    stop_order: int = 0  # lower stops first: workers (0) before the engine they call (1)
    env: dict[str, str] = field(default_factory=dict)  # on top of the inherited environment
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0  # time.monotonic() of the latest start
    ready: bool = False
    restarts: int = 0
    exits: int = 0  # deaths seen, including one whose restart is still pending
    streak: int = 0  # exits in a row, none of which followed Backoff.reset_after_s of uptime
    restart_at: float | None = None  # time.monotonic() of the next start while it is down
    last_exit: str | None = None
    _log_offset: int = 0
    _spawned: threading.Event = field(default_factory=threading.Event)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def describe_exit(returncode: int) -> str:
    """``"SIGKILL"`` for a death by signal, else ``"exit code N"``."""
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return signal.Signals(-returncode).name
        return f"signal {-returncode}"
    return f"exit code {returncode}"


def child_environment(child: Child) -> dict[str, str]:
    """The environment ``child`` starts with: this process's, less :data:`WITHHELD_ENV`, plus
    the child's own ``env``; output unbuffered."""
    inherited = {k: v for k, v in os.environ.items() if k not in WITHHELD_ENV}
    return {**inherited, **child.env, "PYTHONUNBUFFERED": "1"}


class Supervisor:
    """Start, watch and restart named children; :meth:`stop` stops them all, warmly."""

    def __init__(
        self,
        log_dir: Path,
        *,
        backoff: Backoff | None = None,
        on_event: Callable[[Event], None] | None = None,
        tick_s: float = 0.2,
    ) -> None:
        self.log_dir = log_dir
        self.backoff = backoff or Backoff()
        self.on_event = on_event
        self.tick_s = tick_s
        self._children: dict[str, Child] = {}
        self._new: queue.Queue[Child] = queue.Queue()
        self._stopping = threading.Event()
        self._stop_timeout = 30.0
        self._thread = threading.Thread(target=self._run, name="tierflow-supervisor", daemon=True)
        log_dir.mkdir(parents=True, exist_ok=True)
        self._journal = log_dir / "supervisor.log"

    # ---- the API (any thread) -----------------------------------------------------------------

    def start(self) -> None:
        """Start the supervisor thread (children are added with :meth:`add`)."""
        self._thread.start()

    def add(
        self,
        name: str,
        argv: list[str],
        *,
        ready_marker: str | None = None,
        health: Callable[[], bool] | None = None,
        stop_order: int = 0,
        timeout: float = 30.0,
        env: dict[str, str] | None = None,
    ) -> Child:
        """Supervise ``argv`` as ``name``; returns once the supervisor thread has started it.
        ``env``: variables this child alone gets (see :data:`WITHHELD_ENV`)."""
        if name in self._children:
            raise ValueError(f"a child named {name} is already supervised")
        child = Child(
            name,
            argv,
            self.log_dir / f"{name}.log",
            ready_marker,
            health,
            stop_order,
            dict(env or {}),
        )
        self._new.put(child)
        if not child._spawned.wait(timeout):
            raise ConfigError(f"supervisor did not start {name} within {timeout}s")
        return child

    def child(self, name: str) -> Child:
        return self._children[name]

    @property
    def names(self) -> list[str]:
        return list(self._children)

    def restarts(self, name: str) -> int:
        """How many times ``name`` was restarted (0 for a child never supervised)."""
        child = self._children.get(name)
        return child.restarts if child else 0

    def exits(self, name: str) -> int:
        """How many times ``name`` died (a restart may still be pending for the last one)."""
        child = self._children.get(name)
        return child.exits if child else 0

    def wait_ready(self, names: Iterable[str], timeout: float) -> None:
        """Wait until each child is ready; ConfigError if one exits first or time runs out.

        For start-up: a child that cannot even start once is a configuration problem, and its
        log says which. Once running, the supervisor restarts children instead of failing.
        """
        deadline = time.monotonic() + timeout
        for name in names:
            child = self._children[name]
            while not child.ready:
                if child.last_exit is not None:
                    raise ConfigError(
                        f"{name} exited with {child.last_exit} before it was ready: see {child.log}"
                    )
                if time.monotonic() > deadline:
                    raise ConfigError(f"{name} not ready after {timeout:.0f}s: see {child.log}")
                time.sleep(0.1)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop restarting; SIGTERM every child (lowest ``stop_order`` first), SIGKILL those still
        alive ``timeout`` seconds later. Idempotent."""
        self._stop_timeout = timeout
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join()  # the thread stops the children: they were started from it

    # ---- the supervisor thread ------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                try:
                    self._tick()
                except Exception:  # one bad tick must not orphan the fleet
                    log.exception("supervisor tick failed")
                self._stopping.wait(self.tick_s)
        finally:
            self._stop_children()

    def _tick(self) -> None:
        while True:
            try:
                child = self._new.get_nowait()
            except queue.Empty:
                break
            self._children[child.name] = child
            self._start(child)
            child._spawned.set()
        now = time.monotonic()
        for child in list(self._children.values()):
            if child.proc is None:
                if child.restart_at is not None and now >= child.restart_at:
                    child.restarts += 1
                    self._start(child)
                continue
            code = child.proc.poll()
            if code is None:
                if not child.ready and self._is_ready(child):
                    child.ready = True
                    self._emit(
                        Event("ready", child.name, f"{child.name} ready", restarts=child.restarts)
                    )
                continue
            self._exited(child, code, now)

    def _start(self, child: Child) -> None:
        child.ready, child.restart_at = False, None
        child.started_at = time.monotonic()
        try:
            child._log_offset = child.log.stat().st_size
        except OSError:
            child._log_offset = 0
        try:
            with child.log.open("ab") as out:
                child.proc = subprocess.Popen(
                    wrap(child.argv), stdout=out, stderr=subprocess.STDOUT,
                    env=child_environment(child), start_new_session=True,
                )  # fmt: skip
        except OSError as exc:
            child.proc = None
            self._exited(child, f"could not start ({exc})", time.monotonic())
            return
        again = f" (restart {child.restarts})" if child.restarts else ""
        message = f"{child.name} started{again}, pid {child.proc.pid}"
        self._emit(Event("started", child.name, message, restarts=child.restarts))

    def _exited(self, child: Child, how: int | str, now: float) -> None:
        """Record an exit (a return code, or why it could not start) and schedule the restart."""
        if now - child.started_at >= self.backoff.reset_after_s:
            child.streak = 0
        child.streak += 1
        child.exits += 1
        delay = self.backoff.delay(child.streak)
        child.last_exit = describe_exit(how) if isinstance(how, int) else how
        pid = child.pid
        child.proc, child.ready, child.restart_at = None, False, now + delay
        message = (
            f"{child.name} exited with {child.last_exit}; "
            f"restart {child.restarts + 1} in {delay:.1f}s"
        )
        # on_event runs here, before any restart: what it does about the dead process (the
        # fleet releases its leases) is done before a new one starts
        self._emit(
            Event(
                "exited", child.name, message, child.last_exit, child.restarts + 1, delay, pid=pid
            )
        )

    def _is_ready(self, child: Child) -> bool:
        if child.health is not None:
            try:
                if not child.health():
                    return False
            except Exception:
                return False
        if child.ready_marker is not None:
            try:
                with child.log.open("rb") as handle:
                    handle.seek(child._log_offset)
                    return child.ready_marker.encode() in handle.read()
            except OSError:
                return False
        return True

    def _emit(self, event: Event) -> None:
        stamp = datetime.fromtimestamp(event.at).strftime("%Y-%m-%d %H:%M:%S")
        log.info("%s", event.message)  # INFO: the journal and on_event are the loud channels
        with contextlib.suppress(OSError), self._journal.open("a") as journal:
            journal.write(f"{stamp} {event.message}\n")
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception:
                log.exception("supervisor event handler failed on %r", event.message)

    def _stop_children(self) -> None:
        deadline = time.monotonic() + self._stop_timeout
        for order in sorted({c.stop_order for c in self._children.values()}):
            wave = [c for c in self._children.values() if c.stop_order == order and c.running]
            for child in wave:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.proc.pid, signal.SIGTERM)  # type: ignore[union-attr]
            for child in wave:
                proc = child.proc
                assert proc is not None
                try:
                    proc.wait(max(deadline - time.monotonic(), 0.1))
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(10)
        for child in self._children.values():
            child.restart_at = None
