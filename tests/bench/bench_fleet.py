"""Benchmark the fleet's overhead per job and its throughput beside raw Celery, in one run.

    .venv/bin/python tests/bench/bench_fleet.py [--jobs 200] [--throughput-jobs 500]
                                                [--warmup 20] [--concurrency 8] [--layout one]

Needs PostgreSQL on 127.0.0.1:5432 (trust, user ``postgres``) and Redis on 127.0.0.1:6379. The
run makes its own database and Redis key prefix, and removes both (and stops its workers) at the
end, failure or not.

tierflow: every tier is the fake backend at zero latency, so what is measured is the fleet
itself: ``submit_job`` (PostgreSQL insert + send to ``router``) → ``route_job`` (load, classify,
store the plan, send to the tier) → ``run_attempt`` (claim, pick, call, gate, store the attempt,
finalize the job, publish) → ``handle.wait()`` woken over pub/sub and reading the stored result.
Workers are real ``celery worker`` processes (threads pool); ``--layout one`` runs a single worker
on every queue, ``--layout split`` a router worker and a worker for the three tier queues.

raw celery: a separate app (``tests/bench/raw_celery_app.py``) on the same Redis under its own
prefix and queue, JSON, ``acks_late``, prefetch 1, a Redis result backend and one no-op task, with
one worker of the same pool and concurrency. Measured the same way: ``apply_async`` →
``result.get()``.

(a) sequential round trip, p50/p99 over ``--jobs`` after ``--warmup``;
(b) throughput: send ``--throughput-jobs`` as fast as one client can, then wait for all of them.

Not collected by pytest (``tests/bench`` is ignored).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# Only modules that read no tierflow settings may be imported before the environment is set.
from tests.support.services import (  # noqa: E402
    REDIS_URL,
    WorkerProcess,
    create_database,
    delete_prefix,
    drop_database,
    fake_model,
    fleet_config,
    services_up,
    write_config,
)

FLEET_QUEUES = "router,tier.local_fast,tier.local_quality,tier.api_fallback,maintenance"
TIER_QUEUES = "tier.local_fast,tier.local_quality,tier.api_fallback"
ACTION = "extract_topic"  # simple → local_fast, passes the gate on the fake's echo answer
WAIT_TIMEOUT_S = 60.0


def raw_worker(env: dict[str, str], queue: str, concurrency: int, pool: str) -> WorkerProcess:
    """A ``celery worker`` of the raw baseline app; same start/ready/stop as the fleet's."""
    return WorkerProcess(
        env, queue, concurrency, pool, name=f"raw{uuid.uuid4().hex[:6]}",
        extra_args=["--prefetch-multiplier", "1"], app="tests.bench.raw_celery_app",
    )  # fmt: skip


@dataclass
class Measured:
    latencies_ms: list[float]
    throughput_jobs: int
    send_s: float  # sending every throughput job
    total_s: float  # first send → last result
    extra: dict[str, float]

    @property
    def p50(self) -> float:
        return percentile(self.latencies_ms, 0.50)

    @property
    def p99(self) -> float:
        return percentile(self.latencies_ms, 0.99)

    @property
    def jobs_per_s(self) -> float:
        return self.throughput_jobs / self.total_s


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def sequential(one: Callable[[int], None], warmup: int, n: int) -> list[float]:
    for i in range(warmup):
        one(-1 - i)
    latencies = []
    for i in range(n):
        started = time.perf_counter()
        one(i)
        latencies.append((time.perf_counter() - started) * 1000)
    return latencies


