"""The fleet's kombu transport (:mod:`workers.transport`) on real Redis, through kombu's own
consumer loop: what it sends is what kombu would send, and what it saves changes no delivery.

- the consumer's ``BRPOP`` is byte for byte kombu's, for every rotation of the queues (the
  packed command is only reused, never different);
- messages come out most urgent first, across tierflow's ten priorities and several queues;
- kombu's commands share one client per channel, and a new pool gets a new client.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kombu import Connection, Exchange, Producer, Queue
from kombu.transport import redis as kombu_redis

from tests.support import services
from tierflow.core.constants import PRIORITY_STEPS, QUEUE_PRIORITY_SEP
from workers.transport import FleetRedisChannel, FleetRedisTransport

pytestmark = [pytest.mark.integration]


@pytest.fixture
def connection(services_ready: None) -> Iterator[Connection]:
    prefix = f"tftransport-{uuid.uuid4().hex[:8]}:q:"
    conn = Connection(
        services.REDIS_URL,
        transport=FleetRedisTransport,
        transport_options={
            "global_keyprefix": prefix,
            "priority_steps": list(PRIORITY_STEPS),
            "sep": QUEUE_PRIORITY_SEP,
        },
    )
    try:
        yield conn
    finally:
        conn.release()
        services.delete_prefix(prefix.rstrip(":"))


class Recorder:
    """Stands in for the consumer's Redis connection: records the bytes each path sends."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.sent: list[bytes] = []

    def pack_command(self, *args: Any) -> Any:
        return self.real.pack_command(*args)

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        chunks = command if isinstance(command, list) else [command]
        self.sent.append(b"".join(bytes(c) for c in chunks))

    def send_command(self, *args: Any, **kwargs: Any) -> None:
        self.send_packed_command(self.real.pack_command(*args))


def test_the_brpop_is_kombus_own_for_every_rotation(connection: Connection) -> None:
    channel = connection.default_channel
    assert isinstance(channel, FleetRedisChannel)
    names = [f"q{i}" for i in range(5)]
    for name in names:
        channel.basic_consume(name, True, lambda *_: None, f"tag-{name}")
    real = channel.client.connection_pool.make_connection()
    recorder, kept = Recorder(real), channel.client.connection
    channel.client.connection = recorder
    ours, kombus = [], []
    try:
        for i in range(2 * len(names)):  # every rotation, twice: the second time from the cache
            channel._brpop_start()
            ours.append(recorder.sent.pop())
            kombu_redis.Channel._brpop_start(channel)  # kombu's own, on the same queue cycle
            kombus.append(recorder.sent.pop())
            channel._queue_cycle.rotate(names[i % len(names)])  # as a delivery from it does
    finally:  # nothing reached Redis: no BRPOP reply to wait for on close
        channel.client.connection, channel._in_poll = kept, False
        real.disconnect()
    assert ours == kombus
    assert len(set(ours)) == len(names)  # each order its own command, reused the second time
    assert all(c.count(b"tftransport-") == len(names) * len(PRIORITY_STEPS) for c in ours)


def test_messages_come_out_most_urgent_first_across_queues(connection: Connection) -> None:
    exchange = Exchange("", type="direct")
    queues = [Queue(name, exchange, routing_key=name) for name in ("tier.a", "tier.b")]
    producer = Producer(connection.default_channel)
    sent = []
    # tierflow priority p goes out as 9 - p (see router.dispatch): send the least urgent first
    for tierflow_priority in (0, 3, 5, 6, 9, 1):
        for queue in queues:
            body = {"p": tierflow_priority, "q": queue.name}
            producer.publish(body, routing_key=queue.name, priority=9 - tierflow_priority,
                             serializer="json", declare=[queue])  # fmt: skip
            sent.append(body)
    got: list[dict[str, Any]] = []

    def take(body: dict[str, Any], message: Any) -> None:
        got.append(body)
        message.ack()

    with connection.Consumer(queues, callbacks=[take], prefetch_count=1):
        while len(got) < len(sent):
            connection.drain_events(timeout=5)
    assert sorted(b["p"] for b in got) == sorted(b["p"] for b in sent)
    priorities = [b["p"] for b in got]
    assert priorities == sorted(priorities, reverse=True), priorities


def test_kombus_commands_share_one_client_per_pool(connection: Connection) -> None:
    channel = connection.default_channel
    first = channel._create_client()
    assert channel._create_client() is first
    assert first.connection_pool is channel.pool
    channel._disconnect_pools()  # what kombu does after a fork or a connection error
    second = channel._create_client()
    assert second is not first and second.connection_pool is channel.pool
    assert channel._create_client(asynchronous=True) is not second  # the consumer's own
