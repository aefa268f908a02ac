"""Wake-ups over Redis pub/sub: job events for waiters, fallback events for watchers.

A waiter subscribes to its job's channel *before* reading the job's state, so an event published
between the two is never missed (see :meth:`router.client.JobHandle.wait`).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, cast

from schemas.jobs import JobResult
from tierflow.core.redis_client import get_keys, get_redis

log = logging.getLogger(__name__)
FALLBACK_HISTORY_SIZE = 200
RESULT_IN_EVENT_MAX = 64 * 1024  # characters; every waiting process receives every event


def publish_job_event(job_id: str, event: dict[str, Any]) -> None:
    """Publish one event (``type``: ``chunk``, ``reset`` or ``done``) on the job's channel."""
    _publish(job_id, str(event.get("type")), json.dumps(event))


def _publish(job_id: str, kind: str, payload: str) -> None:
    try:
        get_redis().publish(get_keys().job_channel(job_id), payload)
    except Exception:  # a lost wake-up only delays the waiter; PostgreSQL holds the truth
        log.warning("could not publish %s event for job %s", kind, job_id)


def publish_done(result: JobResult) -> None:
    """The ``done`` event of a job that just ended, with its :class:`JobResult` (a waiter needs
    no read); one whose answer is over :data:`RESULT_IN_EVENT_MAX` characters is left out (the
    waiter reads the row). The result is serialised by pydantic straight to JSON (the event is
    ``{"type": "done", "status": .., "result": {..}}``, as ``json.dumps`` would write it)."""
    head = f'{{"type": "done", "status": {json.dumps(result.status)}'
    if len(result.text or "") + len(result.error or "") <= RESULT_IN_EVENT_MAX:
        payload = f'{head}, "result": {result.model_dump_json()}}}'
    else:
        payload = head + "}"
    _publish(result.job_id, "done", payload)


def publish_fallback(
    job_id: str, from_tier: str, from_model: str | None, to: str, reason: str
) -> None:
    """Record a fallback in the recent history and announce it (first seed's fallback triggers)."""
    event = {
        "at": time.time(),
        "job_id": job_id,
        "from_tier": from_tier,
        "from_model": from_model,
        "to": to,
        "reason": reason[:500],
    }
    payload = json.dumps(event)
    keys = get_keys()
    try:
        pipe = get_redis().pipeline()
        pipe.lpush(keys.fallback_history, payload)
        pipe.ltrim(keys.fallback_history, 0, FALLBACK_HISTORY_SIZE - 1)
        pipe.publish(keys.fallback_channel, payload)
        pipe.execute()
    except Exception:
        log.warning("could not publish fallback event for job %s", job_id)


def recent_fallbacks(limit: int = 20) -> list[dict[str, Any]]:
    """The most recent fallback events, newest first."""
    raw = cast(list[str], get_redis().lrange(get_keys().fallback_history, 0, max(limit, 1) - 1))
    return [json.loads(item) for item in raw]