# -- tierflow ------------------------------------------------------------------------------------
def bench_tierflow(args: argparse.Namespace, run_id: str) -> Measured:
    from router import submit_job

    def prompt(i: int) -> str:
        return f"Extract topic from: 'bench {run_id} job {i}: fixed the auth bug in login'"

    in_fleet_seq: list[float] = []

    def one(i: int) -> None:
        result = submit_job(prompt(i), ACTION).wait(timeout=WAIT_TIMEOUT_S)
        if result.status != "succeeded":
            raise RuntimeError(f"tierflow job {i} ended {result.status}: {result.error}")
        if i >= 0 and result.latency_ms is not None:
            in_fleet_seq.append(result.latency_ms)

    latencies = sequential(one, args.warmup, args.jobs)

    m = args.throughput_jobs
    started = time.perf_counter()
    handles = [submit_job(prompt(100_000 + i), ACTION) for i in range(m)]
    sent = time.perf_counter()
    results = [h.wait(timeout=WAIT_TIMEOUT_S) for h in handles]
    done = time.perf_counter()
    failed = [r for r in results if r.status != "succeeded"]
    if failed:
        raise RuntimeError(f"{len(failed)} tierflow jobs did not succeed, e.g. {failed[0].error}")
    extra: dict[str, float] = {}
    if in_fleet_seq:
        extra["in_fleet_seq_p50_ms"] = statistics.median(in_fleet_seq)
    timed = [r for r in results if r.latency_ms is not None and r.finished_at is not None]
    if timed:
        extra["in_fleet_p50_ms"] = statistics.median(r.latency_ms or 0.0 for r in timed)
        # When, after the burst's first job was stored, did its first and last job finish?
        ends = [(r.finished_at, timedelta(milliseconds=r.latency_ms or 0.0)) for r in timed]
        first_created = min(end - took for end, took in ends)
        finished = sorted((end - first_created).total_seconds() for end, _ in ends)
        extra["first_done_s"], extra["last_done_s"] = finished[0], finished[-1]
    return Measured(latencies, m, sent - started, done - started, extra)


# -- raw celery ----------------------------------------------------------------------------------
def bench_raw(args: argparse.Namespace) -> Measured:
    from tests.bench.raw_celery_app import noop

    def one(i: int) -> None:
        if noop.apply_async((i,)).get(timeout=WAIT_TIMEOUT_S) != i:
            raise RuntimeError(f"raw task {i} returned the wrong value")

    latencies = sequential(one, args.warmup, args.jobs)

    m = args.throughput_jobs
    started = time.perf_counter()
    pending = [noop.apply_async((i,)) for i in range(m)]
    sent = time.perf_counter()
    values = [r.get(timeout=WAIT_TIMEOUT_S) for r in pending]
    done = time.perf_counter()
    if values != list(range(m)):
        raise RuntimeError("raw throughput tasks returned wrong values")
    for r in pending:
        r.forget()
    return Measured(latencies, m, sent - started, done - started, {})


