"""A SIMULATED day of bursty load on GPU nodes: fixed fleets beside ``tierflow autoscale``'s policy.

    .venv/bin/python tests/bench/sim_scaling.py [--hours 24] [--max-nodes 4] [--startup 300]

A pure-Python DISCRETE SIMULATION (no processes, no HTTP, simulated clock): what it runs for real
is the policy, :class:`workers.autoscale.Autoscaler`, unchanged, driven by a simulated clock, a
simulated load reading and a simulated launcher. Everything else is a model:

- arrivals: Poisson, a daily curve (night low, working-day plateau) with bursts (a few per day,
  minutes long, several times the base rate);
- nodes: ``--slots`` sequences each (vLLM's ``max_num_seqs``), the simulated server's latency
  model (time to first token and per-token rate degrading with the running batch, as in
  ``tests/support/sim_vllm.py``), a ``--startup`` delay (the model load) before a node takes
  work, billed from launch to exit;
- one FIFO queue (the tier's queue): a free slot on a ready node takes the oldest job;
- scale-in is the policy's warm shutdown: a draining node takes nothing new, finishes what it
  runs, then exits. A job is lost only if a node exits with it unfinished (counted; must be 0).

Prints, for a fixed fleet of 1 node, a fixed fleet of ``--max-nodes`` and the autoscaler: jobs
done and jobs/s (over the day plus the time to drain its backlog: "done at h"), p50/p95 queue
wait (to the simulation step, 1 s), node-minutes used, most nodes at once, jobs lost.
"""

from __future__ import annotations

import argparse
import heapq
import math
import random
import sys
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from workers.autoscale import Autoscaler, Load  # noqa: E402


@dataclass
class Node:
    name: str
    launched: float
    ready_at: float
    running: list[float] = field(default_factory=list)  # finish times, a heap
    draining: bool = False
    exited_at: float | None = None


@dataclass
class World:
    slots: int
    startup_s: float
    output_tokens: int
    tokens_per_s: float
    now: float = 0.0
    queue: deque[float] = field(default_factory=deque)  # arrival times
    nodes: dict[str, Node] = field(default_factory=dict)
    waits: list[float] = field(default_factory=list)
    done: int = 0
    lost: int = 0
    seq: int = 0
    submitted: int = 0

    # -- the launcher the policy drives ---------------------------------------------------------
    def start(self) -> str:
        self.seq += 1
        name = f"node{self.seq}"
        self.nodes[name] = Node(name, self.now, self.now + self.startup_s)
        return name

    def drain(self, handle: str) -> None:
        self.nodes[handle].draining = True

    def alive(self, handle: str) -> bool:
        return self.nodes[handle].exited_at is None

    # -- the model ------------------------------------------------------------------------------
    def service_s(self, batch: int) -> float:
        ttft = 0.05 + 0.0005 * batch
        rate = self.tokens_per_s / (1 + batch / self.slots)
        return ttft + self.output_tokens / rate

    def load(self) -> Load:
        flying = sum(len(n.running) for n in self.nodes.values() if n.exited_at is None)
        return Load(len(self.queue), flying, flying)

    def advance(self, dt: float) -> None:
        self.now += dt
        for node in self.nodes.values():
            if node.exited_at is not None:
                continue
            while node.running and node.running[0] <= self.now:
                heapq.heappop(node.running)
                self.done += 1
            if node.draining and not node.running:
                node.exited_at = self.now
        for node in self.nodes.values():
            if node.exited_at is not None or node.draining or self.now < node.ready_at:
                continue
            free = self.slots - len(node.running)
            if free <= 0 or not self.queue:
                continue
            service = self.service_s(len(node.running) + min(free, len(self.queue)))
            for _ in range(min(free, len(self.queue))):
                arrived = self.queue.popleft()
                self.waits.append(self.now - arrived)
                heapq.heappush(node.running, self.now + service)

    def node_minutes(self) -> float:
        return sum(((n.exited_at or self.now) - n.launched) / 60 for n in self.nodes.values())


def arrival_rate(t: float, base: float, bursts: list[tuple[float, float, float]]) -> float:
    """Jobs/s at simulated time ``t``: a day curve plus bursts (start, length, multiplier)."""
    hour = (t / 3600) % 24
    day = 0.25 + 0.75 * max(0.0, math.sin(math.pi * (hour - 6) / 14)) if 6 <= hour <= 20 else 0.25
    rate = base * day
    for start, length, mult in bursts:
        if start <= t < start + length:
            rate *= mult
    return rate


