"""Queue depth as the autoscalers see it: every priority list kombu writes, on real Redis.

No worker runs here, so what is sent stays queued. A job at the default priority lands in the
``:4`` list, which the old KEDA objects (one ``redis`` trigger on ``<prefix>:q:tier.<name>``)
never counted; :func:`workers.queues.queue_depth` does, and so does the endpoint the KEDA
objects in ``infra/k8s`` read (parsed here, their URLs served by the real depth server).
"""

from __future__ import annotations

import json
import os
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from router.dispatch import enqueue_attempt
from tests.support import services
from tierflow.core.celery_app import app
from tierflow.core.constants import ALL_QUEUES, Tier, priority_lists, tier_queue
from tierflow.core.redis_client import get_keys
from workers.queues import broker_redis, depth_server, queue_depth, queue_load, reserved_counts

pytestmark = pytest.mark.integration

K8S = services.REPO / "infra" / "k8s"
QUEUE = tier_queue(Tier.LOCAL_FAST)


@pytest.fixture
def empty_queues(database: str) -> Iterator[None]:
    prefix = os.environ["TIERFLOW_KEY_PREFIX"]
    services.delete_prefix(prefix, "q:*")
    yield
    services.delete_prefix(prefix, "q:*")


def k8s_objects() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(Path(K8S).glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def queued_keys(queue: str) -> dict[str, int]:
    """Every broker key of ``queue`` that holds something, found by scanning Redis itself."""
    client = broker_redis()
    base = get_keys().queue_lists(queue)[0]
    return {
        k: int(client.llen(k))
        for k in client.scan_iter(f"{base}*")
        if client.type(k) == "list" and client.llen(k)
    }


def test_priority_lists_are_the_lists_kombu_writes(empty_queues: None) -> None:
    lists = get_keys().queue_lists(QUEUE)
    assert lists == priority_lists(QUEUE, os.environ["TIERFLOW_KEY_PREFIX"])
    assert len(lists) == 10 and len(set(lists)) == 10
    # tierflow priority p is sent as Redis priority 9 - p: 9 -> list 0, 5 -> list 4, 0 -> list 9
    for priority, index in ((9, 0), (5, 4), (0, 9), (7, 2)):
        enqueue_attempt(str(uuid.uuid4()), Tier.LOCAL_FAST, 0, 0, priority=priority)
        assert queued_keys(QUEUE).get(lists[index]) == 1, (priority, queued_keys(QUEUE))
    assert set(queued_keys(QUEUE)) <= set(lists)
    assert queue_depth(QUEUE) == 4


def test_a_default_priority_job_is_counted_where_keda_looks(empty_queues: None) -> None:
    enqueue_attempt(str(uuid.uuid4()), Tier.LOCAL_FAST, 0, 0)  # priority 5, the default
    (key,) = queued_keys(QUEUE)
    assert key == get_keys().queue_lists(QUEUE)[4] and key.endswith(f"{QUEUE}:4")
    assert int(broker_redis().llen(get_keys().queue_lists(QUEUE)[0])) == 0  # the old KEDA key
    assert queue_depth(QUEUE) == 1
    assert queue_depth(tier_queue(Tier.API_FALLBACK)) == 0

    objects = k8s_objects()
    deployments = {d["metadata"]["name"] for d in objects if d["kind"] == "Deployment"}
    scaled = [d for d in objects if d["kind"] == "ScaledObject"]
    assert len(scaled) == 3
    server = depth_server("127.0.0.1", 0, cache_s=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        seen = {}
        for obj in scaled:
            assert obj["spec"]["scaleTargetRef"]["name"] in deployments, obj["metadata"]
            (trigger,) = obj["spec"]["triggers"]
            assert trigger["type"] == "metrics-api"
            meta = trigger["metadata"]
            url = urlsplit(meta["url"])
            service = url.hostname
            assert any(d["kind"] == "Service" and d["metadata"]["name"] == service for d in objects)
            queue = url.path.rsplit("/", 1)[-1]
            assert queue in ALL_QUEUES
            port = server.server_address[1]
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{url.path}", timeout=5) as r:
                body = json.loads(r.read())
            seen[queue] = body[meta["valueLocation"]]
    finally:
        server.shutdown()
        server.server_close()
    assert seen == {QUEUE: 1, "tier.local_quality": 0, "tier.api_fallback": 0}


def test_messages_taken_but_not_acknowledged_count_as_reserved(empty_queues: None) -> None:
    for _ in range(3):
        enqueue_attempt(str(uuid.uuid4()), Tier.LOCAL_FAST, 0, 0)
    with app.connection_for_read() as conn:
        queue = app.amqp.queues[QUEUE](conn.default_channel)
        message = queue.get(no_ack=False)  # as a worker holds it while the task runs
        assert message is not None
        assert reserved_counts() == {QUEUE: 1}
        assert queue_load((QUEUE,))[QUEUE] == {"queued": 2, "reserved": 1, "depth": 3}
        message.ack()
    assert reserved_counts() == {}
    assert queue_load((QUEUE,))[QUEUE]["depth"] == 2
