"""How long a claimed attempt is ours and how long a re-enqueued one may wait, from the settings.

Both are bounded by the broker's visibility timeout: Redis hands a message that stayed
unacknowledged that long to a second worker.
"""

from __future__ import annotations

from tierflow.core.settings import get_settings

MAX_WAIT_COUNTDOWN_S = 60.0


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
