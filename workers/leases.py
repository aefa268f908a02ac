"""How long a claimed attempt is ours, how it stays ours while its call runs, and how long a
re-enqueued one may wait, from the settings.

Both are bounded by the broker's visibility timeout: Redis hands a message that stayed
unacknowledged that long to a second worker.

A lease is a heartbeat (:func:`lease_seconds`, ``TIERFLOW_LEASE_S``, 15 s by default), renewed
while the attempt runs (:class:`LeaseKeeper`): one thread per process pushes every held lease on
every third of it, in one statement. A live call keeps its attempt however slow it is, and a
holder that died, hung, was paused or cut off stops renewing and loses it within one lease (the
sweeper then re-sends the job; ``tierflow up`` releases a dead child's leases at once). How long
an attempt may run is a separate bound, the hard time limit (:func:`attempt_deadline`): its call
is given no more than what is left of it (:func:`call_timeout`), a stream is cut at it, and the
keeper stops renewing a lease past it. The fence in :func:`tierflow.store.finish_attempt` turns
away whoever lost the lease anyway (a paused worker that comes back).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from tierflow import store
from tierflow.core.settings import get_settings
from tierflow.store import HeldLease

log = logging.getLogger(__name__)

MAX_WAIT_COUNTDOWN_S = 60.0
MIN_CAPACITY_WAIT_S = 0.25
# A concurrency slot frees when a call ends: past a few seconds, waiting longer only idles the
# model while its waiters sleep (measured: a 60 s cap took 10 two-second jobs 57-113 s).
MAX_CAPACITY_WAIT_S = 5.0


def max_countdown() -> float:
    """The longest a re-enqueued attempt may wait (seconds): a minute, and always well under the
    broker's visibility timeout."""
    return min(MAX_WAIT_COUNTDOWN_S, get_settings().visibility_timeout / 2)


def lease_seconds() -> float:
    """How long a claimed attempt stays ours without a renewal (seconds): ``TIERFLOW_LEASE_S``
    (default 15). A heartbeat, not the time limit: the keeper renews it every third of itself
    while the attempt runs, and a holder that stops renewing (killed, frozen, cut off) loses
    the attempt to the next delivery within one lease."""
    return float(get_settings().lease_s)


def attempt_deadline(started: float) -> float:
    """The ``time.monotonic()`` past which an attempt that started at ``started`` may not run:
    the hard time limit (``TIERFLOW_TASK_TIME_LIMIT``) after its start."""
    return started + float(get_settings().task_time_limit)


def call_timeout(model_timeout_s: float, deadline: float | None = None) -> float:
    """The timeout (seconds) a model call is given: the model's own, capped by the soft time
    limit and by what is left before ``deadline`` (a ``time.monotonic()``), never below 0.1 s.
    Celery's time limits do not apply to the thread pools the fleet runs, so this is what
    bounds a silent call."""
    timeout = min(float(model_timeout_s), float(get_settings().task_soft_time_limit))
    if deadline is not None:
        timeout = min(timeout, deadline - time.monotonic())
    return max(timeout, 0.1)


def capacity_wait(job_id: str, wait_s: float, waits: int) -> float:
    """The countdown of a job's next wait for capacity (a concurrency cap or our own rate limit)
    after ``waits`` earlier ones, in seconds: ``max(wait_s, 0.25) * 2**waits``, jittered down to
    as little as half of that, never below ``max(wait_s, 0.25)`` (a rate limit's known next
    room; no 10 ms spin) and capped at :data:`MAX_CAPACITY_WAIT_S` (or the rate limit's next
    room, when that is later) and :func:`max_countdown`.

    The jitter is derived from the job id and ``waits`` (the same job and wait always get the
    same countdown, like every other decision a replay may repeat), so jobs that found the
    model busy together do not all come back together. Doubling keeps a long wait to a few
    deliveries instead of one every half second through the broker and PostgreSQL; jittering
    downwards ("equal jitter") keeps the model from idling long while its waiters sleep.
    """
    floor = max(wait_s, MIN_CAPACITY_WAIT_S)
    digest = hashlib.sha256(f"{job_id}:wait:{waits}".encode()).digest()
    spread = int.from_bytes(digest[:2], "big") / 65535
    jittered = floor * 2 ** min(waits, 16) * (0.5 + 0.5 * spread)
    return min(max(jittered, floor), max(MAX_CAPACITY_WAIT_S, floor), max_countdown())


