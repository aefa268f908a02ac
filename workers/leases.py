"""How long a claimed attempt is ours and how long a re-enqueued one may wait, from the settings.

Both are bounded by the broker's visibility timeout: Redis hands a message that stayed
unacknowledged that long to a second worker.
"""

from __future__ import annotations

import hashlib

from tierflow.core.settings import get_settings

MAX_WAIT_COUNTDOWN_S = 60.0
MIN_CAPACITY_WAIT_S = 0.25


def max_countdown() -> float:
    """The longest a re-enqueued attempt may wait (seconds): a minute, and always well under the
    broker's visibility timeout."""
    return min(MAX_WAIT_COUNTDOWN_S, get_settings().visibility_timeout / 2)


def lease_seconds() -> float:
    """How long a claimed attempt stays ours (seconds): the hard time limit plus a margin, ending
    before the visibility timeout, so a redelivery after a worker died finds the lease over."""
    settings = get_settings()
    margin = min(30.0, (settings.visibility_timeout - settings.task_time_limit) / 2)
    return settings.task_time_limit + margin


def capacity_wait(job_id: str, wait_s: float, waits: int) -> float:
    """The countdown of a job's next wait for capacity (a concurrency cap or our own rate limit)
    after ``waits`` earlier ones, in seconds: ``max(wait_s, 0.25) * 2**waits``, jittered down to
    as little as half of that, never below ``max(wait_s, 0.25)`` (a rate limit's known next
    room; no 10 ms spin) and capped at :func:`max_countdown`.

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
    return min(max(jittered, floor), max_countdown())
