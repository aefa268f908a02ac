"""Queue depth as kombu's Redis transport stores it: one Redis list per priority step.

The rule (kombu ``Channel._q_for_pri``; checked against real messages in
``tests/integration/test_dashboard.py``): with ``global_keyprefix`` *P*, separator *S* and
``priority_steps`` 0..9, a message of priority 0 waits in ``P<queue>`` and one of priority
*p* > 0 in ``P<queue>S<p>``. tierflow sends its priority 9 (most urgent) as kombu's 0, so the
bare list holds the most urgent messages, and a depth that reads only the bare list misses
nearly everything (tierflow's default priority 5 lands in ``P<queue>:4``).

Messages a worker has taken but not acknowledged are not in these lists (kombu keeps them in
its ``unacked`` hash); a countdown's message is held by the worker that prefetched it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tierflow.core.celery_app import app
from tierflow.core.constants import ALL_QUEUES
from tierflow.core.redis_client import get_redis


def _transport_options() -> dict[str, Any]:
    return dict(app.conf.broker_transport_options or {})


def priority_lists(queue: str) -> list[str]:
    """Every Redis list that holds ``queue``'s waiting messages, most urgent first."""
    options = _transport_options()
    prefix = str(options.get("global_keyprefix", ""))
    sep = str(options.get("sep", "\x06\x16"))
    steps = list(options.get("priority_steps", [0, 3, 6, 9]))
    return [f"{prefix}{queue}{sep}{p}" if p else f"{prefix}{queue}" for p in steps]


def queue_depths(queues: Iterable[str] = ALL_QUEUES) -> dict[str, int]:
    """Waiting messages per queue, summed over every priority list (one pipelined round trip)."""
    names = list(queues)
    lists = {q: priority_lists(q) for q in names}
    pipe = get_redis().pipeline(transaction=False)
    for q in names:
        for key in lists[q]:
            pipe.llen(key)
    sizes = iter(pipe.execute())
    return {q: sum(int(next(sizes)) for _ in lists[q]) for q in names}
