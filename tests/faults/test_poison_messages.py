"""Poison broker messages, published with kombu straight to the fleet's queues.

Pickled bodies, unknown task names, bodies that are not Celery messages, bad JSON,
hypothesis-generated arguments for the real tasks, and items pushed onto the Redis lists below
kombu that are not even kombu envelopes. Each one is refused once and recorded in
``dead_letters`` with a reason; none comes back (no redelivery loop); no worker dies; a normal
job submitted afterwards succeeds. Also: the delivery settings that make this safe are on.
"""

from __future__ import annotations

import json
import pickle
import time
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from router import submit_job
from tests.faults.helpers import Figures, rows
from tests.support import services
from tests.support.services import fleet_config
from tierflow.core.constants import ALL_QUEUES, TASK_ROUTE_JOB, TASK_RUN_ATTEMPT
from tierflow.core.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def publish(
    body: Any,
    queue: str,
    *,
    task: str | None = TASK_ROUTE_JOB,
    content_type: str = "application/json",
    content_encoding: str = "utf-8",
    raw: bool = False,
    headers: dict[str, Any] | None = None,
) -> None:
    """One message, as any client of the broker could send it (no Celery client checks)."""
    from workers.app import app

    hdrs: dict[str, Any] = {"id": str(uuid.uuid4()), "lang": "py", "retries": 0}
    if task is not None:
        hdrs["task"] = task
    hdrs.update(headers or {})
    payload = body if raw else json.dumps(body)
    with app.connection_for_write() as conn:
        conn.Producer().publish(
            payload,
            exchange="tierflow",
            routing_key=queue,
            content_type=content_type,
            content_encoding=content_encoding,
            headers=hdrs,
            declare=[app.amqp.queues[queue]],
            retry=True,
        )


RAW_ITEMS = [
    # pushed straight onto a queue's Redis list, below kombu: not even an envelope
    b"this is not json \x00\xff",
    b"[1, 2, 3]",
    b'{"body": 12}',
    b'{"properties": {}}',
    json.dumps(
        {
            "body": "!!!not base64",
            "headers": {},
            "properties": {"delivery_tag": "t", "body_encoding": "base64", "delivery_info": {}},
        }
    ).encode(),
]


def push_raw(prefix: str, queue: str, item: bytes) -> None:
    import redis

    client = redis.Redis.from_url(services.REDIS_URL)
    try:
        client.lpush(f"{prefix}:q:{queue}", item)
    finally:
        client.close()


def dead_letter_count(database: str) -> int:
    return int(rows(database, "SELECT count(*) AS n FROM dead_letters")[0]["n"])


def queued_anywhere(prefix: str) -> int:
    import redis

    client = redis.Redis.from_url(services.REDIS_URL)
    try:
        total = 0
        for key in client.scan_iter(f"{prefix}:q:*"):
            kind = client.type(key)
            if kind == b"list":
                total += int(client.llen(key))
            elif kind == b"hash" and key.endswith(b"unacked"):
                total += int(client.hlen(key))
        return total
    finally:
        client.close()


def wait_for_count(database: str, expected: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        n = dead_letter_count(database)
        if n >= expected:
            return n
        time.sleep(0.2)
    return dead_letter_count(database)


PICKLE = "application/x-python-serialize"
HANDWRITTEN: list[tuple[str, dict[str, Any]]] = [
    # (what, publish kwargs); the marker is filled in per message
    ("pickle", {"content_type": PICKLE, "content_encoding": "binary", "raw": True}),
    ("unknown task", {"task": "tierflow.no_such_task"}),
    ("not a celery message", {"task": None}),
    ("invalid json", {"raw": True}),
    ("too many args", {}),
    ("wrong types", {"task": TASK_RUN_ATTEMPT}),
    ("unknown kwarg", {}),
    ("body not a list", {}),
    ("args not a list", {"task": TASK_RUN_ATTEMPT}),
    ("unknown job", {"task": TASK_RUN_ATTEMPT}),
    ("nul and surrogate", {}),
    ("huge task name", {"task": "x" * 500}),
]


def handwritten_body(what: str, marker: str) -> Any:
    return {
        "pickle": pickle.dumps([[marker], {}, {}]),
        "unknown task": [[marker], {}, {}],
        "not a celery message": {"hello": marker},
        "invalid json": ("{not json " + marker).encode(),
        "too many args": [[marker, 1, 2, 3, 4, 5], {}, {}],
        "wrong types": [[{"job": marker}, "step", -1, 10**30], {}, {}],
        "unknown kwarg": [[], {"job_id": marker, "evil": True}, {}],
        "body not a list": {"args": marker},
        "args not a list": [marker, {}, {}],
        "unknown job": [[str(uuid.uuid4()), 0, 0, 0], {"_m": marker}, {}],
        "nul and surrogate": [[f"\x00{marker}\ud800"], {}, {}],
        "huge task name": [[marker], {}, {}],
    }[what]


JSONISH = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20)
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
ARGS = st.one_of(
    st.lists(JSONISH, max_size=6),
    st.tuples(st.uuids().map(str), st.integers(-5, 2000), st.integers(-5, 2000)).map(list),
)
KWARGS = st.one_of(
    st.just({}), st.dictionaries(st.sampled_from(["job_id", "step", "x", "attempt_no"]), JSONISH)
)


