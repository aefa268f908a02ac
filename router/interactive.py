"""Whether daemons' jobs are arriving now, so that batches can make room for them.

The router calls :func:`mark` for each interactive job it routes (a job above
:data:`~tierflow.core.constants.BATCH_PRIORITY`); it sets a Redis key that lives
:data:`~tierflow.core.constants.INTERACTIVE_SEEN_S` seconds, at most four times per that span
and process, so a stream of jobs costs a few writes a second, not one per job. A batch
submitter reads it with :func:`seen` (cached for :data:`SEEN_CACHE_S`), and while it is set keeps
fewer of its jobs in flight (:class:`router.batch.Window`). Redis unreachable: nothing is marked
and nothing is seen; batches then run at their full window.
"""

from __future__ import annotations

import threading
import time

import redis

from tierflow.core.constants import INTERACTIVE_SEEN_S
from tierflow.core.redis_client import get_keys, get_redis

SEEN_CACHE_S = 0.05  # a submitter reads the key at most this often (seconds)

_lock = threading.Lock()
_marked_at = -INTERACTIVE_SEEN_S  # monotonic time of this process's last write
_seen: tuple[float, bool] = (-SEEN_CACHE_S, False)  # (read at, value)


def mark() -> None:
    """Note that a daemon's job is being routed now (cheap: see the module)."""
    global _marked_at
    now = time.monotonic()
    with _lock:
        if now - _marked_at < INTERACTIVE_SEEN_S / 4:
            return
        _marked_at = now
    try:
        get_redis().set(get_keys().interactive_seen, 1, px=int(INTERACTIVE_SEEN_S * 1000))
    except redis.RedisError:
        with _lock:
            _marked_at = -INTERACTIVE_SEEN_S  # try again at the next job


def seen() -> bool:
    """Whether a daemon's job was routed within the last ``INTERACTIVE_SEEN_S`` seconds."""
    global _seen
    now = time.monotonic()
    read_at, value = _seen
    if now - read_at < SEEN_CACHE_S:
        return value
    try:
        value = bool(get_redis().exists(get_keys().interactive_seen))
    except redis.RedisError:
        value = False
    _seen = (now, value)
    return value


def forget() -> None:
    """Forget this process's cached reads and writes (tests)."""
    global _marked_at, _seen
    _marked_at = -INTERACTIVE_SEEN_S
    _seen = (-SEEN_CACHE_S, False)
