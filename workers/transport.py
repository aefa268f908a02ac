"""The fleet's kombu transport (``broker_transport``): kombu's Redis transport, poison-safe
(:mod:`workers.poison`), with one Redis client per channel for kombu's own commands and the
consumer's ``BRPOP`` built once per queue order.

kombu builds a new ``redis.Redis`` object for every command it sends outside the consumer's
event loop: each publish (``LPUSH``), each delivery's entry in the unacked index, each
acknowledgement. With redis-py 6 building one costs about 50 µs of CPU (it fills a table of
about 160 response callbacks), five times per job in a worker. The object holds no connection
of its own (each command takes one from the channel's pool, as before), and redis-py documents
a client as safe to share between threads, so :class:`FleetRedisChannel` keeps one per pool
and hands it out again. When kombu replaces its pool (after a fork, or after a connection
error), the next command gets a client of the new pool.

The consumer waits for work with one ``BRPOP`` over every priority list of every queue it
consumes (ten lists a queue: tierflow's ten priorities, see
:data:`tierflow.core.constants.PRIORITY_STEPS`), fifty keys for a worker on all five queues,
sent again after every message. kombu names, prefixes and packs those keys anew each time
(about 0.1 ms of CPU for fifty); :meth:`FleetRedisChannel._brpop_start` sends the same bytes,
packed once per order of the queues (kombu rotates the order for fairness: one packed command
per rotation) and timeout.
"""

from __future__ import annotations

import threading
from time import monotonic
from typing import Any

from workers.poison import SafeRedisChannel, SafeRedisTransport


class FleetRedisChannel(SafeRedisChannel):
    """A :class:`SafeRedisChannel` whose synchronous Redis client is made once per pool."""

    _sync_client: Any = None
    _sync_client_lock = threading.Lock()
    _brpop_packed: dict[tuple[tuple[str, ...], Any], Any] | None = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:  # the consumer's own client, made once by kombu already
            return super()._create_client(asynchronous=True)
        pool = self.pool
        client = self._sync_client
        if client is None or client.connection_pool is not pool:
            with self._sync_client_lock:
                client = self._sync_client
                if client is None or client.connection_pool is not pool:
                    client = self._sync_client = super()._create_client()
        return client

    def _brpop_start(self, timeout: Any = None) -> None:
        """kombu's: send the ``BRPOP`` of every priority list of the next queues in turn (their
        order rotated, as kombu does, so no queue starves), but packed once per order."""
        if timeout is None:
            timeout = self.brpop_timeout
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        cache = self._brpop_packed
        if cache is None or len(cache) > 64:  # a few orders per set of queues consumed
            cache = self._brpop_packed = {}
        key = (tuple(queues), timeout)
        packed = cache.get(key)
        connection = self.client.connection
        if packed is None:
            keys = [self._q_for_pri(q, pri) for pri in self.priority_steps for q in queues]
            args = ["BRPOP", *keys, timeout or 0]
            if self.global_keyprefix:
                args = self.client._prefix_args(args)
            packed = cache[key] = connection.pack_command(*args)
        self._in_poll = connection
        self._brpop_sent_at = monotonic()  # type: ignore[assignment]  # kombu: None until sent
        connection.send_packed_command(packed)


class FleetRedisTransport(SafeRedisTransport):
    """The fleet's ``broker_transport``: see the module."""

    Channel = FleetRedisChannel