def test_poison_messages_are_refused_once_recorded_and_never_kill_a_worker(
    fleet, database: str
) -> None:
    import os

    prefix = os.environ["TIERFLOW_KEY_PREFIX"]
    workers = fleet(fleet_config(), workers=2, concurrency=2)
    start = dead_letter_count(database)
    published = 0
    for what, kwargs in HANDWRITTEN:
        queue = ALL_QUEUES[published % 4]  # router and the tier queues
        publish(handwritten_body(what, f"poison-{published}"), queue, **kwargs)
        published += 1

    @settings(
        max_examples=50,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(
        task=st.sampled_from([TASK_ROUTE_JOB, TASK_RUN_ATTEMPT]),
        args=ARGS,
        kwargs=KWARGS,
        queue=st.sampled_from(ALL_QUEUES[:4]),
    )
    def publish_random(task: str, args: list[Any], kwargs: dict[str, Any], queue: str) -> None:
        nonlocal published
        publish([args, kwargs, {}], queue, task=task)
        published += 1

    publish_random()
    for i, item in enumerate(RAW_ITEMS):
        push_raw(prefix, ALL_QUEUES[i % 4], item)
        published += 1
    seen = wait_for_count(database, start + published, timeout=60)
    time.sleep(3)  # anything redelivered or stored twice would show up now
    final = dead_letter_count(database)
    letters = rows(
        database, "SELECT queue, task, reason, body_excerpt FROM dead_letters ORDER BY id"
    )[start:]
    left_in_broker = queued_anywhere(prefix)

    job = submit_job("Extract topic from: 'after the poison'", "extract_topic")
    result = job.wait(timeout=30)

    fig = Figures("poison messages", jobs=1, succeeded=int(result.status == "succeeded"))
    fig.faults = {"poison_messages": published}
    fig.notes.update(
        dead_letters=final - start,
        left_in_broker=left_in_broker,
        workers_alive=sum(1 for w in workers if w.proc.poll() is None),
        reasons=sorted({letter["reason"].split(" got ")[0][:45] for letter in letters}),
    )
    fig.duplicates = max(0, final - start - published)  # a message recorded twice
    fig.lost = max(0, published - (final - start))  # a message dropped silently
    fig.report().assert_clean()
    assert seen == final == start + published
    assert all(letter["reason"] for letter in letters)
    assert left_in_broker == 0
    assert fig.notes["workers_alive"] == len(workers)
    assert result.status == "succeeded", result.error
    for w in workers:
        assert "Traceback" not in w.output() or "Unrecoverable error" not in w.output()


def test_delivery_settings_are_safe() -> None:
    import celeryconfig

    assert celeryconfig.accept_content == ["json"]
    assert celeryconfig.task_serializer == celeryconfig.result_serializer == "json"
    assert celeryconfig.task_acks_late is True
    assert celeryconfig.task_reject_on_worker_lost is True
    assert celeryconfig.worker_prefetch_multiplier == 1
    assert (
        celeryconfig.task_time_limit < celeryconfig.broker_transport_options["visibility_timeout"]
    )
    for soft, hard, visibility in ((10, 10, 20), (5, 20, 20), (5, 30, 20)):
        with pytest.raises(ValidationError):
            Settings(task_soft_time_limit=soft, task_time_limit=hard, visibility_timeout=visibility)
    Settings(task_soft_time_limit=5, task_time_limit=10, visibility_timeout=15, lease_s=5)
    with pytest.raises(ValidationError):  # a lease as long as the visibility timeout
        Settings(task_soft_time_limit=5, task_time_limit=10, visibility_timeout=15, lease_s=15)