@dataclass
class LeaseHold:
    """One attempt's lease, held by this process while its call runs."""

    key: HeldLease
    lease_s: float
    renewed_at: float = field(default_factory=time.monotonic)  # the claim, or the last renewal
    lost: threading.Event = field(default_factory=threading.Event)  # taken over meanwhile
    deadline: float | None = None  # time.monotonic() past which it is no longer renewed

    @property
    def due_at(self) -> float:
        due = self.renewed_at + self.lease_s / 3
        return due if self.deadline is None else min(due, self.deadline)


class LeaseKeeper:
    """Renews the leases of the calls in flight in this process, every ``lease_s / 3``.

    One daemon thread for all of them (a GPU worker keeps hundreds of calls in flight), started
    on first use and again after a fork; the leases due together go in one statement. A renewal
    that fails (PostgreSQL away) is tried again at the next tick, with two thirds of the lease
    still to go; a lease found taken over is marked :attr:`LeaseHold.lost` and no longer
    renewed (the call runs on; its outcome is fenced out when it is stored).
    """

    def __init__(self, renew: Callable[[list[HeldLease], float], set[HeldLease]] | None = None):
        self._renew = renew or store.renew_leases
        self._lock = threading.Lock()
        self._held: dict[HeldLease, LeaseHold] = {}
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._sleeps_until = 0.0  # monotonic time the thread wakes by itself (0: not asleep)

    @contextmanager
    def hold(
        self,
        job_id: str,
        attempt_no: int,
        worker: str,
        lease_s: float,
        deadline: float | None = None,
    ) -> Iterator[LeaseHold]:
        """Keep (job_id, attempt_no)'s lease, just claimed by ``worker``, alive until exit (or
        until ``deadline``, a ``time.monotonic()``, whichever comes first)."""
        held = self.keep(job_id, attempt_no, worker, lease_s, deadline)
        try:
            yield held
        finally:
            self.drop(held.key)

    def keep(
        self,
        job_id: str,
        attempt_no: int,
        worker: str,
        lease_s: float,
        deadline: float | None = None,
    ) -> LeaseHold:
        """Start renewing (job_id, attempt_no)'s lease, held by ``worker``, until :meth:`drop`
        or ``deadline`` (a ``time.monotonic()``: past it the lease runs out by itself, so an
        attempt over its hard time limit is taken over even if its thread never returns)."""
        held = LeaseHold((job_id, attempt_no, worker), lease_s, deadline=deadline)
        with self._lock:
            self._held[held.key] = held
            self._start()
            # its first renewal may be due before the thread's next tick: wake it only then
            # (most holds are due after one already held, a thread switch saved per call)
            early = held.due_at < self._sleeps_until
        if early:
            self._wake.set()
        return held

    def drop(self, key: HeldLease) -> None:
        """Stop renewing ``key``'s lease (its outcome is stored, or it was given back)."""
        with self._lock:
            self._held.pop(key, None)

    def held(self) -> list[LeaseHold]:
        with self._lock:
            return list(self._held.values())

    def _start(self) -> None:
        alive = self._thread is not None and self._thread.is_alive()
        if alive and self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self._thread = threading.Thread(target=self._run, name="tierflow-leases", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            with self._lock:
                wake_at = min((h.due_at for h in self._held.values()), default=0.0)
                if not wake_at:
                    wake_at = time.monotonic() + 60
                self._sleeps_until = wake_at
            due_in = wake_at - time.monotonic()
            if due_in > 0:
                self._wake.wait(due_in)
                self._wake.clear()
                continue
            self.renew_due()

    def renew_due(self, force: bool = False) -> None:
        """Renew the leases that are due (with ``force``, all of them), and those due within
        the next sixth of their lease, so that calls started close together share a tick."""
        now = time.monotonic()
        by_length: dict[float, list[LeaseHold]] = {}
        for h in self.held():
            if h.deadline is not None and now >= h.deadline:
                log.warning("attempt %s #%s is past its hard time limit", h.key[0], h.key[1])
                self.drop(h.key)  # no renewal past it: the lease runs out by itself
                continue
            if force or now >= h.due_at - h.lease_s / 6:
                by_length.setdefault(h.lease_s, []).append(h)
        for lease_s, holds in by_length.items():
            try:
                renewed = self._renew([h.key for h in holds], lease_s)
            except Exception:  # the database is away: the lease still has 2/3 to go
                log.warning("could not renew %d leases; trying again", len(holds), exc_info=True)
                for h in holds:  # not in a busy loop: next try a little later
                    h.renewed_at = max(h.renewed_at, now - h.lease_s / 3 + 1.0)
                continue
            for h in holds:
                if h.key in renewed:
                    h.renewed_at = now
                    continue
                log.warning("lease of attempt %s #%s was taken over", h.key[0], h.key[1])
                h.lost.set()
                with self._lock:
                    self._held.pop(h.key, None)


LEASES = LeaseKeeper()
