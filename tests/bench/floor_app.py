"""The design floor of ``bench_fleet.py``: a job moved as tierflow's design moves it, nothing else.

What the design requires of one job (``/work/shared/bench/design_floor.py`` states it; this is
the benchmark's own implementation):

1. the client inserts the job row in PostgreSQL (one autocommit transaction) and sends the job's
   id to the routing task;
2. ``route`` updates the row (one commit) and sends the id to a tier queue;
3. ``attempt`` inserts the attempt row and finishes the job (one transaction, one commit) and
   publishes the result on Redis;
4. the client, subscribed ONCE to a pattern (``<prefix>:floor:done:*``), is woken with the result
   in the message: no read of the row.

Two broker hops, three PostgreSQL transactions, one publish: no classification, no gate, no
limits, no reads. Its own tables (``floor_jobs``, ``floor_attempts``) in the bench database, its
own queues under the run's prefix; its workers are real ``celery worker`` processes started by
the benchmark with the same pool and concurrency as tierflow's.

Configured from the environment the benchmark sets before this module is imported:

- ``TFBENCH_FLOOR_BROKER_URL``  the Redis the fleet uses (broker, and the pub/sub)
- ``TFBENCH_FLOOR_PREFIX``      prefix of every key, queue and channel (the run's own)
- ``TFBENCH_FLOOR_PG``          libpq URL of the bench database (psycopg, no SQLAlchemy)

Delivery settings match the fleet's (JSON only, ``acks_late``, prefetch from the command line,
no result backend, results ignored). Unlike the fleet it sends no task events.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import psycopg
import redis
from celery import Celery

BROKER_URL = os.environ.get("TFBENCH_FLOOR_BROKER_URL", "redis://127.0.0.1:6379/0")
PREFIX = os.environ.get("TFBENCH_FLOOR_PREFIX", "tfbench-floor")
PG_URL = os.environ.get("TFBENCH_FLOOR_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
ROUTER_QUEUE = "floor.router"
TIER_QUEUE = "floor.tier"
ROUTE = "tfbench.floor.route"
ATTEMPT = "tfbench.floor.attempt"
CHANNEL_PATTERN = f"{PREFIX}:floor:done:*"

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS floor_jobs (id text PRIMARY KEY, status text NOT NULL,"
    " tier text, result text, created_at timestamptz NOT NULL DEFAULT now(),"
    " finished_at timestamptz)",
    "CREATE TABLE IF NOT EXISTS floor_attempts (job_id text NOT NULL REFERENCES floor_jobs (id),"
    " attempt_no int NOT NULL, answer text, PRIMARY KEY (job_id, attempt_no))",
)

app = Celery("tfbench_floor")
app.conf.update(
    broker_url=BROKER_URL,
    broker_connection_retry_on_startup=True,
    broker_transport_options={"global_keyprefix": f"{PREFIX}:floor:q:"},
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    result_backend=None,
    task_default_queue=ROUTER_QUEUE,
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    worker_hijack_root_logger=False,
)

_local = threading.local()
_redis: redis.Redis | None = None


def channel(job_id: str) -> str:
    return f"{PREFIX}:floor:done:{job_id}"


def create_schema(pg_url: str = PG_URL) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        for statement in SCHEMA:
            conn.execute(statement)


def _conn() -> psycopg.Connection[Any]:
    """One connection per worker thread (the floor needs no pool)."""
    conn = getattr(_local, "conn", None)
    if conn is None or conn.closed or conn.broken:
        conn = _local.conn = psycopg.connect(PG_URL)
    return conn


def _redis_client() -> redis.Redis:
    global _redis
    if _redis is None:
        _redis = redis.Redis.from_url(BROKER_URL)
    return _redis


@app.task(name=ROUTE)
def route(job_id: str) -> None:
    conn = _conn()
    conn.execute(
        "UPDATE floor_jobs SET status = 'routed', tier = 'local_fast' WHERE id = %s", (job_id,)
    )
    conn.commit()
    app.send_task(ATTEMPT, args=[job_id], queue=TIER_QUEUE)


@app.task(name=ATTEMPT)
def attempt(job_id: str) -> None:
    conn = _conn()
    conn.execute(
        "INSERT INTO floor_attempts (job_id, attempt_no, answer) VALUES (%s, 1, 'ok')", (job_id,)
    )
    conn.execute(
        "UPDATE floor_jobs SET status = 'succeeded', result = 'ok', finished_at = now()"
        " WHERE id = %s",
        (job_id,),
    )
    conn.commit()
    _redis_client().publish(channel(job_id), "ok")


class FloorClient:
    """The floor's client: insert + send, and one pattern subscription for every wake-up."""

    def __init__(self, pg_url: str = PG_URL) -> None:
        self.pg = psycopg.connect(pg_url, autocommit=True)
        self.redis = redis.Redis.from_url(BROKER_URL)
        self.sub = self.redis.pubsub(ignore_subscribe_messages=True)
        self.sub.psubscribe(CHANNEL_PATTERN)
        # The subscription is confirmed before the first job is sent.
        self.sub.get_message(timeout=1.0, ignore_subscribe_messages=False)

    def submit(self, job_id: str) -> None:
        self.pg.execute("INSERT INTO floor_jobs (id, status) VALUES (%s, 'queued')", (job_id,))
        app.send_task(ROUTE, args=[job_id], queue=ROUTER_QUEUE)

    def next_done(self, timeout: float) -> tuple[str, str] | None:
        """``(job_id, result)`` of the next finished job, or None after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            message = self.sub.get_message(timeout=min(left, 1.0))
            if message and message["type"] == "pmessage":
                job_id = message["channel"].decode().rsplit(":", 1)[1]
                return job_id, message["data"].decode()
        return None

    def close(self) -> None:
        try:
            self.sub.close()
        finally:
            self.redis.close()
            self.pg.close()