# -- report --------------------------------------------------------------------------------------
def print_table(fleet: Measured, raw: Measured, args: argparse.Namespace, layout: str) -> None:
    rows = [
        (f"p50 ms (sequential, n={args.jobs})", fleet.p50, raw.p50),
        (f"p99 ms (sequential, n={args.jobs})", fleet.p99, raw.p99),
        (f"jobs/s (m={args.throughput_jobs})", fleet.jobs_per_s, raw.jobs_per_s),
    ]
    width = max(len(r[0]) for r in rows)
    print()
    print(f"{'metric':<{width}} | {'tierflow':>10} | {'raw celery':>10} | {'ratio':>7}")
    print(f"{'-' * width}-+-{'-' * 10}-+-{'-' * 10}-+-{'-' * 7}")
    for name, ours, theirs in rows:
        ratio = ours / theirs if theirs else float("nan")
        print(f"{name:<{width}} | {ours:>10.2f} | {theirs:>10.2f} | {ratio:>6.2f}x")
    print()
    print("ratio = tierflow / raw celery (latency: >1 is slower; jobs/s: <1 is slower)")
    print(f"tierflow workers: {layout}")
    print(
        f"raw celery worker: 1 process, queue of its own, pool {args.pool}, "
        f"concurrency {args.concurrency}, prefetch 1, acks_late, Redis result backend"
    )
    print(
        f"sending {args.throughput_jobs}: tierflow {fleet.send_s:.2f}s "
        f"({args.throughput_jobs / fleet.send_s:.0f}/s submit_job), raw "
        f"{raw.send_s:.2f}s ({args.throughput_jobs / raw.send_s:.0f}/s apply_async)"
    )
    x = fleet.extra
    if "in_fleet_seq_p50_ms" in x:
        print(
            f"tierflow in-fleet p50, sequential: {x['in_fleet_seq_p50_ms']:.1f} ms (job row "
            "created_at → finished_at; the rest of the round trip is submit_job's insert + send "
            "and wait()'s subscribe, wake-up and result read)"
        )
    if "in_fleet_p50_ms" in x:
        print(
            f"tierflow in-fleet p50 in the burst of {args.throughput_jobs}: "
            f"{x['in_fleet_p50_ms']:.0f} ms; first job done {x['first_done_s']:.2f}s, last "
            f"{x['last_done_s']:.2f}s after the burst's first job was stored"
        )
    load = os.getloadavg()
    print(
        f"machine: {os.cpu_count()} CPUs, load average {load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f}, "
        f"Python {platform.python_version()}. The machine is shared and noisy and these "
        "figures are from one run: compare the ratios, not the absolute numbers, and rerun "
        "before drawing conclusions."
    )


# -- main ----------------------------------------------------------------------------------------
def start_fleet(env: dict[str, str], args: argparse.Namespace, workers: list[Any]) -> str:
    """Start the fleet's workers (appended to ``workers`` as each starts); return the layout."""
    if args.layout == "one":
        workers.append(
            WorkerProcess(
                env, queues=FLEET_QUEUES, concurrency=args.concurrency, pool=args.pool,
                name="bench-all",
            )
        )  # fmt: skip
        layout = (
            f"1 process on every queue ({FLEET_QUEUES}), pool {args.pool}, "
            f"concurrency {args.concurrency}, prefetch 1 (celeryconfig)"
        )
    else:
        workers.append(
            WorkerProcess(
                env, queues="router,maintenance", concurrency=args.concurrency, pool=args.pool,
                name="bench-router",
            )
        )  # fmt: skip
        workers.append(
            WorkerProcess(
                env, queues=TIER_QUEUES, concurrency=args.concurrency, pool=args.pool,
                name="bench-tiers",
            )
        )  # fmt: skip
        layout = (
            f"2 processes: router (router,maintenance) + tiers ({TIER_QUEUES}), each pool "
            f"{args.pool}, concurrency {args.concurrency}, prefetch 1 (celeryconfig)"
        )
    return layout


