"""Benchmark the fleet beside raw Celery and beside its design's floor, in one run.

    python tests/bench/bench_fleet.py [--jobs 200] [--throughput-jobs 500] [--warmup 20]
        [--concurrency 8] [--pool threads] [--layout one|split] [--rounds 3] [--json]
        [--sql-trace 3] [--profile DIR [--profile-jobs 100] [--profile-gil]] [--no-counts]

Needs PostgreSQL on 127.0.0.1:5432 (trust, user ``postgres``) and Redis on 127.0.0.1:6379. The
run makes its own database and Redis key prefix, and removes both (and stops its workers) at the
end, failure or not.

Three systems on the same Redis, PostgreSQL and worker pool, each on real ``celery worker``
processes:

raw:      one no-op task (``tests/bench/raw_celery_app.py``), Redis result backend; measured as
          ``apply_async`` → ``result.get()``.
floor:    the design floor (``tests/bench/floor_app.py``): the client inserts the job row and sends
          it to a routing task; the routing task updates the row (one commit) and sends the job to
          a tier queue; the tier task inserts the attempt, finishes the job (one commit) and
          publishes the result; the client, subscribed once to a pattern, is woken with the result
          in the message. Its own tables in the bench database, its own queues under the prefix.
tierflow: every tier the fake backend at zero latency: ``submit_job`` → ``route_job`` →
          ``run_attempt`` → ``handle.wait()`` woken over pub/sub, reading the stored result.

Layouts: ``one`` runs one worker per system on all of its queues (``--concurrency`` threads,
prefetch 1). ``split`` mirrors ``tierflow up`` (``tierflow/app/fleet.py``, sizes from
``workers/pools.POOLS``): tierflow gets a router worker (router,maintenance) and one worker per
tier, each with its pool's concurrency and prefetch; the floor gets a router worker sized like
tierflow's and a tier worker sized like ``local_fast`` (where every benchmark job runs); raw keeps
one worker with ``--concurrency``.

Measured, per system: (a) sequential round trips, p50/p99 over ``--jobs`` after ``--warmup``;
(b) throughput: send ``--throughput-jobs`` as fast as one client can, then wait for all of them.
``--rounds R`` (default 3) measures (a) and (b) of the three systems R times, in turn, each round
starting with another system: the systems' figures are the medians over the rounds, and
``tierflow / floor`` is the median of each round's own ratio (the two measured minutes apart,
not a whole run apart: on a shared machine one run's floor alone moved between 4.6 and 17 ms).
Counted over the first round's sequential phase (see ``tests/bench/counters.py``): PostgreSQL
commits per job (``pg_stat_get_db_xact_commit`` delta; each reading waits ~10 s for PostgreSQL's
stats flush, ``--no-counts`` skips the waits and the commit counts), Redis commands per job
(``INFO commandstats`` delta, less the background rate of a quiet window just before), RSS of
every worker process after the run. ``--sql-trace N`` (after the timed phases, default 3): every
SQL statement of N tierflow jobs, in order, by process, from the PostgreSQL server log.
``--profile DIR``: py-spy on every tierflow worker and on this client over ``--profile-jobs``
extra sequential jobs (``--profile-gil``: only the thread holding the GIL is sampled).

Not collected by pytest (``tests/bench`` is ignored).
"""

from __future__ import annotations

