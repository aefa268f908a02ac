"""Many waiters in one process share one pub/sub connection, and none misses its wake-up."""

from __future__ import annotations

import gc
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from router import submit_job
from router.waiter import event_hub
from tests.support.services import fleet_config
from tierflow.core.redis_client import get_redis

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def pubsub_clients() -> int:
    """Connections to Redis subscribed to something (channels or patterns)."""
    return sum(
        1 for c in get_redis().client_list() if int(c.get("psub", 0)) or int(c.get("sub", 0))
    )


def test_four_hundred_concurrent_waits_share_one_subscription(fleet) -> None:
    fleet(fleet_config(), workers=1, concurrency=8)
    hub = event_hub()  # the process's one subscription, made once
    gc.collect()  # handles earlier tests dropped give their inboxes back (weakref.finalize)
    already = hub.waiting  # a handle an earlier test still holds keeps its inbox: not ours
    before = pubsub_clients()
    handles = [submit_job(f"Extract topic from: 'note {i}'", "extract_topic") for i in range(400)]
    with ThreadPoolExecutor(max_workers=400) as pool:
        waits = [pool.submit(h.wait, 120) for h in handles]
        time.sleep(0.5)  # every thread is waiting by now (400 jobs take seconds to run)
        peak = pubsub_clients()
        results = [w.result() for w in waits]
    assert [r.status for r in results] == ["succeeded"] * 400
    assert peak - before <= 1, f"{peak - before} new subscribed connections for 400 waiters"
    assert not any(hub.registered(h.job_id) for h in handles)  # every waiter unregistered
    assert hub.waiting <= already


def test_ten_thousand_waiters_in_one_process_open_no_connection_of_their_own(
    services_ready: None,
) -> None:
    """The issue's scale: 10,000 jobs waited on by one process share the one subscription,
    and each waiter gets its own job's event and no other's."""
    import json
    import uuid

    import psutil

    from tierflow.core.redis_client import get_keys

    def own_redis_connections() -> int:
        """This process's TCP connections to Redis (other processes share that Redis)."""
        return sum(
            1 for c in psutil.Process().net_connections("tcp") if c.raddr and c.raddr.port == 6379
        )

    hub = event_hub()
    before_subscribed, before_own = pubsub_clients(), own_redis_connections()
    jobs = [str(uuid.uuid4()) for _ in range(10_000)]
    inboxes = {job: hub.register(job) for job in jobs}
    try:
        assert hub.live
        keys, client = get_keys(), get_redis()
        for start in range(0, len(jobs), 1000):
            pipe = client.pipeline(transaction=False)
            for job in jobs[start : start + 1000]:
                pipe.publish(keys.job_channel(job), json.dumps({"type": "done", "job": job}))
            pipe.execute()
        for job, inbox in inboxes.items():
            event = inbox.get(timeout=30)
            assert event["job"] == job
            assert inbox.empty()
        assert pubsub_clients() - before_subscribed <= 1  # the hub's own, if it is new
        assert own_redis_connections() - before_own <= 2  # that and one pooled
    finally:
        for job, inbox in inboxes.items():
            hub.unregister(job, inbox)
    assert not any(hub.registered(job) for job in jobs)
