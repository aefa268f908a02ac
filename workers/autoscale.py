"""Autoscaling a tier's workers (``tierflow autoscale``): the same figure KEDA scales on, plus a
launcher for machines without Kubernetes.

Each tick reads the tier's load (:func:`workers.queues.queue_load`: queued over every priority
list, plus reserved = taken by workers and not acknowledged: running, prefetched, waiting for a
countdown) and the calls in flight on the tier's models (the fleet's own per-model counts in
Redis, :func:`workers.balance.in_flight`), and computes

    wanted = clamp(ceil(max(depth, in_flight) / per_worker), min_workers, max_workers)

where ``per_worker`` is what one worker carries (its pool size, about its server's
``max_num_seqs``; KEDA's ``targetValue`` is the same number, ``infra/k8s/keda-scaledobjects.yaml``).

- **Scale-out** is immediate: one start per missing worker, through the :class:`Launcher`.
- **Scale-in** waits until ``wanted`` has stayed below the running count for ``cooldown_s``, and
  until the workers that stay can hold all the reserved work (``reserved <= (n - 1) *
  per_worker``); then one worker is stopped with SIGTERM, Celery's warm shutdown: it takes no new
  message, finishes the tasks it runs, gives back what it prefetched (``acks_late``: the
  messages return to the queue), and exits by itself. A draining worker is never killed: the
  autoscaler waits for it to exit, and it no longer counts as capacity meanwhile.

:class:`LocalProcessLauncher` (the default) runs ``celery worker`` processes on this machine
(``workers/pools.py``'s argv for the tier). Another launcher (a cloud API that boots a GPU node
with vLLM and a worker, a Kubernetes Deployment's replica count) implements the same three
methods.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from tierflow.core.config import LLMConfig
from tierflow.core.constants import tier_queue
from workers.balance import in_flight
from workers.limits import FleetLimits
from workers.pools import worker_argv
from workers.queues import queue_load

log = logging.getLogger("tierflow.autoscale")


class Launcher(Protocol):
    """Starts and stops the workers of one tier; a handle is whatever identifies one."""

    def start(self) -> str: ...

    def drain(self, handle: str) -> None:
        """Ask the worker to finish what it runs and exit (never a kill)."""

    def alive(self, handle: str) -> bool: ...


@dataclass
class LocalProcessLauncher:
    """``celery worker`` processes on this machine, each in its own process group."""

    tier: str
    env: dict[str, str] | None = None
    concurrency: int | None = None
    log_dir: Path | None = None
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self) -> str:
        handle = f"autoscale-{self.tier}-{uuid.uuid4().hex[:6]}"
        argv = worker_argv(self.tier, self.concurrency, beat=False)
        argv[argv.index("-n") + 1] = f"{handle}@%h"
        log_dir = self.log_dir or Path(os.environ.get("TMPDIR", "/tmp"))
        with (log_dir / f"{handle}.log").open("ab") as out:
            self.procs[handle] = subprocess.Popen(
                [sys.executable, "-m", "celery", *argv],
                env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        return handle

    def drain(self, handle: str) -> None:
        proc = self.procs.get(handle)
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)  # the worker's main process: warm shutdown

    def alive(self, handle: str) -> bool:
        proc = self.procs.get(handle)
        return proc is not None and proc.poll() is None

    def returncode(self, handle: str) -> int | None:
        proc = self.procs.get(handle)
        return None if proc is None else proc.poll()


@dataclass(frozen=True)
class Load:
    queued: int
    reserved: int
    in_flight: int

    @property
    def demand(self) -> int:
        return max(self.queued + self.reserved, self.in_flight)


@dataclass
class Event:
    at: float
    action: str  # "start" | "drain" | "exited"
    handle: str
    load: Load


class Autoscaler:
    def __init__(
        self,
        tier: str,
        launcher: Launcher,
        *,
        per_worker: int,
        min_workers: int = 0,
        max_workers: int = 4,
        cooldown_s: float = 60.0,
        read_load: Callable[[], Load] | None = None,
        clock: Callable[[], float] = time.monotonic,
        config: LLMConfig | None = None,
        limits: FleetLimits | None = None,
    ) -> None:
        """Scale ``tier`` with ``launcher``: one worker per ``per_worker`` messages of demand,
        between ``min_workers`` and ``max_workers``, draining one only after the load stayed
        low ``cooldown_s`` seconds. The load is ``read_load()``, else the tier's queue plus, with
        ``config`` and ``limits``, the calls in flight on its models that cap their concurrency.
        Raises ValueError for bounds out of order."""
        if per_worker < 1 or min_workers < 0 or max_workers < max(1, min_workers):
            raise ValueError("need per_worker >= 1 and 0 <= min_workers <= max_workers >= 1")
        self.tier, self.launcher = tier, launcher
        self.per_worker, self.min, self.max = per_worker, min_workers, max_workers
        self.cooldown_s = cooldown_s
        self.read_load = read_load or self._read_load
        self.clock = clock
        self.active: list[str] = []
        self.draining: list[str] = []
        self.events: list[Event] = []
        self._low_since: float | None = None
        self.config = config
        self.limits = limits

    def _read_load(self) -> Load:
        queue = tier_queue(self.tier)
        load = queue_load((queue,))[queue]
        flying = 0
        if self.config is not None and self.limits is not None:
            models = [m for m in self.config.tier_models(self.tier) if m.limits.max_concurrency]
            flying = sum(in_flight(models, self.limits)) if models else 0
        return Load(load["queued"], load["reserved"], flying)

    def wanted(self, load: Load) -> int:
        return max(self.min, min(self.max, math.ceil(load.demand / self.per_worker)))

    def step(self) -> Load:
        """One tick: reap drained workers, then start or drain at most what the load says."""
        now = self.clock()
        load = self.read_load()
        for handle in list(self.draining):
            if not self.launcher.alive(handle):
                self.draining.remove(handle)
                self.events.append(Event(now, "exited", handle, load))
                log.info("autoscale %s: %s drained and exited", self.tier, handle)
        for handle in list(self.active):  # a worker that died on its own is replaced below
            if not self.launcher.alive(handle):
                self.active.remove(handle)
                self.events.append(Event(now, "exited", handle, load))
        want = self.wanted(load)
        if want > len(self.active):
            self._low_since = None
            for _ in range(want - len(self.active)):
                handle = self.launcher.start()
                self.active.append(handle)
                self.events.append(Event(now, "start", handle, load))
                log.info("autoscale %s: start %s (%s)", self.tier, handle, load)
        elif want < len(self.active):
            self._low_since = self._low_since if self._low_since is not None else now
            stays = len(self.active) - 1
            held = load.reserved <= stays * self.per_worker and load.in_flight <= (
                stays * self.per_worker
            )
            if now - self._low_since >= self.cooldown_s and held:
                handle = self.active.pop()  # the newest: the oldest has the warmest caches
                self.launcher.drain(handle)
                self.draining.append(handle)
                self.events.append(Event(now, "drain", handle, load))
                log.info("autoscale %s: drain %s (%s)", self.tier, handle, load)
                self._low_since = now  # one worker per cooldown
        else:
            self._low_since = None
        return load

    def run(self, interval_s: float = 2.0, stop: Callable[[], bool] = lambda: False) -> None:
        while not stop():
            try:
                self.step()
            except Exception:
                log.exception("autoscale %s: tick failed", self.tier)
            time.sleep(interval_s)

    def drain_all(self, timeout_s: float | None = None) -> None:
        """Stop every worker warmly and wait for them to exit (``timeout_s``: give up waiting)."""
        for handle in self.active:
            self.launcher.drain(handle)
        self.draining += self.active
        self.active = []
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while any(self.launcher.alive(h) for h in self.draining):
            if deadline is not None and time.monotonic() > deadline:
                return
            time.sleep(0.2)
        self.draining = []
