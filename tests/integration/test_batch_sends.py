"""A batch chunk's sends (no worker needed): every stored line's first attempt on its tier's
queue in pipelined writes, the same message a one-by-one send writes; on a contended tier the
chunk's admissions in one round trip, with the same lines and slots as one offer each."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import pytest
import redis

from router.batch import CHUNK_LINES, submit_batch
from router.dispatch import attempt_payload, enqueue_attempt, fair_share
from router.fairshare import BATCH_LINE, FairShare
from schemas.tables import Job
from tests.support import services
from tests.support.services import fake_model, fleet_config
from tierflow.core.config import parse_config
from tierflow.core.constants import BATCH_PRIORITY, Keys, Tier, priority_lists, tier_queue
from tierflow.core.db import session_scope
from tierflow.core.redis_client import get_keys

pytestmark = [pytest.mark.integration]
FAST = Tier.LOCAL_FAST
LINES = CHUNK_LINES + 23  # two chunks


def spec(i: int) -> dict[str, Any]:
    return {
        "prompt": f"Extract topic from: 'note {i}'",
        "action_type": "extract_topic",
        "context": {"repo": "tierflow", "n": i},
        "metadata": {"daemon": "nightly", "tags": ["a", "b"]},
    }


def queued(client: redis.Redis, queue: str) -> list[dict[str, Any]]:
    """The messages waiting on ``queue`` (every priority list), oldest first, with the list
    each is on."""
    found = []
    for name in priority_lists(queue, get_keys().prefix):
        for raw in reversed(client.lrange(name, 0, -1)):
            found.append({"list": name, **json.loads(raw)})
    return found


def body_of(message: dict[str, Any]) -> list[Any]:
    return json.loads(base64.b64decode(message["body"]))


def test_a_chunk_is_sent_in_pipelined_writes_as_one_by_one_sends_would(fleet) -> None:
    fleet(fleet_config(), workers=0)
    client = redis.Redis.from_url(services.REDIS_URL)
    done = submit_batch(iter([spec(i) for i in range(LINES)]), name="sends", in_flight=0)
    assert done.sent == LINES and not done.errors
    with session_scope() as session:
        jobs = {j.id: j for j in session.query(Job).filter(Job.batch_id == done.batch_id)}
    messages = queued(client, tier_queue(FAST))
    assert len(messages) == LINES
    assert sorted(body_of(m)[0][0] for m in messages) == sorted(jobs)
    assert {tuple(body_of(m)[0][1:]) for m in messages} == {(0, 0, 0)}  # step, attempt, retries
    assert [jobs[body_of(m)[0][0]].batch_line for m in messages] == list(range(LINES))
    sample = jobs[body_of(messages[7])[0][0]]  # the columns stored from the chunk's arrays
    assert (sample.context, sample.job_metadata) == (spec(7)["context"], spec(7)["metadata"])
    assert (sample.status, sample.priority, sample.stream) == ("routed", BATCH_PRIORITY, False)
    assert sample.plan is not None and sample.plan["chain"][0] == FAST.value

    # The same job sent alone (no batch): the same list, task, arguments and labels.
    enqueue_attempt(sample.id, FAST, 0, 0, priority=BATCH_PRIORITY, action="extract_topic")
    alone = queued(client, tier_queue(FAST))[-1]
    batched = next(m for m in messages if body_of(m)[0][0] == sample.id)
    assert alone["list"] == batched["list"]
    assert body_of(alone) == body_of(batched)
    for field in ("task", "shadow", "argsrepr"):
        assert alone["headers"][field] == batched["headers"][field]
    assert alone["properties"]["priority"] == batched["properties"]["priority"]
    client.close()


def test_a_chunk_on_a_contended_tier_takes_free_slots_and_waits_in_the_batch_line(fleet) -> None:
    capped = fake_model("fake-fast", limits={"max_concurrency": 3})
    fleet(fleet_config(local_fast=[capped]), workers=0)
    client = redis.Redis.from_url(services.REDIS_URL)
    done = submit_batch(iter([spec(i) for i in range(LINES)]), name="contended", in_flight=0)
    assert done.sent == LINES
    assert len(queued(client, tier_queue(FAST))) == 3  # the tier's slots, no more
    loads = fair_share().loads(FAST)
    assert (loads[BATCH_LINE].running, loads[BATCH_LINE].waiting) == (3, LINES - 3)
    client.close()


def _state(client: redis.Redis, stem: str) -> dict[str, Any]:
    """Every fair-share key of a tier, without the key prefix (what the admissions left)."""
    found: dict[str, Any] = {}
    for key in client.scan_iter(f"{stem}:*"):
        name = key.decode()[len(stem) :]
        kind = client.type(key)
        if kind == b"zset":
            found[name] = [(m, s % 1e12) for m, s in client.zrange(key, 0, -1, withscores=True)]
        elif kind == b"hash":
            found[name] = client.hgetall(key)
        else:
            found[name] = client.get(key)
    found.pop(":slots", None)  # expiries carry the clock's milliseconds
    return found


def test_offer_many_admits_as_offers_one_by_one() -> None:
    if not services.port_open("127.0.0.1", 6379):
        services.skip_unless_ci("no Redis at 127.0.0.1:6379")
    client = redis.Redis.from_url(services.REDIS_URL)
    raw = fleet_config(local_fast=[fake_model("fast", limits={"max_concurrency": 4})])
    raw["daemons"] = {"a": {"weight": 3}, "b": {"max_in_flight": 1}}
    config = parse_config(raw)
    payloads = [
        attempt_payload(f"job{i}", FAST, 0, 0, 0, priority, 0, "extract_topic", daemon)
        for i, (daemon, priority) in enumerate(
            [("a", 5), ("b", 5), (None, BATCH_PRIORITY), ("b", 7), ("a", 5), ("a", 9)] * 3
        )
    ]
    results = []
    for many in (False, True):
        keys = Keys(f"tffairmany-{uuid.uuid4().hex[:8]}")
        share = FairShare(client, keys, config, 600.0)
        try:
            if many:
                sent = share.offer_many(FAST, payloads)
            else:
                sent = [
                    p
                    for payload in payloads
                    for p in share.offer(FAST, payload["d"], payload["m"], payload, payload["p"])
                ]
            results.append((sent, _state(client, keys.fair(FAST.value))))
        finally:
            services.delete_prefix(keys.prefix)
    (one_by_one, state_one), (together, state_many) = results
    assert len(one_by_one) == 4 and together == one_by_one
    assert state_many == state_one
    assert FairShare(client, Keys("x"), config, 600.0).offer_many(FAST, []) == []
    client.close()
