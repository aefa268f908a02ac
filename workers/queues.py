"""How much work waits on each queue, counted the way kombu lays the queues out in Redis.

A queue is one Redis list per priority step (:func:`tierflow.core.constants.priority_lists`):
a job at the default priority waits in ``<prefix>:q:tier.<name>:4``, so a depth read from the
list named after the queue alone misses almost everything. :func:`queue_depth` sums every list.

:func:`queue_load` adds the messages workers have taken but not acknowledged yet (running,
prefetched, or holding for a countdown), from kombu's ``unacked`` hash: an autoscaler that saw
only the lists would scale a tier down while its workers are still busy with its jobs.

:func:`depth_server` serves these over HTTP for KEDA's ``metrics-api`` trigger
(``infra/k8s/keda-scaledobjects.yaml``): ``GET /depth/<queue>`` answers
``{"queue": ..., "queued": n, "reserved": m, "depth": n + m}``; ``GET /depth`` answers every
queue. ``tierflow queue-depth --serve PORT`` runs it.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import redis

from tierflow.core.constants import ALL_QUEUES, queue_key_prefix
from tierflow.core.redis_client import get_keys, redis_for
from tierflow.core.settings import get_settings

UNACKED_KEY = "unacked"  # kombu's Redis transport: delivery tag -> [message, exchange, queue]


def broker_redis() -> redis.Redis:
    """The broker's Redis (queues live there, which may not be the Redis of the limits)."""
    settings = get_settings()
    return redis_for(settings.broker_url or settings.effective_redis_url)


def queue_depth(queue: str, client: redis.Redis | None = None) -> int:
    """Messages waiting in ``queue``: LLEN summed over every one of its priority lists."""
    client = client or broker_redis()
    pipe = client.pipeline(transaction=False)
    for name in get_keys().queue_lists(queue):
        pipe.llen(name)
    return sum(int(n) for n in pipe.execute())


def reserved_counts(client: redis.Redis | None = None) -> dict[str, int]:
    """Messages taken by workers and not acknowledged yet, per queue (one pass over kombu's
    ``unacked`` hash, which is bounded by the fleet's prefetch and in-flight work)."""
    client = client or broker_redis()
    counts: dict[str, int] = {}
    key = queue_key_prefix(get_settings().key_prefix) + UNACKED_KEY
    for _tag, raw in client.hscan_iter(key, count=500):
        try:
            queue = json.loads(raw)[2]
        except (ValueError, TypeError, IndexError, KeyError):
            continue
        if isinstance(queue, str):
            counts[queue] = counts.get(queue, 0) + 1
    return counts


def queue_load(queues: tuple[str, ...] = ALL_QUEUES) -> dict[str, dict[str, int]]:
    """Per queue: ``queued`` (every priority list), ``reserved`` (taken, not yet acknowledged)
    and their sum ``depth``, the figure an autoscaler scales on."""
    client = broker_redis()
    reserved = reserved_counts(client)
    load = {}
    for queue in queues:
        queued = queue_depth(queue, client)
        taken = reserved.get(queue, 0)
        load[queue] = {"queued": queued, "reserved": taken, "depth": queued + taken}
    return load


class _DepthHandler(BaseHTTPRequestHandler):
    server: DepthServer

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        try:
            load = self.server.load()
        except redis.RedisError as exc:
            return self._send(503, {"error": f"broker unreachable: {type(exc).__name__}"})
        if path == "/depth":
            return self._send(200, {"queues": load})
        if path.startswith("/depth/") and path[len("/depth/") :] in load:
            queue = path[len("/depth/") :]
            return self._send(200, {"queue": queue, **load[queue]})
        if path == "/healthz":
            return self._send(200, {"ok": True})
        return self._send(404, {"error": "unknown path", "queues": sorted(load)})

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        return  # KEDA polls every few seconds per object: no access log


class DepthServer(ThreadingHTTPServer):
    """The depth endpoint; one read of Redis serves every request for ``cache_s`` seconds (KEDA
    polls each ScaledObject on its own)."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], cache_s: float = 2.0) -> None:
        super().__init__(address, _DepthHandler)
        self.cache_s = cache_s
        self._lock = threading.Lock()
        self._cached: tuple[float, dict[str, dict[str, int]]] | None = None

    def load(self) -> dict[str, dict[str, int]]:
        with self._lock:
            now = time.monotonic()
            if self._cached is None or now - self._cached[0] > self.cache_s:
                self._cached = (now, queue_load())
            return self._cached[1]


def depth_server(host: str = "0.0.0.0", port: int = 9808, cache_s: float = 2.0) -> DepthServer:
    """A bound (not yet serving) depth endpoint; ``serve_forever()`` runs it."""
    return DepthServer((host, port), cache_s)
