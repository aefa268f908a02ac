"""Job events for every waiter of a process, over one Redis pub/sub connection.

A process that waits on many jobs (a daemon, the gateway, a batch submitter) holds **one**
pattern subscription (``<prefix>:job:*``), made once, and a reader thread hands each job's
events to the waiters registered for it. 10,000 concurrent ``wait()`` calls share that one
connection instead of opening 10,000.

A waiter registers *before* it reads the job's state, so an event published between the two is
never missed. Events of jobs nobody here waits for are dropped. If the connection breaks, the
reader reconnects and subscribes again; a waiter meanwhile falls back on its periodic status
check (a lost wake-up only delays it). After a fork the child starts its own hub.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import threading
from collections import defaultdict
from typing import Any

import redis

from tierflow.core.redis_client import get_keys, get_redis

log = logging.getLogger(__name__)
RECONNECT_S = 1.0


class EventHub:
    """One pattern subscription and a reader thread; ``register``/``unregister`` per waiter."""

    def __init__(self, client: redis.Redis, pattern: str, prefix_len: int) -> None:
        self._client = client
        self._pattern = pattern
        self._prefix_len = prefix_len  # channel[prefix_len:] is the job id
        self._waiters: dict[str, list[queue.Queue[dict[str, Any]]]] = defaultdict(list)
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tierflow-events", daemon=True)
        self._thread.start()

    def register(self, job_id: str, timeout: float = 5.0) -> queue.Queue[dict[str, Any]]:
        """A queue that receives the job's events from now on (once the subscription is live:
        waits up to ``timeout`` seconds for it, then relies on the caller's status checks)."""
        inbox: queue.Queue[dict[str, Any]] = queue.Queue()
        with self._lock:
            self._waiters[job_id].append(inbox)
        self._ready.wait(timeout)
        return inbox

    def unregister(self, job_id: str, inbox: queue.Queue[dict[str, Any]]) -> None:
        with self._lock:
            inboxes = self._waiters.get(job_id)
            if inboxes is not None and inbox in inboxes:
                inboxes.remove(inbox)
                if not inboxes:
                    del self._waiters[job_id]

    @property
    def live(self) -> bool:
        """Whether the subscription is live now (events published from now on arrive)."""
        return self._ready.is_set()

    @property
    def waiting(self) -> int:
        """Jobs with at least one waiter in this process."""
        with self._lock:
            return len(self._waiters)

    def registered(self, job_id: str) -> bool:
        """Whether ``job_id`` has a waiter (a registered inbox) in this process."""
        with self._lock:
            return job_id in self._waiters

    def _run(self) -> None:
        lost = False  # said once per outage, not at every failed retry
        while True:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.psubscribe(self._pattern)
                self._ready.set()
                if lost:
                    log.warning("job events: subscribed again")
                    lost = False
                while True:
                    message = pubsub.get_message(timeout=1.0)
                    if message is not None:
                        self._deliver(message)
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                self._ready.clear()
                if not lost:
                    log.warning("job events: connection lost; retrying every %.0fs", RECONNECT_S)
                    lost = True
                threading.Event().wait(RECONNECT_S)
            finally:
                with contextlib.suppress(Exception):  # a broken connection may fail to close
                    pubsub.close()

    def _deliver(self, message: dict[str, Any]) -> None:
        channel = message["channel"]
        job_id = (channel.decode() if isinstance(channel, bytes) else channel)[self._prefix_len :]
        with self._lock:
            inboxes = list(self._waiters.get(job_id, ()))
        if not inboxes:
            return
        try:
            event = json.loads(message["data"])
        except ValueError:
            log.warning("job events: unreadable event for job %s", job_id)
            return
        for inbox in inboxes:
            inbox.put(event)


_HUBS: dict[tuple[int, str], EventHub] = {}
_HUBS_LOCK = threading.Lock()


def event_hub() -> EventHub:
    """This process's hub for the configured Redis and key prefix (started on first use)."""
    keys = get_keys()
    prefix = keys.job_channel("")
    key = (os.getpid(), prefix)
    with _HUBS_LOCK:
        hub = _HUBS.get(key)
        if hub is None:
            hub = _HUBS[key] = EventHub(get_redis(), prefix + "*", len(prefix))
        return hub