def run(policy: str, args: argparse.Namespace, fixed: int = 1) -> dict[str, float]:
    rng = random.Random(args.seed)
    poisson = np.random.default_rng(args.seed)  # the same arrivals for every fleet
    world = World(args.slots, args.startup, args.output_tokens, args.tokens_per_s)
    horizon = args.hours * 3600
    brng = random.Random(args.seed + 1)
    bursts = [
        (brng.uniform(0, horizon), brng.uniform(300, 1800), brng.uniform(2.5, 5.0))
        for _ in range(args.bursts)
    ]
    scaler = None
    if policy == "autoscale":
        scaler = Autoscaler(
            "local_quality", world, per_worker=args.slots, min_workers=1,
            max_workers=args.max_nodes, cooldown_s=args.cooldown,
            read_load=world.load, clock=lambda: world.now,
        )  # fmt: skip
    else:
        for _ in range(fixed):
            world.nodes[world.start()].ready_at = 0.0  # a fixed fleet is up before the day
    dt, tick_every, next_tick = args.dt, args.interval, 0.0
    while world.now < horizon:
        lam = arrival_rate(world.now, args.base_rate, bursts) * dt
        k = int(poisson.poisson(lam))
        world.submitted += k
        world.queue.extend(world.now + rng.random() * dt for _ in range(k))
        if scaler is not None and world.now >= next_tick:
            scaler.step()
            next_tick = world.now + tick_every
        world.advance(dt)
    # the day is over: stop taking arrivals, finish the queue, then drain every node
    while world.queue or any(n.running for n in world.nodes.values()):
        world.advance(dt)
    world.lost = world.submitted - world.done  # every job submitted must have been done
    waits = sorted(world.waits)

    def pct(q: float) -> float:
        return waits[max(0, math.ceil(q * len(waits)) - 1)] if waits else 0.0

    return {
        "jobs": world.done,
        "jobs_per_s": world.done / world.now,  # over the day plus its backlog's drain
        "hours": world.now / 3600,
        "p50": pct(0.50),
        "p95": pct(0.95),
        "node_minutes": world.node_minutes(),
        "lost": world.lost,
        "peak_nodes": max_nodes_at_once(world),
    }


def max_nodes_at_once(world: World) -> int:
    edges = []
    for n in world.nodes.values():
        edges += [(n.launched, 1), ((n.exited_at or world.now), -1)]
    live = peak = 0
    for _t, d in sorted(edges):
        live += d
        peak = max(peak, live)
    return peak


def main() -> int:
    ap = argparse.ArgumentParser(description="SIMULATED scaling day (discrete simulation)")
    ap.add_argument("--hours", type=float, default=24.0)
    ap.add_argument("--base-rate", type=float, default=30.0, help="jobs/s at the day's peak")
    ap.add_argument("--bursts", type=int, default=6)
    ap.add_argument("--slots", type=int, default=512)
    ap.add_argument("--output-tokens", type=int, default=300)
    ap.add_argument("--tokens-per-s", type=float, default=30.0)
    ap.add_argument("--startup", type=float, default=300.0, help="node start-up (model load), s")
    ap.add_argument("--max-nodes", type=int, default=4)
    ap.add_argument("--cooldown", type=float, default=600.0)
    ap.add_argument("--interval", type=float, default=15.0, help="autoscaler tick, s")
    ap.add_argument("--dt", type=float, default=1.0, help="simulation step, s")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    rows = [
        ("fixed 1 node", run("fixed", args, 1)),
        (f"fixed {args.max_nodes} nodes", run("fixed", args, args.max_nodes)),
        (f"autoscale 1..{args.max_nodes}", run("autoscale", args)),
    ]
    print(f"SIMULATED day ({args.hours:g} h, discrete simulation of the autoscaler's policy): "
          f"peak {args.base_rate:g} jobs/s x bursts, {args.slots} slots/node, "
          f"{args.output_tokens} tokens/job, start-up {args.startup:g}s, "
          f"cooldown {args.cooldown:g}s")  # fmt: skip
    print(f"{'fleet':<18} | {'jobs':>9} | {'jobs/s':>6} | {'p50 wait s':>10} | "
          f"{'p95 wait s':>10} | {'done at h':>9} | {'node-min':>8} | {'peak':>4} | "
          f"{'lost':>4}")  # fmt: skip
    print("-" * 102)
    for name, r in rows:
        print(f"{name:<18} | {r['jobs']:9d} | {r['jobs_per_s']:6.1f} | {r['p50']:10.1f} | "
              f"{r['p95']:10.1f} | {r['hours']:9.1f} | {r['node_minutes']:8.0f} | "
              f"{r['peak_nodes']:4d} | "
              f"{r['lost']:4d}")  # fmt: skip
    return 0 if all(r["lost"] == 0 for _n, r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
