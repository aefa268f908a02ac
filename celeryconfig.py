"""Celery configuration of the fleet, built from tierflow's one settings object.

- JSON only, on every queue: a pickled or otherwise non-JSON message is refused by kombu.
- One queue per tier plus ``router`` and ``maintenance``; tasks are routed by name.
- ``acks_late`` + ``task_reject_on_worker_lost``: a message is acknowledged only after its task
  finished, and goes back to the queue when the worker dies (a pool child at once; a whole
  worker after the visibility timeout). Writes are idempotent, so the redelivery never charges
  twice (see :mod:`workers.persistence`).
- The hard time limit stays below Redis' visibility timeout (checked in settings), or a slow task
  would be handed to a second worker while the first still runs it.
- Prefetch: 1 by default, so a CPU worker never hoards jobs another worker could take;
  ``tierflow worker`` raises it for I/O-bound tiers (see ``workers.pools``).
"""

from kombu import Exchange, Queue

from tierflow.core.constants import (
    ALL_QUEUES,
    AUTO_MODE_INTERVAL_S,
    MAINTENANCE_QUEUE,
    PRIORITY_STEPS,
    PROVIDER_BATCH_INTERVAL_S,
    QUEUE_PRIORITY_SEP,
    ROUTER_QUEUE,
    SWEEP_INTERVAL_S,
    TASK_AUTO_MODE,
    TASK_POLL_PROVIDER_BATCHES,
    TASK_RESUME_ATTEMPT,
    TASK_ROUTE_JOB,
    TASK_RUN_ATTEMPT,
    TASK_RUN_PACK,
    TASK_SUBMIT_PROVIDER_BATCHES,
    TASK_SWEEP,
    queue_key_prefix,
)
from tierflow.core.settings import get_settings

_settings = get_settings()

broker_url = _settings.broker_url
# kombu's Redis transport, except that a malformed queue item is dropped and recorded instead of
# ending the worker (see workers.poison), and kombu's own commands share one Redis client per
# channel (see workers.transport). Used for redis:// and rediss:// alike.
broker_transport = "workers.transport:FleetRedisTransport"
broker_connection_retry_on_startup = True
broker_transport_options = {
    "visibility_timeout": _settings.visibility_timeout,
    # The queue layout (prefix, priority lists and their names) is tierflow.core.constants', so
    # queue depths and the autoscalers count the same lists kombu writes.
    "global_keyprefix": queue_key_prefix(_settings.key_prefix),
    "priority_steps": list(PRIORITY_STEPS),
    "sep": QUEUE_PRIORITY_SEP,
    # A worker that died (kill -9, lost host) leaves its unacknowledged messages behind; the
    # other workers put them back on their queues once the visibility timeout has passed.
    # kombu looks every interval x throttle seconds (100 s by default); look every tenth of
    # the timeout (1 to 60 s) instead, so a crash costs about one visibility timeout.
    "unacked_restore_interval": max(1, min(60, _settings.visibility_timeout // 10)),
    "unacked_restore_throttle": 1,
}
if broker_url and broker_url.startswith("rediss://"):
    import ssl

    broker_use_ssl = {"ssl_cert_reqs": ssl.CERT_REQUIRED}

task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
event_serializer = "json"
result_accept_content = ["json"]
task_ignore_result = True  # results live in PostgreSQL; waiters are woken over Redis pub/sub
result_backend = None

task_acks_late = True
task_reject_on_worker_lost = True
task_acks_on_failure = True
task_acks_on_timeout = True
task_soft_time_limit = _settings.task_soft_time_limit
task_time_limit = _settings.task_time_limit
task_track_started = False
# Task events (about eight Redis publishes per job) only when asked: Flower turns the workers'
# events on itself when it starts (its enable_events), and TIERFLOW_TASK_EVENTS=true sends them
# from the start, queued ("sent") jobs included.
task_send_sent_event = _settings.task_events
worker_send_task_events = _settings.task_events
worker_prefetch_multiplier = 1
worker_cancel_long_running_tasks_on_connection_loss = True
worker_hijack_root_logger = False
worker_consumer = "workers.poison:DeadLetterConsumer"

_exchange = Exchange("tierflow", type="direct")
task_queues = [Queue(name, _exchange, routing_key=name) for name in ALL_QUEUES]
task_default_queue = ROUTER_QUEUE
task_default_exchange = "tierflow"
task_default_routing_key = ROUTER_QUEUE
task_routes = {
    TASK_ROUTE_JOB: {"queue": ROUTER_QUEUE, "routing_key": ROUTER_QUEUE},
    TASK_SWEEP: {"queue": MAINTENANCE_QUEUE, "routing_key": MAINTENANCE_QUEUE},
    TASK_AUTO_MODE: {"queue": MAINTENANCE_QUEUE, "routing_key": MAINTENANCE_QUEUE},
    TASK_SUBMIT_PROVIDER_BATCHES: {"queue": MAINTENANCE_QUEUE, "routing_key": MAINTENANCE_QUEUE},
    TASK_POLL_PROVIDER_BATCHES: {"queue": MAINTENANCE_QUEUE, "routing_key": MAINTENANCE_QUEUE},
    # run_attempt and resume_attempt are sent to tier.<name> explicitly by whoever enqueues them.
    TASK_RUN_ATTEMPT: {"queue": "tier.local_fast", "routing_key": "tier.local_fast"},
    TASK_RESUME_ATTEMPT: {"queue": "tier.api_fallback", "routing_key": "tier.api_fallback"},
    # run_pack too (router/dispatch.py's enqueue_pack names the first local tier's queue).
    TASK_RUN_PACK: {"queue": "tier.local_fast", "routing_key": "tier.local_fast"},
}

beat_schedule = {
    # Every router worker runs beat (``-B``); the task's Redis lock lets one sweep run per
    # interval fleet-wide, however many router workers there are.
    "sweep-stuck-jobs": {
        "task": TASK_SWEEP,
        "schedule": SWEEP_INTERVAL_S,
        "kwargs": {"scheduled": True},
    },
    # Automatic mode (workers/automode.py): one check per interval fleet-wide, under its lock.
    "check-auto-mode": {
        "task": TASK_AUTO_MODE,
        "schedule": AUTO_MODE_INTERVAL_S,
        "kwargs": {"scheduled": True},
    },
    # Provider Batch APIs (workers/provider_batch): group and submit deferred API-tier requests,
    # poll the open batches and resume their attempts; each one run per interval fleet-wide.
    "submit-provider-batches": {
        "task": TASK_SUBMIT_PROVIDER_BATCHES,
        "schedule": PROVIDER_BATCH_INTERVAL_S,
        "kwargs": {"scheduled": True},
    },
    "poll-provider-batches": {
        "task": TASK_POLL_PROVIDER_BATCHES,
        "schedule": PROVIDER_BATCH_INTERVAL_S,
        "kwargs": {"scheduled": True},
    },
}