def main() -> int:
    parser = argparse.ArgumentParser(description="tierflow fleet overhead vs raw Celery")
    parser.add_argument("--jobs", type=int, default=200, help="sequential round trips (a)")
    parser.add_argument("--throughput-jobs", type=int, default=500, help="jobs sent at once (b)")
    parser.add_argument("--warmup", type=int, default=20, help="round trips before measuring")
    parser.add_argument("--concurrency", type=int, default=8, help="threads per worker")
    parser.add_argument("--pool", default="threads", help="celery worker pool")
    parser.add_argument("--layout", choices=("one", "split"), default="one")
    args = parser.parse_args()
    if args.jobs < 1 or args.throughput_jobs < 1 or args.warmup < 0:
        parser.error("--jobs and --throughput-jobs must be at least 1, --warmup at least 0")

    missing = services_up()
    if missing:
        print("missing services: " + ", ".join(missing), file=sys.stderr)
        return 2
    # SIGTERM runs the clean-up below as Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    run_id = uuid.uuid4().hex[:10]
    db_name = f"tierflow_bench_{run_id}"
    prefix = f"tfbench-{run_id}"
    config_dir = Path(tempfile.mkdtemp(prefix="tierflow-bench-cfg-"))
    workers: list[WorkerProcess] = []
    ok = False
    began = time.perf_counter()
    try:
        db_url = create_database(db_name)
        config = fleet_config(
            local_fast=[fake_model("fake-fast", latency_ms=0)],
            local_quality=[fake_model("fake-quality", latency_ms=0)],
            api_fallback=[
                fake_model(
                    "fake-api", input_cost_per_million=3.0, output_cost_per_million=15.0,
                    latency_ms=0,
                )
            ],
        )  # fmt: skip
        config_path = write_config(config, config_dir)
        # Before any tierflow/router/workers import: celeryconfig reads settings at import.
        os.environ.pop("TIERFLOW_REDIS_URL", None)
        os.environ.update(
            {
                "TIERFLOW_BROKER_URL": REDIS_URL,
                "TIERFLOW_DATABASE_URL": db_url,
                "TIERFLOW_KEY_PREFIX": prefix,
                "TIERFLOW_CONFIG": str(config_path),
                "TFBENCH_RAW_BROKER_URL": REDIS_URL,
                "TFBENCH_RAW_PREFIX": f"{prefix}:raw",
                "TFBENCH_RAW_QUEUE": "tfbench.raw",
            }
        )
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}

        from tierflow.core.db import upgrade_database

        upgrade_database(db_url)

        layout = start_fleet(env, args, workers)
        workers.append(raw_worker(env, "tfbench.raw", args.concurrency, args.pool))
        for w in workers:
            w.wait_ready()
        print(f"run {run_id}: database {db_name}, Redis prefix {prefix}:")
        print(f"tierflow workers: {layout}")

        t0 = time.perf_counter()
        fleet = bench_tierflow(args, run_id)
        print(f"tierflow measured in {time.perf_counter() - t0:.1f}s")
        t0 = time.perf_counter()
        raw = bench_raw(args)
        print(f"raw celery measured in {time.perf_counter() - t0:.1f}s")

        print_table(fleet, raw, args, layout)
        ok = True
    except (KeyboardInterrupt, SystemExit):
        print("interrupted; cleaning up", file=sys.stderr)
    except Exception:
        traceback.print_exc()
        for w in workers:
            try:
                print(f"--- log of worker {w.name} (last 3000 chars) ---", file=sys.stderr)
                print(w.output()[-3000:], file=sys.stderr)
            except OSError:
                pass
    finally:
        cleanup(workers, db_name, prefix, config_dir)
        print(f"total {time.perf_counter() - began:.1f}s; cleaned up", file=sys.stderr)
    return 0 if ok else 1


def cleanup(workers: list[Any], db_name: str, prefix: str, config_dir: Path) -> None:
    """Stop the workers, drop the database, delete the prefix's keys; each step tried."""
    for w in workers:
        try:
            w.stop()
        except Exception:
            traceback.print_exc()
        shutil.rmtree(w.log.parent, ignore_errors=True)
    steps: list[tuple[str, Callable[[], None]]] = [
        ("close connections", _close_connections),
        (f"drop database {db_name}", lambda: drop_database(db_name)),  # IF EXISTS
        (f"delete Redis keys {prefix}:*", lambda: delete_prefix(prefix)),
    ]
    for what, step in steps:
        try:
            step()
        except Exception:
            print(f"clean-up: could not {what}", file=sys.stderr)
            traceback.print_exc()
    shutil.rmtree(config_dir, ignore_errors=True)


def _close_connections() -> None:
    """Release this process's pooled PostgreSQL and Redis connections (only if opened)."""
    if "tierflow.core.db" in sys.modules:
        from tierflow.core.db import engine_for, reset_engines

        if engine_for.cache_info().currsize:
            from tierflow.core.db import get_engine

            get_engine().dispose()
        reset_engines()
    if "tests.bench.raw_celery_app" in sys.modules:
        from tests.bench.raw_celery_app import app

        app.close()


if __name__ == "__main__":
    sys.exit(main())
