"""The dashboard's ``/metrics``: the workers' counters added up, plus the fleet's gauges.

- Counters and the duration histogram are counted by the workers' ``Metrics`` step
  (:mod:`workers.pipeline.metrics`). Worker processes share nothing in memory, so they run in
  prometheus_client's multiprocess mode: each writes memory-mapped files under
  ``PROMETHEUS_MULTIPROC_DIR``, and a :class:`~prometheus_client.multiprocess.MultiProcessCollector`
  here adds up every file at each scrape. The directory is per host, set in the environment of
  every worker and of the dashboard, and emptied before the workers start
  (:func:`prepare_multiprocess_dir`; ``tierflow up`` does it).
- Gauges are read from the fleet's own state at each scrape, never counted:
  ``tierflow_queue_depth{queue}`` (every priority list of the queue), ``tierflow_in_flight{model}``
  (live concurrency slots of capped models), ``tierflow_circuit_open{model}``,
  ``tierflow_running_attempts{tier}`` (claimed, not finished: PostgreSQL) and
  ``tierflow_mode{mode}`` (1 for the current one) with ``tierflow_mode_automatic``;
  ``tierflow_daemon_running{tier,daemon}`` and ``tierflow_daemon_waiting{tier,daemon}`` (each
  daemon's slots held and attempts waiting on a contended tier: :mod:`router.fairshare`);
  ``tierflow_stuck_jobs{tier}`` (accepted, not finished, untouched for ``STALE_AFTER_S`` with
  nothing running: what the sweep re-sends).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from router.dispatch import fair_share
from router.fairshare import contended
from router.mode import get_mode
from tierflow.app.overview import in_flight, open_circuits
from tierflow.app.queues import queue_depths
from tierflow.core.config import LLMConfig
from tierflow.core.constants import STALE_AFTER_S, Mode, Tier
from tierflow.core.settings import get_settings
from tierflow.store.activity import running_attempts, stuck_jobs
from workers.automode import automatic_cloud

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare_multiprocess_dir(directory: Path) -> Path:
    """Empty ``directory`` and point this process (and the children it starts) at it, unless
    ``PROMETHEUS_MULTIPROC_DIR`` is already set; returns the directory in use."""
    if os.environ.get(MULTIPROC_ENV):
        return Path(os.environ[MULTIPROC_ENV])
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    os.environ[MULTIPROC_ENV] = str(directory)
    return directory


class FleetCollector(Collector):
    """Gauges read at scrape time from Redis and PostgreSQL."""

    def collect(self) -> Iterator[Metric]:
        config = get_settings().llm
        depth = GaugeMetricFamily(
            "tierflow_queue_depth", "Messages waiting, over every priority list.", labels=["queue"]
        )
        for queue, n in queue_depths().items():
            depth.add_metric([queue], n)
        yield depth
        flight = GaugeMetricFamily(
            "tierflow_in_flight",
            "Calls in flight per model with a max_concurrency (its live slots).",
            labels=["model"],
        )
        for model, n in in_flight(config).items():
            flight.add_metric([model], n)
        yield flight
        circuit = GaugeMetricFamily(
            "tierflow_circuit_open", "1 while the model's circuit is open.", labels=["model"]
        )
        for model, is_open in open_circuits(config).items():
            circuit.add_metric([model], 1 if is_open else 0)
        yield circuit
        running = GaugeMetricFamily(
            "tierflow_running_attempts", "Attempts claimed and not finished.", labels=["tier"]
        )
        for tier, n in running_attempts().items():
            running.add_metric([tier], n)
        yield running
        yield from share_gauges(config)
        stuck = GaugeMetricFamily(
            "tierflow_stuck_jobs",
            f"Jobs accepted, not finished, untouched for {STALE_AFTER_S:g} s with nothing "
            "running (the sweep re-sends them), by tier.",
            labels=["tier"],
        )
        for tier, n in stuck_jobs(STALE_AFTER_S).items():
            stuck.add_metric([tier], n)
        yield stuck
        mode = GaugeMetricFamily("tierflow_mode", "1 for the fleet's mode now.", labels=["mode"])
        current = get_mode()
        for choice in Mode:
            mode.add_metric([choice.value], 1 if choice is current else 0)
        yield mode
        yield GaugeMetricFamily(
            "tierflow_mode_automatic",
            "1 while the fleet is in a cloud mode it switched to by itself.",
            value=1 if automatic_cloud() is not None else 0,
        )


def share_gauges(config: LLMConfig) -> list[GaugeMetricFamily]:
    """Per contended tier and daemon (:mod:`router.fairshare`): attempts running (slots held)
    and waiting in the daemon's line; the daemons' shares of the tier."""
    running = GaugeMetricFamily(
        "tierflow_daemon_running",
        "Attempts of the daemon holding a slot of a contended tier.",
        labels=["tier", "daemon"],
    )
    waiting = GaugeMetricFamily(
        "tierflow_daemon_waiting",
        "Attempts of the daemon waiting in its line for a slot of a contended tier.",
        labels=["tier", "daemon"],
    )
    share = fair_share()
    for tier in config.tiers:
        if not contended(config, tier):
            continue
        for daemon, load in share.loads(Tier(tier)).items():
            running.add_metric([Tier(tier).value, daemon], load.running)
            waiting.add_metric([Tier(tier).value, daemon], load.waiting)
    return [running, waiting]


def metrics_registry() -> CollectorRegistry:
    """A registry with the fleet's gauges and, when ``PROMETHEUS_MULTIPROC_DIR`` names a
    directory, every worker process's counters."""
    registry = CollectorRegistry()
    path = os.environ.get(MULTIPROC_ENV)
    if path and os.path.isdir(path):
        MultiProcessCollector(registry, path=path)
    registry.register(FleetCollector())
    return registry


def render_metrics(registry: CollectorRegistry) -> bytes:
    """The text exposition format of one scrape."""
    return generate_latest(registry)
