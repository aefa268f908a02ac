"""How each tier's workers are sized (``tierflow worker --tier NAME``).

- ``local_fast``: CPU-bound local inference (Ollama on the same box, or the embedded engine):
  few threads, prefetch 1 so an idle worker elsewhere can take the next job; as many threads
  as the embedded engine has slots when it serves the tier (it decodes that many at once).
- ``local_quality``: a vLLM server batches continuously and wants hundreds of requests in flight,
  so the worker is sized for I/O concurrency, not for CPU count: 640 threads (one thread per
  request in flight; measured in ``tests/bench/bench_gpu.py`` to keep more than 512 requests in
  flight to one server from one process), prefetch 2 (1280 reserved messages: a thread that
  finishes finds its next message already here; with prefetch 1 each waited for the consumer to
  fetch one, and the worker reached 73% of a direct client's rate against 90% with 2 and 96%
  with 4; 4 would hold 2560 messages away from a second worker of the tier). Set
  ``TIERFLOW_LOCAL_QUALITY_CONCURRENCY`` (or ``tierflow worker --concurrency``) to size it to the
  servers one worker feeds: about the sum of their ``max_num_seqs``.
- ``api_fallback``: I/O-bound HTTP calls under fleet-wide rate limits (the limits, not the pool,
  bound the request rate).
- ``router``: classification is cheap; run alone it also runs beat (``-B``), which schedules the
  sweeper (``tierflow up`` runs beat as its own child).

Every pool is ``threads``: the work is waiting on HTTP, PostgreSQL and Redis. Celery enforces
``task_time_limit`` only in the prefork pool, so here each blocking call is bounded on its own:
model calls by their timeout (capped at the soft time limit), PostgreSQL statements at 60 s,
Redis operations at 10 s. A task therefore ends well before the broker's visibility timeout.
"""

from __future__ import annotations

from dataclasses import dataclass

from tierflow.core.constants import MAINTENANCE_QUEUE, ROUTER_QUEUE, Tier, tier_queue
from tierflow.core.settings import get_settings
from workers.engine.slots import engine_serves, engine_slots


@dataclass(frozen=True)
class PoolSpec:
    queues: str
    pool: str
    concurrency: int
    prefetch: int


def pool_concurrency(name: str) -> int:
    """The pool size of ``name``'s workers: ``TIERFLOW_LOCAL_QUALITY_CONCURRENCY`` for
    ``local_quality`` when set (read by :class:`~tierflow.core.settings.Settings`, so a bad value
    raises ConfigError at start); for ``local_fast`` whose models the embedded engine serves, at
    least the engine's slots (a thread per sequence it can decode at once: with fewer, slots sit
    idle while jobs wait in the queue); else :data:`POOLS`."""
    if name == Tier.LOCAL_QUALITY.value:
        override = get_settings().local_quality_concurrency
        if override is not None:
            return override
    if name == Tier.LOCAL_FAST.value and engine_serves(name):
        return max(POOLS[name].concurrency, engine_slots())
    return POOLS[name].concurrency


POOLS: dict[str, PoolSpec] = {
    "router": PoolSpec(f"{ROUTER_QUEUE},{MAINTENANCE_QUEUE}", "threads", 8, 4),
    Tier.LOCAL_FAST.value: PoolSpec(tier_queue(Tier.LOCAL_FAST), "threads", 2, 1),
    Tier.LOCAL_QUALITY.value: PoolSpec(tier_queue(Tier.LOCAL_QUALITY), "threads", 640, 2),
    Tier.API_FALLBACK.value: PoolSpec(tier_queue(Tier.API_FALLBACK), "threads", 16, 2),
}


def worker_argv(
    name: str, concurrency: int | None = None, loglevel: str = "INFO", *, beat: bool = True
) -> list[str]:
    """``celery worker`` arguments for one tier (or ``router``).

    The router worker also runs beat (``-B``) unless ``beat`` is False (``tierflow up`` runs
    beat as its own supervised child), so every deployment that runs a router worker runs the
    sweeper; the sweep's lock keeps it to one run per interval however many beats there are.
    """
    spec = POOLS[name]
    # A router worker's embedded beat (-B: `tierflow worker router`) uses the in-memory
    # scheduler: no schedule file to share or lose; a sweep every interval needs no memory of the
    # last one. `tierflow up` runs beat as its own child instead, with a schedule file in its
    # state directory (celerybeat-schedule).
    embedded = ["-B", "--scheduler", "celery.beat:Scheduler"] if beat and name == "router" else []
    return [
        "-A", "workers.app", "worker",
        "-Q", spec.queues,
        "-P", spec.pool,
        "-c", str(concurrency or pool_concurrency(name)),
        "--prefetch-multiplier", str(spec.prefetch),
        "-n", f"{name}@%h",
        "--without-gossip", "--without-mingle",
        "-l", loglevel,
        *embedded,
    ]  # fmt: skip
