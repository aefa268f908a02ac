"""Benchmark fair shares per daemon on a contended tier, against today's FIFO, in one run.

    python tests/bench/bench_fairness.py [--a-jobs 5000] [--b-jobs 20] [--b-every 0.2]
        [--latency-ms 50] [--cap 4] [--a-from thread|process] [--only 'B alone,fair'] [--json]

Needs PostgreSQL on 127.0.0.1:5432 (trust, user ``postgres``) and Redis on 127.0.0.1:6379. The
run makes its own database and Redis key prefix and removes both (and its workers) at the end.

The tier ``local_fast`` is the fake backend with ``--latency-ms`` calls and
``limits.max_concurrency: --cap``; workers are real ``celery worker`` processes (a router worker
and a tier worker, threads), restarted for each scenario with that scenario's config:

- ``B alone``: daemon B sends ``--b-jobs`` jobs one every ``--b-every`` seconds on the idle fleet;
- ``A alone``: daemon A sends ``--a-jobs`` jobs at once; its throughput (jobs/s, first submit to
  last result);
- ``FIFO``: both at once with ``fair_share: false`` (every attempt straight to the tier queue);
- ``fair``: both at once with fair shares on (the default);
- ``3:1``: daemons A (weight 3) and C (weight 1) each send half of ``--a-jobs`` at once; the
  shares are the admissions counted while both still had work waiting.

B's wait is submit to result, per job. Targets (issue 34): B's p95 under contention within 1.5x of
B alone; A keeps at least 90% of its alone throughput; 3:1 within 10%.

B's wait is also split by part (:data:`PARTS`: submit_job's own time, the router's queue, the
route, admission and the tier's queue, the run to the result; from the bench's clock and the
workers' INFO logs) beside its ``JobResult``'s queue/model/fleet split, p50/p95, and B's three
slowest jobs are logged part by part. A's burst comes from a thread of the bench (``--a-from
thread``, as before: it shares B's interpreter) or from a process of its own (``process``, as a
separate daemon would); either way it shares the machine's cores with the fleet.

What it showed on 2 shared cores (A 5,000 jobs, 50 ms calls, cap 4): B's job does not wait in
the router's queue (p50 0 ms; p95 8-15 ms while A's submits run at 200-300/s); its extra wait is
admission, the wait for the next freed slot (p50/p95 15/42 ms against 1/2 alone: the residual of
a slot's cycle, 4 slots each freed every ~65 ms, so about the minimum of 4 uniform waits on
[0, 65]), and the CPU that A's submitter takes from the fleet while it runs (the run to the
result 66/77 ms against 58/62 alone; submit 8/16 against 5/7), which also stretches the slots'
cycle. With 1,000 jobs A's submits end after 4.5 s, early in B's window: B's p95 1.36x, admission
12/25, the run 60/65; with 5,000 they go on for 22-24 s, all through it.
Not collected by pytest (``tests/bench`` is ignored).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any, cast

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

ACTION = "extract_topic"  # simple: local_fast
WAIT_S = 900.0


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


class Scenario:
    """One fleet (its config, its workers) for one measurement."""

    def __init__(self, args: argparse.Namespace, config_dir: Path, **extra: Any) -> None:
        config = fleet_config(
            local_fast=[
                fake_model(
                    "fake-fast",
                    latency_ms=args.latency_ms,
                    limits={"max_concurrency": args.cap},
                )
            ]
        )
        config.update(extra)
        os.environ["TIERFLOW_CONFIG"] = str(write_config(config, config_dir))
        from tierflow.core.settings import reset_settings

        reset_settings()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.workers = [
            WorkerProcess(env, queues="router,maintenance", concurrency=8),
            WorkerProcess(
                env,
                queues="tier.local_fast,tier.local_quality,tier.api_fallback",
                concurrency=max(8, 2 * args.cap),
            ),
        ]
        for w in self.workers:
            w.wait_ready()

    def stop(self) -> None:
        for w in self.workers:
            w.stop()
            shutil.rmtree(w.log.parent, ignore_errors=True)


def burst(daemon: str, n: int, tag: str) -> tuple[float, list[Any]]:
    """Submit ``n`` jobs of ``daemon`` as fast as one client can; (start, handles)."""
    from router import submit_job

    began = time.perf_counter()
    handles = [
        submit_job(
            f"Extract topic from: 'note {tag}-{daemon}-{i}'",
            ACTION,
            metadata={"daemon": daemon},
            cache=False,
        )
        for i in range(n)
    ]
    return began, handles


def finish(handles: list[Any]) -> None:
    for h in handles:
        result = h.wait(timeout=WAIT_S)
        if result.status != "succeeded":
            raise RuntimeError(f"job {h.job_id} ended {result.status}: {result.error}")


class BJob:
    """One of B's jobs as the bench saw it: its id, wall clock (s, ``time.time``) before and
    after ``submit_job`` and when its result came, and its wait (s)."""

    def __init__(self, job_id: str, began: float, submitted: float, ended: float) -> None:
        self.job_id, self.began, self.submitted, self.ended = job_id, began, submitted, ended
        self.wait = ended - began


def paced(daemon: str, n: int, every: float, tag: str) -> list[BJob]:
    """Send ``n`` jobs one every ``every`` seconds, each waited in its own thread."""
    from router import submit_job

    jobs: list[BJob] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        began = time.time()
        handle = submit_job(
            f"Extract topic from: 'note {tag}-{daemon}-{i}'",
            ACTION,
            metadata={"daemon": daemon},
            cache=False,
        )
        submitted = time.time()
        result = handle.wait(timeout=WAIT_S)
        if result.status != "succeeded":
            raise RuntimeError(f"job {handle.job_id} ended {result.status}")
        with lock:
            jobs.append(BJob(handle.job_id, began, submitted, time.time()))

    threads = []
    for i in range(n):
        t = threading.Thread(target=one, args=(i,))
        t.start()
        threads.append(t)
        time.sleep(every)
    for t in threads:
        t.join()
    if len(jobs) != n:
        raise RuntimeError(f"{n - len(jobs)} of {daemon}'s jobs did not finish")
    return jobs


_LOG_LINE = re.compile(
    r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): INFO/MainProcess\] Task "
    r"(route_job|run_attempt) job=([0-9a-f-]{36}) .*?\] (received|succeeded)"
)


def log_times(workers: list[Any]) -> dict[tuple[str, str, str], float]:
    """(job, task, received|succeeded) -> wall clock (s) from the workers' INFO logs (the
    first of each: a redelivery keeps the first)."""
    out: dict[tuple[str, str, str], float] = {}
    for w in workers:
        for line in w.log.read_text(errors="replace").splitlines():
            m = _LOG_LINE.match(line)
            if m:
                stamp = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
                out.setdefault((m.group(3), m.group(2), m.group(4)), stamp)
    return out


# Where B's wait went, in order: submit_job's own time; its routing message waiting in the
# router's queue (and the router worker's prefetch) until the router worker received it;
# received to routed (a thread free, the plan, its save, the admission); routed to the tier
# worker's receipt of the attempt (a line in Redis, the tier queue); receipt to the result.
PARTS = ("submit", "router_q", "route", "admit_tier_q", "run_to_result")


def breakdown(jobs: list[BJob], workers: list[Any]) -> dict[str, float]:
    """Medians and p95s (ms) of B's wait by :data:`PARTS`, and of its ``JobResult``'s
    queue/model/fleet split (tierflow/store/timing.py)."""
    from tierflow import store

    times = log_times(workers)
    parts: dict[str, list[float]] = {p: [] for p in PARTS}
    split: dict[str, list[float]] = {"queue_ms": [], "model_ms": [], "fleet_ms": []}
    slowest = sorted(jobs, key=lambda j: j.wait)[-3:]
    for job in jobs:
        marks = [
            job.began,
            job.submitted,
            times.get((job.job_id, "route_job", "received")),
            times.get((job.job_id, "route_job", "succeeded")),
            times.get((job.job_id, "run_attempt", "received")),
            job.ended,
        ]
        if None not in marks:
            stamps = cast(list[float], marks)
            spans = [1000 * (b - a) for a, b in itertools.pairwise(stamps)]
            for name, span in zip(PARTS, spans, strict=True):
                parts[name].append(span)
            if job in slowest:  # the tail, job by job: which part made it
                log(f"  slow B job {1000 * job.wait:.0f} ms: " + ", ".join(
                    f"{name} {span:.0f}" for name, span in zip(PARTS, spans, strict=True)
                ))  # fmt: skip
        result = store.job_result(job.job_id)
        for key, values in split.items():
            value = getattr(result, key, None) if result is not None else None
            if value is not None:
                values.append(value)
    out: dict[str, float] = {}
    for name, values in [*parts.items(), *split.items()]:
        if values:
            out[f"{name}_p50"] = statistics.median(values)
            out[f"{name}_p95"] = percentile(values, 0.95)
    return out


def b_figures(jobs: list[BJob], scenario: Scenario) -> dict[str, float]:
    waits = [j.wait for j in jobs]
    return {
        "p50_ms": 1000 * statistics.median(waits),
        "p95_ms": 1000 * percentile(waits, 0.95),
        **{f"b_{k}": v for k, v in breakdown(jobs, scenario.workers).items()},
    }


def run_alone_b(args: argparse.Namespace, tag: str, scenario: Scenario) -> dict[str, float]:
    return b_figures(paced("B", args.b_jobs, args.b_every, tag), scenario)


def a_burst(args: argparse.Namespace, tag: str, started: threading.Event) -> dict[str, float]:
    """Daemon A's burst of ``--a-jobs`` at once, waited to the end: in a thread of this process
    (``--a-from thread``, sharing its interpreter with B's submitter) or from a process of its
    own (``--a-from process``, as a separate daemon would: ``--burst`` below). Its jobs/s
    (first submit to last result) and the seconds its submits took."""
    if args.a_from == "thread":
        started.set()
        began, handles = burst("A", args.a_jobs, tag)
        sent = time.perf_counter() - began
        finish(handles)
        return {"rate": args.a_jobs / (time.perf_counter() - began), "submit_s": sent}
    cmd = [sys.executable, __file__, "--burst", "A", "--a-jobs", str(args.a_jobs), "--tag", tag]
    child = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True)
    started.set()
    out, _ = child.communicate(timeout=WAIT_S)
    if child.returncode != 0:
        raise RuntimeError(f"A's burst process ended {child.returncode}")
    return cast(dict[str, float], json.loads(out.strip().splitlines()[-1]))


def burst_main(daemon: str, n: int, tag: str) -> int:
    """The ``--burst`` child: send ``n`` jobs of ``daemon`` at once, wait them, print JSON."""
    began, handles = burst(daemon, n, tag)
    sent = time.perf_counter() - began
    finish(handles)
    print(json.dumps({"rate": n / (time.perf_counter() - began), "submit_s": sent}))
    return 0


def run_alone_a(args: argparse.Namespace, tag: str, scenario: Scenario) -> dict[str, float]:
    got = a_burst(args, tag, threading.Event())
    return {"jobs_per_s": got["rate"], "a_submit_s": got["submit_s"]}


def run_contended(args: argparse.Namespace, tag: str, scenario: Scenario) -> dict[str, float]:
    out: dict[str, Any] = {}
    started = threading.Event()

    def a_side() -> None:
        out.update(a_burst(args, tag, started))

    a = threading.Thread(target=a_side)
    a.start()
    started.wait()
    time.sleep(1.0)  # A's burst is under way and the tier saturated
    jobs = paced("B", args.b_jobs, args.b_every, tag)
    a.join()
    if "rate" not in out:
        raise RuntimeError("A's burst failed")
    return {**b_figures(jobs, scenario), "a_jobs_per_s": out["rate"], "a_submit_s": out["submit_s"]}


def run_weighted(args: argparse.Namespace, tag: str, scenario: Scenario) -> dict[str, float]:
    from router.dispatch import fair_share
    from tierflow.core.constants import Tier

    half = args.a_jobs // 2
    handles: list[Any] = []
    threads = [
        threading.Thread(target=lambda d=d: handles.extend(burst(d, half, tag)[1]))
        for d in ("A", "C")
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    share = fair_share()
    first = last = None
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:  # from when both wait to the last moment both still wait
        loads = share.loads(Tier.LOCAL_FAST)
        if all(d in loads and loads[d].waiting > 0 for d in ("A", "C")):
            last = {d: loads[d].served for d in ("A", "C")}
            first = first or last
        elif first is not None or sum(x.served for x in loads.values()) >= 2 * half:
            break
        time.sleep(0.1)
    finish(handles)
    if first is None or last is None or last["C"] == first["C"]:
        return {"ratio": float("nan")}
    return {"ratio": (last["A"] - first["A"]) / (last["C"] - first["C"])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a-jobs", type=int, default=5000)
    parser.add_argument("--b-jobs", type=int, default=20)
    parser.add_argument("--b-every", type=float, default=0.2)
    parser.add_argument("--latency-ms", type=int, default=50)
    parser.add_argument("--cap", type=int, default=4)
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--a-from",
        choices=("thread", "process"),
        default="thread",
        help="A's burst from a thread of the bench (sharing B's interpreter) or its own process",
    )
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated scenarios to run (default: all): 'B alone,fair' for a quick look",
    )
    parser.add_argument("--burst", help=argparse.SUPPRESS)  # child: this daemon's burst
    parser.add_argument("--tag", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.burst:
        return burst_main(args.burst, args.a_jobs, args.tag)
    if args.a_jobs < 2 or args.b_jobs < 1 or args.b_every <= 0 or args.cap < 1:
        parser.error("--a-jobs >= 2, --b-jobs >= 1, --b-every > 0, --cap >= 1")
    missing = services_up()
    if missing:
        log("missing services: " + ", ".join(missing))
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    run_id = uuid.uuid4().hex[:10]
    db_name = f"tierflow_fair_{run_id}"
    prefix = f"tffair-{run_id}"
    config_dir = Path(tempfile.mkdtemp(prefix="tierflow-fair-cfg-"))
    results: dict[str, dict[str, float]] = {}
    ok = False
    try:
        db_url = create_database(db_name)
        os.environ.pop("TIERFLOW_REDIS_URL", None)
        os.environ.update(
            {
                "TIERFLOW_BROKER_URL": REDIS_URL,
                "TIERFLOW_DATABASE_URL": db_url,
                "TIERFLOW_KEY_PREFIX": prefix,
            }
        )
        from tierflow.core.db import upgrade_database

        upgrade_database(db_url)
        plan: list[tuple[str, dict[str, Any], Any]] = [
            ("B alone", {}, run_alone_b),
            ("A alone", {}, run_alone_a),
            ("FIFO", {"fair_share": False}, run_contended),
            ("fair", {}, run_contended),
            ("3:1", {"daemons": {"A": {"weight": 3}, "C": {"weight": 1}}}, run_weighted),
        ]
        wanted = {n.strip() for n in args.only.split(",") if n.strip()}
        unknown = wanted - {name for name, _, _ in plan}
        if unknown:
            raise ValueError(f"--only: unknown scenarios {sorted(unknown)}")
        for name, extra, bench in plan:
            if wanted and name not in wanted:
                continue
            scenario = Scenario(args, config_dir, **extra)
            try:
                log(f"{name} ...")
                began = time.perf_counter()
                results[name] = bench(args, f"{run_id}-{name}", scenario)
                log(f"{name}: {results[name]} ({time.perf_counter() - began:.0f}s)")
            finally:
                scenario.stop()
                delete_prefix(prefix, "fair:*")
        ok = True
    except Exception:
        traceback.print_exc()
    finally:
        _close()
        try:
            drop_database(db_name)
        except Exception:
            traceback.print_exc()
        delete_prefix(prefix)
        shutil.rmtree(config_dir, ignore_errors=True)
    if results:
        print_table(results, args)
        if args.json:
            print(json.dumps(results, indent=2))
    return 0 if ok else 1


def print_table(results: dict[str, dict[str, float]], args: argparse.Namespace) -> None:
    b = results.get("B alone", {})
    a = results.get("A alone", {})
    print(
        f"\nfairness: A {args.a_jobs} jobs at once, B {args.b_jobs} jobs one every "
        f"{args.b_every}s, fake {args.latency_ms} ms calls, local_fast cap {args.cap}, "
        f"A sent from a {args.a_from}"
    )
    print(f"{'scenario':<10} {'B p50 ms':>9} {'B p95 ms':>9} {'B p95 / alone':>14} "
          f"{'A jobs/s':>9} {'A / alone':>10}")  # fmt: skip
    for name in ("B alone", "A alone", "FIFO", "fair"):
        r = results.get(name)
        if r is None:
            continue
        p50, p95 = r.get("p50_ms"), r.get("p95_ms")
        rate = r.get("a_jobs_per_s", r.get("jobs_per_s"))
        ratio_b = p95 / b["p95_ms"] if p95 is not None and b.get("p95_ms") else None
        ratio_a = rate / a["jobs_per_s"] if rate is not None and a.get("jobs_per_s") else None
        print(
            f"{name:<10} {_f(p50):>9} {_f(p95):>9} {_f(ratio_b, 2):>14} {_f(rate, 1):>9} "
            f"{_f(ratio_a, 2):>10}"
        )
    print_breakdown(results)
    if "3:1" in results:
        print(f"weights 3:1 -> admitted A:C = {_f(results['3:1']['ratio'], 2)} (target 2.7-3.3)")


def print_breakdown(results: dict[str, dict[str, float]]) -> None:
    """B's wait by part (:data:`PARTS`, from the bench's clock and the workers' logs) and its
    ``JobResult`` split, p50/p95 ms; A's submit seconds."""
    names = [n for n in ("B alone", "FIFO", "fair") if n in results]
    if not names:
        return
    print("\nB's wait by part, ms p50/p95 (router_q: submit to the router worker's receipt; "
          "admit_tier_q: routed to the tier worker's receipt)")  # fmt: skip
    cols = [*PARTS, "queue_ms", "model_ms", "fleet_ms"]
    print(f"{'scenario':<10} " + " ".join(f"{c:>15}" for c in cols) + f" {'A submit s':>10}")
    for name in names:
        r = results[name]
        cells = [f"{_f(r.get(f'b_{c}_p50'))}/{_f(r.get(f'b_{c}_p95'))}" for c in cols]
        print(f"{name:<10} " + " ".join(f"{c:>15}" for c in cells)
              + f" {_f(r.get('a_submit_s'), 1):>10}")  # fmt: skip
    if "A alone" in results:
        print(f"A alone: its submits took {_f(results['A alone'].get('a_submit_s'), 1)} s")


def _f(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _close() -> None:
    if "tierflow.core.db" in sys.modules:
        from tierflow.core.db import reset_engines

        reset_engines()


if __name__ == "__main__":
    sys.exit(main())
