"""Spreading a tier's calls over its nodes by free capacity (``balance: free_capacity``).

A GPU tier lists one model entry per vLLM server, each with ``limits.max_concurrency`` set to what
the server runs at once (its ``max_num_seqs``). The fleet already counts every call in flight
per model in Redis (the concurrency slots of :class:`workers.limits.FleetLimits`: a sorted set
per model, one member per call, taken before the call and given back after it, expiring if a
worker dies holding one), so that count is exact across every worker and host, with no scrape
delay. :func:`by_free_capacity` reads the counts of all nodes in one round trip and orders the
nodes by the share of their capacity that is free, most free first (ties in random order), and
:func:`workers.selection.pick_model` walks that order the way it walks the file's order
elsewhere: a node that is down (failed health check or a refused connection), cooled or with an
open circuit is passed over, and the next freest takes the call.

So a slow node, whose calls last longer, holds more slots and gets fewer new calls; a node that
died has its calls fail with a connection error (retried by the fleet, on the others); one
that comes back answers its health check (``GET /v1/models``), has no calls in flight, and is
the freest node again. Not round robin, and never always-first.
"""

from __future__ import annotations

import random

from tierflow.core.config import ModelConfig
from workers.limits import FleetLimits


def in_flight(models: list[ModelConfig], limits: FleetLimits) -> list[int]:
    """Calls in flight on each model, fleet-wide (one pipelined ZCARD per model)."""
    pipe = limits.redis.pipeline(transaction=False)
    for model in models:
        pipe.zcard(limits.keys.concurrency(model.name))
    return [int(n) for n in pipe.execute()]


def by_free_capacity(models: list[ModelConfig], limits: FleetLimits) -> list[ModelConfig]:
    """``models`` ordered by free share of capacity, most free first; equal shares shuffled."""
    if len(models) < 2:
        return models
    counts = in_flight(models, limits)
    scored = []
    for model, busy in zip(models, counts, strict=True):
        cap = model.limits.max_concurrency or 1
        scored.append(((cap - busy) / cap, random.random(), model))
    scored.sort(key=lambda row: (-row[0], row[1]))
    return [model for _free, _tie, model in scored]