import argparse
import json
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
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# Only modules that read no tierflow settings may be imported before the environment is set.
from tests.bench import counters  # noqa: E402
from tests.support.services import (  # noqa: E402
    ADMIN_URL,
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
ACTION = "extract_topic"  # simple → local_fast, passes the gate on the fake's echo answer
WAIT_TIMEOUT_S = 60.0
SYSTEMS = ("raw", "floor", "tierflow")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class Measured:
    latencies_ms: list[float]
    throughput_jobs: int
    send_s: float  # sending every throughput job
    total_s: float  # first send → last result
    extra: dict[str, float] = field(default_factory=dict)
    window: counters.Window | None = None
    rounds: list[Measured] = field(default_factory=list)  # combined: the medians of these

    def _median(self, of: Callable[[Measured], float]) -> float:
        return statistics.median(of(r) for r in self.rounds)

    @property
    def p50(self) -> float:
        if self.rounds:
            return self._median(lambda r: r.p50)
        return percentile(self.latencies_ms, 0.50)

    @property
    def p99(self) -> float:
        if self.rounds:
            return self._median(lambda r: r.p99)
        return percentile(self.latencies_ms, 0.99)

    @property
    def jobs_per_s(self) -> float:
        if self.rounds:
            return self._median(lambda r: r.jobs_per_s)
        return self.throughput_jobs / self.total_s


def combined(rounds: list[Measured]) -> Measured:
    """One system over every round: each figure the median of the rounds' own (the counted
    window is the first round's)."""
    if len(rounds) == 1:
        return rounds[0]
    keys = set.intersection(*(set(r.extra) for r in rounds))
    return Measured(
        [ms for r in rounds for ms in r.latencies_ms],
        rounds[0].throughput_jobs,
        statistics.median(r.send_s for r in rounds),
        statistics.median(r.total_s for r in rounds),
        {k: statistics.median(r.extra[k] for r in rounds) for k in sorted(keys)},
        rounds[0].window,
        list(rounds),
    )


RATIOS = (("p50_ms", "p50"), ("p99_ms", "p99"), ("jobs_per_s", "jobs_per_s"))


def round_ratios(rounds: list[dict[str, Measured]]) -> dict[str, dict[str, Any]]:
    """tierflow / floor per round, and their median: the figure the targets are read on (a
    round measures the two back to back, so a machine's slow minute touches both)."""
    out: dict[str, dict[str, Any]] = {}
    for key, attr in RATIOS:
        each = [getattr(rd["tierflow"], attr) / getattr(rd["floor"], attr) for rd in rounds]
        out[key] = {"median": round(statistics.median(each), 3),
                    "rounds": [round(x, 3) for x in each]}  # fmt: skip
    return out


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def timed(one: Callable[[int], None], n: int, into: list[float]) -> None:
    for i in range(n):
        started = time.perf_counter()
        one(i)
        into.append((time.perf_counter() - started) * 1000)


def sequential_counted(
    one: Callable[[int], None], args: argparse.Namespace, ctx: Context, pg: bool = True
) -> tuple[list[float], counters.Window]:
    """Warm up, then the timed sequential round trips inside one counted window."""
    for i in range(args.warmup):
        one(-1 - i)
    latencies: list[float] = []
    window = counters.counted_phase(
        ctx.pg if pg else None, ctx.rds, args.jobs, lambda: timed(one, args.jobs, latencies),
        settle=args.counts,
    )  # fmt: skip
    return latencies, window


@dataclass
class Context:
    pg: counters.PgCommits | None
    rds: Any
    run_id: str


# -- raw celery ----------------------------------------------------------------------------------
def bench_raw(args: argparse.Namespace, ctx: Context) -> Measured:
    from tests.bench.raw_celery_app import noop

    def one(i: int) -> None:
        if noop.apply_async((i,)).get(timeout=WAIT_TIMEOUT_S) != i:
            raise RuntimeError(f"raw task {i} returned the wrong value")

    latencies, window = sequential_counted(one, args, ctx, pg=False)
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
    return Measured(latencies, m, sent - started, done - started, window=window)


# -- design floor --------------------------------------------------------------------------------
def bench_floor(args: argparse.Namespace, ctx: Context) -> Measured:
    from tests.bench.floor_app import FloorClient

    client = FloorClient()
    try:

        def one(i: int) -> None:
            job = uuid.uuid4().hex
            client.submit(job)
            while True:
                got = client.next_done(WAIT_TIMEOUT_S)
                if got is None:
                    raise RuntimeError(f"floor job {i} not done after {WAIT_TIMEOUT_S}s")
                if got[0] == job:
                    if got[1] != "ok":
                        raise RuntimeError(f"floor job {i} returned {got[1]!r}")
                    return

        latencies, window = sequential_counted(one, args, ctx)
        m = args.throughput_jobs
        jobs = {uuid.uuid4().hex for _ in range(m)}
        started = time.perf_counter()
        for job in jobs:
            client.submit(job)
        sent = time.perf_counter()
        while jobs:
            got = client.next_done(WAIT_TIMEOUT_S)
            if got is None:
                raise RuntimeError(f"{len(jobs)} floor burst jobs not done after {WAIT_TIMEOUT_S}s")
            jobs.discard(got[0])
        done = time.perf_counter()
    finally:
        client.close()
    return Measured(latencies, m, sent - started, done - started, window=window)


# -- tierflow ------------------------------------------------------------------------------------
def tierflow_one(run_id: str, seen: list[float] | None = None) -> Callable[[int], None]:
    from router import submit_job

    def one(i: int) -> None:
        prompt = f"Extract topic from: 'bench {run_id} job {i}: fixed the auth bug in login'"
        result = submit_job(prompt, ACTION).wait(timeout=WAIT_TIMEOUT_S)
        if result.status != "succeeded":
            raise RuntimeError(f"tierflow job {i} ended {result.status}: {result.error}")
        if seen is not None and i >= 0 and result.latency_ms is not None:
            seen.append(result.latency_ms)

    return one


def bench_tierflow(args: argparse.Namespace, ctx: Context) -> Measured:
    from router import submit_job

    in_fleet_seq: list[float] = []
    latencies, window = sequential_counted(tierflow_one(ctx.run_id, in_fleet_seq), args, ctx)

    m = args.throughput_jobs
    started = time.perf_counter()
    handles = [
        submit_job(
            f"Extract topic from: 'bench {ctx.run_id} burst {i}: fixed the auth bug'", ACTION
        )
        for i in range(m)
    ]
    sent = time.perf_counter()
    results = [h.wait(timeout=WAIT_TIMEOUT_S) for h in handles]
    done = time.perf_counter()
    failed = [r for r in results if r.status != "succeeded"]
    if failed:
        raise RuntimeError(f"{len(failed)} tierflow jobs did not succeed, e.g. {failed[0].error}")
    extra: dict[str, float] = {}
    if in_fleet_seq:
        extra["in_fleet_seq_p50_ms"] = statistics.median(in_fleet_seq)
    timed_results = [r for r in results if r.latency_ms is not None and r.finished_at is not None]
    if timed_results:
        extra["in_fleet_p50_ms"] = statistics.median(r.latency_ms or 0.0 for r in timed_results)
        ends = [
            (r.finished_at, timedelta(milliseconds=r.latency_ms or 0.0))
            for r in timed_results
            if r.finished_at is not None
        ]
        first_created = min(end - took for end, took in ends)
        finished = sorted((end - first_created).total_seconds() for end, _ in ends)
        extra["first_done_s"], extra["last_done_s"] = finished[0], finished[-1]
    return Measured(latencies, m, sent - started, done - started, extra, window)


# -- workers -------------------------------------------------------------------------------------
@dataclass
class Worker:
    system: str
    name: str
    proc: WorkerProcess
    describe: str


def start_workers(env: dict[str, str], args: argparse.Namespace) -> list[Worker]:
    """Every worker of the run (not yet waited for), in start order."""
    from workers.pools import POOLS

    out: list[Worker] = []

    def add(system: str, name: str, queues: str, concurrency: int, prefetch: int, pool: str,
            app: str = "workers.app") -> None:  # fmt: skip
        proc = WorkerProcess(
            env, queues=queues, concurrency=concurrency, pool=pool,
            name=f"{name}-{uuid.uuid4().hex[:4]}",
            extra_args=["--prefetch-multiplier", str(prefetch)], app=app,
        )  # fmt: skip
        out.append(
            Worker(
                system, name, proc, f"{name} [{queues}] {pool} c={concurrency} prefetch={prefetch}"
            )
        )

    floor_app = "tests.bench.floor_app"
    if args.layout == "one":
        add("tierflow", "tierflow-all", FLEET_QUEUES, args.concurrency, 1, args.pool)
        add(
            "floor",
            "floor-all",
            "floor.router,floor.tier",
            args.concurrency,
            1,
            args.pool,
            floor_app,
        )
    else:
        for name, spec in POOLS.items():
            add(
                "tierflow",
                f"tierflow-{name}",
                spec.queues,
                spec.concurrency,
                spec.prefetch,
                spec.pool,
            )
        r, t = POOLS["router"], POOLS["local_fast"]
        add("floor", "floor-router", "floor.router", r.concurrency, r.prefetch, r.pool, floor_app)
        add("floor", "floor-tier", "floor.tier", t.concurrency, t.prefetch, t.pool, floor_app)
    add("raw", "raw", "tfbench.raw", args.concurrency, 1, args.pool, "tests.bench.raw_celery_app")
    return out


# -- report --------------------------------------------------------------------------------------
def summary(m: Measured, rss: dict[str, float]) -> dict[str, Any]:
    w = m.window
    out: dict[str, Any] = {
        "p50_ms": round(m.p50, 3),
        "p99_ms": round(m.p99, 3),
        "jobs_per_s": round(m.jobs_per_s, 1),
        "send_s": round(m.send_s, 3),
    }
    if w is not None:
        out["pg_commits_per_job"] = (
            None if w.commits_per_job() is None else round(w.commits_per_job() or 0, 2)
        )
        out["redis_commands_per_job"] = round(w.redis_per_job(), 2)
        out["redis_commands_per_job_gross"] = round(w.redis_gross_per_job(), 2)
        out["redis_background_per_s"] = round(w.redis_background_total_per_s(), 1)
        out["redis_noisy"] = w.redis_noisy()
        out["redis_top_per_job"] = {k: round(v, 2) for k, v in w.redis_top(10)}
    out["rss_mb"] = {k: round(v, 1) for k, v in rss.items()}
    out.update({k: round(v, 3) for k, v in m.extra.items()})
    return out


def print_table(results: dict[str, Measured], data: dict[str, Any], args: argparse.Namespace,
                workers: list[Worker]) -> None:  # fmt: skip
    r, f, t = (results[s] for s in SYSTEMS)

    def ratio(a: float | None, b: float | None) -> str:
        return f"{a / b:.2f}x" if a is not None and b else "-"

    def paired(key: str) -> str:  # the median of the rounds' own ratios
        return f"{data['ratios'][key]['median']:.2f}x"

    def num(v: float | None, fmt: str = ".2f") -> str:
        return "-" if v is None else format(v, fmt)

    rows: list[tuple[str, ...]] = [
        ("p50 ms", num(r.p50), num(f.p50), num(t.p50), paired("p50_ms")),
        ("p99 ms", num(r.p99), num(f.p99), num(t.p99), paired("p99_ms")),
        ("jobs/s", num(r.jobs_per_s, ".0f"), num(f.jobs_per_s, ".0f"), num(t.jobs_per_s, ".0f"),
         paired("jobs_per_s")),
    ]  # fmt: skip
    pgc = [data[s].get("pg_commits_per_job") for s in SYSTEMS]
    rc = [data[s].get("redis_commands_per_job") for s in SYSTEMS]
    rows.append(("PG commits/job", "-", num(pgc[1]), num(pgc[2]), ratio(pgc[2], pgc[1])))
    rows.append(
        (
            "Redis cmds/job",
            *(
                num(rc[i], ".1f") + ("*" if data[SYSTEMS[i]].get("redis_noisy") else "")
                for i in range(3)
            ),
            ratio(rc[2], rc[1]),
        )
    )
    for key, label in (("worker_cpu_ms_per_job", "CPU ms/job, workers"),
                       ("client_cpu_ms_per_job", "CPU ms/job, client"),
                       ("postgresql_cpu_ms_per_job", "CPU ms/job, PostgreSQL"),
                       ("redis_cpu_ms_per_job", "CPU ms/job, Redis")):  # fmt: skip
        cpu = [data[s].get(key) for s in SYSTEMS]
        rows.append((label, *(num(c) for c in cpu), ratio(cpu[2], cpu[1])))
    rss = [sum(data[s]["rss_mb"].values()) for s in SYSTEMS]
    rows.append(("RSS MB (all workers)", num(rss[0], ".0f"), num(rss[1], ".0f"), num(rss[2], ".0f"),
                 ratio(rss[2], rss[1])))  # fmt: skip
    head = ("metric", "raw", "floor", "tierflow", "tierflow / floor")
    widths = [max(len(str(row[i])) for row in [head, *rows]) for i in range(5)]
    print(
        " | ".join(h.ljust(widths[0]) if i == 0 else h.rjust(widths[i]) for i, h in enumerate(head))
    )
    print("-+-".join("-" * w for w in widths))
    for row in rows:
        print(
            " | ".join(
                c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(row)
            )
        )
    print()
    print(
        f"layout {args.layout}; {args.rounds} round(s), each: sequential n={args.jobs} after "
        f"{args.warmup} warm-up, burst m={args.throughput_jobs}; the systems' columns are "
        "medians over the rounds, the ratios the median of each round's own ratio:"
    )
    for key, label in (("p50_ms", "p50"), ("p99_ms", "p99"), ("jobs_per_s", "jobs/s")):
        each = " ".join(f"{x:.2f}x" for x in data["ratios"][key]["rounds"])
        print(f"  tierflow / floor, {label} by round: {each}")
    for w in workers:
        own = data[w.system].get("worker_cpu_ms_per_job_by_worker", {}).get(w.name)
        cpu_note = f"  CPU {own:.2f} ms/job" if own is not None else ""
        rss_now = data[w.system]["rss_mb"][w.name]
        print(f"  {w.system:<8} {w.describe}  RSS {rss_now:.0f} MB{cpu_note}")
    for s in SYSTEMS:
        d = data[s]
        if "redis_top_per_job" in d:
            top = ", ".join(f"{k} {v:.1f}" for k, v in d["redis_top_per_job"].items())
            print(f"Redis per job, {s}: {top} (gross {d['redis_commands_per_job_gross']:.1f}, "
                  f"background {d['redis_background_per_s']:.0f} cmd/s subtracted"
                  + ("; * NOISY: trust the gross" if d["redis_noisy"] else "")
                  + ")")  # fmt: skip
    print(
        f"sending {args.throughput_jobs}: "
        + ", ".join(
            f"{s} {results[s].send_s:.2f}s ({args.throughput_jobs / results[s].send_s:.0f}/s)"
            for s in SYSTEMS
        )
    )
    x = t.extra
    if "in_fleet_seq_p50_ms" in x:
        print(
            f"tierflow in-fleet p50, sequential: {x['in_fleet_seq_p50_ms']:.1f} ms (created_at → "
            "finished_at; the rest is submit_job's insert + send and wait()'s subscribe, "
            "wake-up, read)"
        )
    if "in_fleet_p50_ms" in x:
        print(
            f"tierflow in-fleet p50 in the burst: {x['in_fleet_p50_ms']:.0f} ms; first job done "
            f"{x['first_done_s']:.2f}s, last {x['last_done_s']:.2f}s after the burst's first job "
            "was stored"
        )
    load = os.getloadavg()
    print(
        f"machine: {os.cpu_count()} CPUs, load average {load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f}, "
        f"Python {platform.python_version()}. Shared, noisy machine: compare the ratios. "
        "Redis is shared too: its counts (first round) are deltas over a quiet window less "
        "the background rate."
    )


def print_sql_trace(traced: list[counters.TracedJob]) -> None:
    print()
    print(
        f"SQL statements per tierflow job (PostgreSQL log, log_statement=all, {len(traced)} jobs):"
    )
    for i, job in enumerate(traced):
        kinds = ", ".join(f"{k} {v}" for k, v in job.kinds().most_common())
        print(f"  job {i}: {len(job.statements)} statements ({kinds})")
    if traced:
        print("  first traced job, in order:")
        for n, (proc, sql) in enumerate(traced[0].statements, 1):
            print(f"  {n:>3}. {proc:<18} {counters.normalize_sql(sql)}")


def print_profiles(summaries: dict[str, counters.ProfileSummary]) -> None:
    for name, s in summaries.items():
        print()
        print(
            f"py-spy {name}: {s.samples} samples, {s.busy} busy (idle waits left out; shares "
            f"below are of busy samples), {s.in_tasks:.0%} of them inside tasks"
        )
        print(
            "  self share by package: " + ", ".join(f"{k} {v:.0%}" for k, v in s.packages_self[:10])
        )
        print("  top self:")
        for k, v in s.self_top[:12]:
            print(f"    {v:6.1%}  {k}")
        print("  top total, project code (share of busy samples with it on the stack):")
        for k, v in s.total_top[:15]:
            print(f"    {v:6.1%}  {k}")


# -- main ----------------------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(description="tierflow vs its design floor vs raw Celery")
    parser.add_argument("--jobs", type=int, default=200, help="sequential round trips (a)")
    parser.add_argument("--throughput-jobs", type=int, default=500, help="jobs sent at once (b)")
    parser.add_argument("--warmup", type=int, default=20, help="round trips before measuring")
    parser.add_argument(
        "--concurrency", type=int, default=8, help="threads per worker (layout one, raw)"
    )
    parser.add_argument("--pool", default="threads", help="celery worker pool (layout one, raw)")
    parser.add_argument("--layout", choices=("one", "split"), default="one")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="measure the three systems this many times, in turn (the ratios: their median)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object instead of the table"
    )
    parser.add_argument(
        "--no-counts",
        dest="counts",
        action="store_false",
        help="skip the ~10 s waits for PostgreSQL's stats (no commit counts)",
    )
    parser.add_argument(
        "--sql-trace",
        type=int,
        default=3,
        metavar="N",
        help="list the SQL of N tierflow jobs from the server log (0: skip)",
    )
    parser.add_argument(
        "--profile", type=Path, metavar="DIR", help="py-spy the tierflow workers into DIR"
    )
    parser.add_argument("--profile-jobs", type=int, default=100)
    parser.add_argument(
        "--profile-gil",
        action="store_true",
        help="sample only GIL-holding threads (a thread blocked in a socket read drops out)",
    )
    args = parser.parse_args()
    if args.jobs < 1 or args.throughput_jobs < 1 or args.warmup < 0 or args.rounds < 1:
        parser.error(
            "--jobs, --throughput-jobs and --rounds must be at least 1, --warmup at least 0"
        )

    missing = services_up()
    if missing:
        log("missing services: " + ", ".join(missing))
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    run_id = uuid.uuid4().hex[:10]
    db_name = f"tierflow_bench_{run_id}"
    prefix = f"tfbench-{run_id}"
    config_dir = Path(tempfile.mkdtemp(prefix="tierflow-bench-cfg-"))
    workers: list[Worker] = []
    ok = False
    began = time.perf_counter()
    ctx: Context | None = None
    try:
        db_url = create_database(db_name)
        pg_url = db_url.replace("postgresql+psycopg://", "postgresql://")
        config = fleet_config(
            local_fast=[fake_model("fake-fast", latency_ms=0)],
            local_quality=[fake_model("fake-quality", latency_ms=0)],
            api_fallback=[
                fake_model("fake-api", input_cost_per_million=3.0, output_cost_per_million=15.0,
                           latency_ms=0)
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
                "TFBENCH_FLOOR_BROKER_URL": REDIS_URL,
                "TFBENCH_FLOOR_PREFIX": prefix,
                "TFBENCH_FLOOR_PG": pg_url,
            }
        )
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}

        from tests.bench.floor_app import create_schema
        from tierflow.core.db import upgrade_database

        upgrade_database(db_url)
        create_schema(pg_url)

        import redis

        ctx = Context(counters.PgCommits(ADMIN_URL.replace("+psycopg", ""), db_name),
                      redis.Redis.from_url(REDIS_URL), run_id)  # fmt: skip
        workers = start_workers(env, args)
        for w in workers:
            w.proc.wait_ready()
        log(f"run {run_id}: database {db_name}, Redis prefix {prefix}, layout {args.layout}")
        for w in workers:
            log(f"  {w.system}: {w.describe}")

        benches = {"raw": bench_raw, "floor": bench_floor, "tierflow": bench_tierflow}
        rounds: list[dict[str, Measured]] = []
        # CPU seconds over every round: each worker's (a system's is the sum of its workers'),
        # this client's while each system was measured
        cpu_by_worker = {w.name: 0.0 for w in workers}
        cpu_client = dict.fromkeys(SYSTEMS, 0.0)
        # the local PostgreSQL's and Redis's CPU seconds while each system was measured
        cpu_services = {s: dict.fromkeys(counters.SERVICE_NAMES.values(), 0.0) for s in SYSTEMS}
        for r in range(args.rounds):
            # each round measures the three back to back, starting with a different one, so a
            # machine that slows down mid-run slows every system alike
            order = SYSTEMS[r % 3 :] + SYSTEMS[: r % 3]
            this: dict[str, Measured] = {}
            for system in order:
                t0 = time.perf_counter()
                own = [w for w in workers if w.system == system]
                each_before = {w.name: counters.cpu_s(w.proc.proc.pid) for w in own}
                client_cpu, services_before = time.process_time(), counters.service_cpu_s()
                # the commits and Redis commands are counted in the first round only (each
                # count waits ~10 s for PostgreSQL's statistics)
                round_args = argparse.Namespace(**{**vars(args), "counts": args.counts and r == 0})
                this[system] = benches[system](round_args, ctx)
                cpu_client[system] += time.process_time() - client_cpu
                for name, used in counters.service_cpu_s().items():
                    cpu_services[system][name] += used - services_before[name]
                for w in own:
                    cpu_by_worker[w.name] += counters.cpu_s(w.proc.proc.pid) - each_before[w.name]
                log(f"round {r + 1}/{args.rounds}: {system} measured in "
                    f"{time.perf_counter() - t0:.1f}s")  # fmt: skip
            rounds.append(this)
        results = {s: combined([rd[s] for rd in rounds]) for s in SYSTEMS}
        # CPU per job over every measurement (warm-ups, round trips, bursts); the idle waits of
        # the counts cost next to nothing
        n = (args.warmup + args.jobs + args.throughput_jobs) * args.rounds
        for system in SYSTEMS:
            worker_cpu = sum(cpu_by_worker[w.name] for w in workers if w.system == system)
            results[system].extra["worker_cpu_ms_per_job"] = worker_cpu / n * 1000
            results[system].extra["client_cpu_ms_per_job"] = cpu_client[system] / n * 1000
            for name, used in cpu_services[system].items():
                results[system].extra[f"{name.lower()}_cpu_ms_per_job"] = used / n * 1000
        rss: dict[str, dict[str, float]] = {s: {} for s in SYSTEMS}
        for w in workers:
            rss[w.system][w.name] = counters.rss_mb(w.proc.proc.pid)
        data: dict[str, Any] = {s: summary(results[s], rss[s]) for s in SYSTEMS}
        for w in workers:
            data[w.system].setdefault("worker_cpu_ms_per_job_by_worker", {})[w.name] = round(
                cpu_by_worker[w.name] / n * 1000, 3
            )
        data["layout"] = args.layout
        data["ratios"] = round_ratios(rounds)
        data["rounds"] = [
            {s: {"p50_ms": round(rd[s].p50, 3), "p99_ms": round(rd[s].p99, 3),
                 "jobs_per_s": round(rd[s].jobs_per_s, 1)} for s in SYSTEMS}
            for rd in rounds
        ]  # fmt: skip
        data["workers"] = [w.describe for w in workers]
        data["run"] = {"jobs": args.jobs, "throughput_jobs": args.throughput_jobs,
                       "warmup": args.warmup, "loadavg": os.getloadavg()}  # fmt: skip

        fleet_procs = {w.name: w.proc.proc.pid for w in workers if w.system == "tierflow"}
        summaries: dict[str, counters.ProfileSummary] = {}
        if args.profile:
            log(f"profiling {args.profile_jobs} sequential tierflow jobs (untimed)")
            profiler = counters.Profiler(
                args.profile, {**fleet_procs, "client": os.getpid()}, gil=args.profile_gil
            )
            timed(tierflow_one(run_id), args.profile_jobs, [])
            for name, path in profiler.stop().items():
                summaries[name] = counters.summarize_collapsed(path.read_text().splitlines())
            data["profile"] = {
                name: {"samples": s.samples, "busy": s.busy, "in_tasks": s.in_tasks,
                       "self_top": s.self_top, "total_top": s.total_top,
                       "packages_self": s.packages_self}
                for name, s in summaries.items()
            }  # fmt: skip
        traced: list[counters.TracedJob] = []
        if args.sql_trace:
            from tests.bench.sql_guard import count_statements_per_job

            found = count_statements_per_job(
                db_name, tierflow_one(run_id), args.sql_trace, fleet_procs
            )
            if found is None:
                log("--sql-trace: the PostgreSQL server log is not readable here; skipped")
            else:
                traced = found
                data["sql_trace"] = [
                    {"statements": len(t.statements), "kinds": dict(t.kinds()),
                     "list": [[p, counters.normalize_sql(s, 300)] for p, s in t.statements]}
                    for t in traced
                ]  # fmt: skip
        if args.json:
            print(json.dumps(data, indent=2, default=str))
        else:
            print()
            print_table(results, data, args, workers)
            if traced:
                print_sql_trace(traced)
            if summaries:
                print_profiles(summaries)
        ok = True
    except (KeyboardInterrupt, SystemExit):
        log("interrupted; cleaning up")
    except Exception:
        traceback.print_exc()
        for w in workers:
            try:
                log(f"--- log of worker {w.name} (last 3000 chars) ---")
                log(w.proc.output()[-3000:])
            except OSError:
                pass
    finally:
        if ctx is not None and ctx.pg is not None:
            ctx.pg.close()
        cleanup([w.proc for w in workers], db_name, prefix, config_dir)
        log(f"total {time.perf_counter() - began:.1f}s; cleaned up")
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
            log(f"clean-up: could not {what}")
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
    for module in ("tests.bench.raw_celery_app", "tests.bench.floor_app"):
        if module in sys.modules:
            sys.modules[module].app.close()


if __name__ == "__main__":
    sys.exit(main())
