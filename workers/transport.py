"""The fleet's kombu transport (``broker_transport``): kombu's Redis transport, poison-safe
(:mod:`workers.poison`), and with one Redis client per channel for kombu's own commands.

kombu builds a new ``redis.Redis`` object for every command it sends outside the consumer's
event loop: each publish (``LPUSH``), each delivery's entry in the unacked index, each
acknowledgement. With redis-py 6 building one costs about 50 µs of CPU (it fills a table of
about 160 response callbacks), five times per job in a worker. The object holds no connection
of its own (each command takes one from the channel's pool, as before), and redis-py documents
a client as safe to share between threads, so :class:`FleetRedisChannel` keeps one per pool
and hands it out again. When kombu replaces its pool (after a fork, or after a connection
error), the next command gets a client of the new pool.
"""

from __future__ import annotations

import threading
from typing import Any

from workers.poison import SafeRedisChannel, SafeRedisTransport


class FleetRedisChannel(SafeRedisChannel):
    """A :class:`SafeRedisChannel` whose synchronous Redis client is made once per pool."""

    _sync_client: Any = None
    _sync_client_lock = threading.Lock()

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


class FleetRedisTransport(SafeRedisTransport):
    """The fleet's ``broker_transport``: see the module."""

    Channel = FleetRedisChannel
