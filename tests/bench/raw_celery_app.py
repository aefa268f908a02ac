"""The raw Celery baseline of ``bench_fleet.py``: one no-op task, nothing of tierflow.

Imported by the benchmark and by its worker (``celery -A tests.bench.raw_celery_app worker``),
configured from the environment the benchmark sets before either imports it:

- ``TFBENCH_RAW_BROKER_URL``  the Redis the fleet uses (broker and result backend)
- ``TFBENCH_RAW_PREFIX``      prefix of every key, queue and result (the run's own)
- ``TFBENCH_RAW_QUEUE``       the queue the no-op task goes to

Delivery settings match the fleet's worker (JSON only, ``acks_late``, prefetch 1); results go to
a Redis result backend under the same prefix, and ``result.get()`` is woken by its pub/sub.
"""

from __future__ import annotations

import os

from celery import Celery

BROKER_URL = os.environ.get("TFBENCH_RAW_BROKER_URL", "redis://127.0.0.1:6379/0")
PREFIX = os.environ.get("TFBENCH_RAW_PREFIX", "tfbench-raw")
QUEUE = os.environ.get("TFBENCH_RAW_QUEUE", "tfbench.raw")
NOOP = "tfbench.noop"

app = Celery("tfbench_raw")
app.conf.update(
    broker_url=BROKER_URL,
    result_backend=BROKER_URL,
    broker_connection_retry_on_startup=True,
    broker_transport_options={"global_keyprefix": f"{PREFIX}:"},
    result_backend_transport_options={"global_keyprefix": f"{PREFIX}:"},
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_accept_content=["json"],
    result_expires=600,
    task_default_queue=QUEUE,
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    worker_hijack_root_logger=False,
)


@app.task(name=NOOP)
def noop(i: int) -> int:
    return i
