"""Batch benchmarks: a big batch through ``tierflow up`` beside raw Celery, interactive latency
under a running batch, and a batch on the real embedded model.

    python tests/bench/bench_batch.py [--jobs 10000]         # throughput (the default)
    python tests/bench/bench_batch.py --interactive [--interactive-jobs 100] [--batch-jobs 5000]
                                      [--in-flight N]
    python tests/bench/bench_batch.py --real 200 [--real-timeout 720]
    python tests/bench/bench_batch.py --submit 100000          # submission alone, no worker
    ... [--json] [--redis-db 13] [--raw-concurrency 8]

Needs PostgreSQL on 127.0.0.1:5432 (trust, user ``postgres``) and Redis on 127.0.0.1:6379. Each
mode makes its own database (``tierflow_bbench_<run>``) and key prefix in Redis database
``--redis-db`` (not the tests' 0), starts its own ``tierflow up`` with a state directory of its
own and no dashboard, and removes all of it at the end, failure or not.

throughput (``--jobs N``): the FAKE backend on every tier at zero latency (``fleet_config`` of
    ``tests/support/services.py``, as ``bench_fleet.py``). One run, the two systems one after the
    other, each alone on the machine:
    raw:      one ``celery worker`` of ``raw_celery_app.py`` (threads, ``--raw-concurrency``,
              prefetch 1); a submitter process (``batch_support.py raw-send``) sends N no-ops,
              Redis result backend; done = the latest ``date_done`` of the N results.
    tierflow: ``tierflow up``, then ``tierflow batch run FILE.jsonl`` as a child process (N lines
              of ``extract_topic``: simple, so local_fast, which passes the gate on the fake's
              answer); done = the latest ``finished_at`` of the batch's jobs.
    Both submitters are measured alike: wall time, peak RSS (``ru_maxrss`` of that child, and
    psutil samples every 20 ms, whose curve shows whether memory stays flat). jobs/s is N over
    submit start → last job done.
interactive (``--interactive``): the same fake fleet. ``--interactive-jobs`` sequential
    ``submit_job(...).wait()`` round trips on the idle fleet, then the same while a
    ``--batch-jobs`` batch runs (started with ``tierflow batch run``; the loaded phase starts
    once the fleet has finished some of the batch, and every round trip records how many batch
    jobs were still queued and unfinished). p50/p95 of both and their ratio; measured, not
    asserted. ``--in-flight N`` runs the batch with the submitter's window of N (0: none);
    without it, the default window, which yields to daemons' jobs (``router/batch.py``).
real (``--real N``): ``tierflow up`` on the packaged default configuration, the embedded
    llama.cpp engine (Gemma 3 270M) on a free port; vLLM points at a closed port and no API key
    is set, so the local tiers serve. N ``yes_no_decision`` lines (a label answer). Waits up to
    ``--real-timeout`` seconds, then cancels what is left and reports what finished: jobs/s,
    cost, status counts, attempts and pass rate per tier.

submit (``--submit N``): no worker. Raw Celery's ``apply_async`` loop of N no-ops and a raw
    multi-row insert of N job-sized rows (``batch_support.py``), then ``tierflow batch run
    --in-flight 0`` of N/10 and of N lines (fake config): wall time, lines/s, the rate past the
    CLI's start (from the batch's opening), peak RSS (flat memory: N/10 against N); then
    ``submit_batch`` of N lines in a child of its own, timed alone; and the start of
    ``tierflow --help`` and ``tierflow batch status`` beside ``python -c pass`` (best of 3).

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
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# Only modules that read no tierflow settings may be imported before the environment is set.
import psycopg  # noqa: E402
import redis  # noqa: E402

from tests.bench.batch_support import Measured, UpFleet, run_measured  # noqa: E402
from tests.support.services import (  # noqa: E402
    PG_HOST,
    PG_PORT,
    WorkerProcess,
    create_database,
    drop_database,
    fake_model,
    fleet_config,
    services_up,
    write_config,
)
from tierflow.app.embedded import free_port  # noqa: E402
from tierflow.core.constants import ALL_QUEUES, priority_lists  # noqa: E402

ACTION = "extract_topic"  # simple → local_fast; the fake's answer passes its gate
REAL_ACTION = "yes_no_decision"  # a label answer: a few tokens from the small model
TERMINAL = ("succeeded", "failed", "expired", "cancelled")
UP_TIMEOUT_S = 300.0  # a loaded 2-core machine; the engine's first start assembles the GGUF
RAW_QUEUE = "tfbench.raw"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


# -- one run's services --------------------------------------------------------------------------
@dataclass
class Run:
    """A run's own database, Redis key prefix (in its own Redis database) and state directory."""

    run_id: str
    redis_url: str
    db_name: str
    db_url: str
    prefix: str
    state_dir: Path

    @property
    def pg_url(self) -> str:
        return self.db_url.replace("postgresql+psycopg://", "postgresql://")

    def env(self, config: Path | None, **extra: str) -> dict[str, str]:
        """A child's environment: no TIERFLOW_* or API key of the caller's, the run's own."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("TIERFLOW_", "TFBENCH_"))
            and k not in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY")
        }
        env.update(
            TIERFLOW_BROKER_URL=self.redis_url,
            TIERFLOW_DATABASE_URL=self.db_url,
            TIERFLOW_KEY_PREFIX=self.prefix,
            TIERFLOW_STATE_DIR=str(self.state_dir),
            PYTHONUNBUFFERED="1",
            PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
            **extra,
        )
        if config is not None:
            env["TIERFLOW_CONFIG"] = str(config)
        return env

    def sql(self, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.pg_url, autocommit=True) as conn:
            return list(conn.execute(query, params).fetchall())

    def queued(self, client: redis.Redis) -> int:
        """Messages waiting in the fleet's queues (every priority list), not yet reserved."""
        pipe = client.pipeline()
        for queue in ALL_QUEUES:
            for name in priority_lists(queue, self.prefix):
                pipe.llen(name)
        return sum(int(n) for n in pipe.execute())


@contextmanager
def run_services(redis_db: int, label: str) -> Iterator[Run]:
    run_id = uuid.uuid4().hex[:8]
    redis_url = f"redis://127.0.0.1:6379/{redis_db}"
    db_name = f"tierflow_bbench_{run_id}"
    # Short: the state dir holds the fleet's logs; keep paths well under socket-path limits.
    state = Path(tempfile.mkdtemp(prefix=f"tfbb-{label}-"))
    run = Run(run_id, redis_url, db_name, create_database(db_name), f"tfbb-{run_id}", state)
    log(f"{label} run {run_id}: database {db_name}, Redis {redis_url} prefix {run.prefix}")
    try:
        yield run
    finally:
        for what, step in (
            (f"drop database {db_name}", lambda: drop_database(db_name)),
            (f"delete Redis keys {run.prefix}:*", lambda: _delete_prefix(redis_url, run.prefix)),
        ):
            try:
                step()
            except Exception:
                log(f"clean-up: could not {what}")
                traceback.print_exc()
        shutil.rmtree(state, ignore_errors=True)


def _delete_prefix(redis_url: str, prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(f"{prefix}:*", count=1000))
    for i in range(0, len(keys), 500):
        client.delete(*keys[i : i + 500])
    client.close()


def fake_config(directory: Path) -> Path:
    config = fleet_config(
        local_fast=[fake_model("fake-fast", latency_ms=0)],
        local_quality=[fake_model("fake-quality", latency_ms=0)],
        api_fallback=[
            fake_model(
                "fake-api", input_cost_per_million=3.0, output_cost_per_million=15.0, latency_ms=0
            )
        ],
    )
    return write_config(config, directory)


@contextmanager
def up_fleet(run: Run, env: dict[str, str], timeout_s: float = UP_TIMEOUT_S) -> Iterator[UpFleet]:
    """``tierflow up --dashboard 0`` (no page nobody reads), up, and stopped on the way out."""
    fleet = UpFleet(env, run.state_dir / "up.log", ["--dashboard", "0"])
    try:
        took = fleet.wait_up(timeout_s)
        log(f"tierflow up: fleet up in {took:.1f}s")
        yield fleet
    except Exception:
        log(f"--- tierflow up log (last 4000 chars) ---\n{fleet.output()[-4000:]}")
        logs = run.state_dir / "logs"
        for child_log in sorted(logs.glob("*.log")) if logs.is_dir() else []:
            log(f"--- {child_log.name} (last 1500 chars) ---")
            log(child_log.read_text(errors="replace")[-1500:])
        raise
    finally:
        fleet.stop()


def write_batch(path: Path, n: int, line: Callable[[int], dict[str, Any]]) -> Path:
    with path.open("w", encoding="utf-8") as out:
        for i in range(n):
            out.write(json.dumps(line(i)) + "\n")
    return path


def fake_line(run_id: str, tag: str) -> Callable[[int], dict[str, Any]]:
    def line(i: int) -> dict[str, Any]:
        return {
            "prompt": f"Extract topic from: 'bench {run_id} {tag} {i}: fixed the auth bug'",
            "action_type": ACTION,
        }

    return line


def batch_run(path: Path, name: str) -> list[str]:
    return [sys.executable, "-m", "tierflow.cli", "batch", "run", str(path), "--name", name]


def batch_id(run: Run, name: str) -> str:
    rows = run.sql("SELECT id FROM batches WHERE name = %s", (name,))
    if not rows:
        raise RuntimeError(f"no batch {name!r} stored")
    return str(rows[0][0])


def batch_counts(run: Run, bid: str) -> dict[str, int]:
    rows = run.sql("SELECT status, count(*) FROM jobs WHERE batch_id = %s GROUP BY status", (bid,))
    return {str(s): int(c) for s, c in rows}


def wait_batch(run: Run, bid: str, jobs: int, timeout_s: float, poll_s: float = 1.0) -> bool:
    """True once every one of ``jobs`` is finished; False at ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last_note = 0.0
    while True:
        counts = batch_counts(run, bid)
        finished = sum(counts.get(s, 0) for s in TERMINAL)
        if finished >= jobs:
            return True
        if time.monotonic() > deadline:
            return False
        if time.monotonic() - last_note > 30:
            log(f"  batch: {finished}/{jobs} finished {counts}")
            last_note = time.monotonic()
        time.sleep(poll_s)


def batch_times(run: Run, bid: str) -> tuple[datetime, datetime, datetime]:
    """The batch's first job stored, its last job stored, its last job finished (UTC)."""
    row = run.sql(
        "SELECT min(created_at), max(created_at), max(finished_at) FROM jobs WHERE batch_id = %s",
        (bid,),
    )[0]
    return row[0], row[1], row[2]


def batch_created(run: Run, bid: str) -> datetime:
    created: datetime = run.sql("SELECT created_at FROM batches WHERE id = %s", (bid,))[0][0]
    return created


def rss_by_line(run: Run, bid: str, m: Measured, n: int) -> dict[str, float | None]:
    """The submitter's sampled RSS when lines 1, n/4, n/2, 3n/4 and n were stored: flat memory
    reads the same from the first line to the last (the start-up's imports come before line 1)."""
    lines = sorted({0, n // 4, n // 2, 3 * n // 4, n - 1})
    rows = run.sql(
        "SELECT batch_line, created_at FROM jobs WHERE batch_id = %s AND batch_line = ANY(%s)",
        (bid, lines),
    )
    out: dict[str, float | None] = {}
    for line, created in sorted(rows):
        rss = m.rss_when(created)
        out[str(line + 1)] = None if rss is None else round(rss, 1)
    return out


def submitter_summary(m: Measured) -> dict[str, Any]:
    return {
        "wall_s": round(m.wall_s, 2),
        "returncode": m.returncode,
        "peak_rss_mib": round(m.peak_rss_mib, 1),
        "sampled_peak_rss_mib": round(m.sampled_peak_mib, 1),
        "rss_mib_at": {
            f"{int(s * 100)}%": round(m.rss_at(s) or 0, 1) for s in (0.25, 0.5, 0.75, 1.0)
        },
    }


def check_ok(m: Measured, what: str) -> None:
    if m.returncode != 0:
        raise RuntimeError(f"{what} exited {m.returncode}:\n{m.output[-3000:]}")


# -- throughput ----------------------------------------------------------------------------------
def bench_raw(run: Run, n: int, concurrency: int, timeout_s: float) -> dict[str, Any]:
    raw_prefix = f"{run.prefix}:raw"
    env = run.env(
        None,
        TFBENCH_RAW_BROKER_URL=run.redis_url,
        TFBENCH_RAW_PREFIX=raw_prefix,
        TFBENCH_RAW_QUEUE=RAW_QUEUE,
    )
    worker = WorkerProcess(
        env,
        queues=RAW_QUEUE,
        concurrency=concurrency,
        pool="threads",
        name=f"raw-{run.run_id}",
        extra_args=["--prefetch-multiplier", "1"],
        app="tests.bench.raw_celery_app",
    )
    try:
        worker.wait_ready()
        started = datetime.now(UTC)
        sent = run_measured(
            [
                sys.executable,
                str(REPO / "tests/bench/batch_support.py"),
                "raw-send",
                str(n),
                run.run_id,
            ],
            env,
            timeout_s=timeout_s,
        )
        check_ok(sent, "raw submitter")
        client = redis.Redis.from_url(run.redis_url)
        keys = [f"{raw_prefix}:celery-task-meta-{run.run_id}-{i}" for i in range(n)]
        deadline = time.monotonic() + timeout_s
        done_at: list[datetime] = []
        lo = 0
        while lo < n:  # the results in order; each chunk read once it is complete
            chunk: list[bytes | None] = list(client.mget(keys[lo : lo + 1000]))  # type: ignore[arg-type]
            if all(v is not None for v in chunk):
                for raw in chunk:
                    meta = json.loads(raw or b"{}")
                    if meta["status"] != "SUCCESS":
                        raise RuntimeError(f"raw task ended {meta['status']}")
                    when = datetime.fromisoformat(meta["date_done"])
                    done_at.append(when if when.tzinfo else when.replace(tzinfo=UTC))
                lo += len(chunk)
                continue
            if time.monotonic() > deadline:
                raise RuntimeError(f"raw: {lo} of {n} results after {timeout_s}s")
            time.sleep(0.25)
        client.close()
        rss = worker_rss(worker)
    finally:
        worker.stop()
        shutil.rmtree(worker.log.parent, ignore_errors=True)
    last = max(done_at)
    total = (last - started).total_seconds()
    return {
        "jobs": n,
        "submitter": submitter_summary(sent),
        "submit_rate_per_s": round(n / sent.wall_s, 1),
        "total_s": round(total, 2),
        "jobs_per_s": round(n / total, 1),
        "drain_after_submit_s": round(max(0.0, total - sent.wall_s), 2),
        "workers_rss_mib": rss,
        "worker": f"raw [{RAW_QUEUE}] threads c={concurrency} prefetch=1",
    }


def worker_rss(worker: WorkerProcess) -> dict[str, float]:
    import psutil

    try:
        return {"raw-worker": round(psutil.Process(worker.proc.pid).memory_info().rss / 2**20, 1)}
    except psutil.Error:
        return {}


def bench_tierflow(run: Run, n: int, timeout_s: float) -> dict[str, Any]:
    config = fake_config(run.state_dir)
    env = run.env(config)
    path = write_batch(run.state_dir / "batch.jsonl", n, fake_line(run.run_id, "batch"))
    name = f"bench-{run.run_id}"
    with up_fleet(run, env) as fleet:
        idle_rss = fleet.rss_mib()
        started = datetime.now(UTC)
        sent = run_measured(batch_run(path, name), env, timeout_s=timeout_s)
        check_ok(sent, "tierflow batch run")
        log(f"  submitted in {sent.wall_s:.1f}s: {sent.output.strip()[-300:]}")
        bid = batch_id(run, name)
        if not wait_batch(run, bid, n, timeout_s):
            raise RuntimeError(f"batch not finished after {timeout_s}s: {batch_counts(run, bid)}")
        rss = fleet.rss_mib()
    counts = batch_counts(run, bid)
    first_stored, last_stored, last_done = batch_times(run, bid)
    total = (last_done - started).total_seconds()
    return {
        "jobs": n,
        "statuses": counts,
        "submitter": submitter_summary(sent),
        "submitter_rss_mib_by_line": rss_by_line(run, bid, sent, n),
        "cli_start_s": round((batch_created(run, bid) - sent.started_at).total_seconds(), 2),
        "submit_rate_per_s": round(n / sent.wall_s, 1),
        "store_rate_per_s": round(n / max(1e-9, (last_stored - first_stored).total_seconds()), 1),
        "total_s": round(total, 2),
        "jobs_per_s": round(n / total, 1),
        "drain_jobs_per_s": round(n / (last_done - first_stored).total_seconds(), 1),
        "drain_after_submit_s": round(max(0.0, total - sent.wall_s), 2),
        "workers_rss_mib": {k: round(v, 1) for k, v in rss.items()},
        "workers_idle_rss_mib": {k: round(v, 1) for k, v in idle_rss.items()},
    }


def mode_throughput(args: argparse.Namespace) -> dict[str, Any]:
    with run_services(args.redis_db, "throughput") as run:
        log(f"raw Celery: {args.jobs} no-op tasks")
        raw = bench_raw(run, args.jobs, args.raw_concurrency, args.timeout)
        log(f"  raw: {raw['jobs_per_s']} jobs/s")
        log(f"tierflow: a {args.jobs}-job batch (fake backend, zero latency)")
        tf = bench_tierflow(run, args.jobs, args.timeout)
        log(f"  tierflow: {tf['jobs_per_s']} jobs/s")
    return {"mode": "throughput", "backend": "FAKE (zero latency)", "raw": raw, "tierflow": tf}


def print_throughput(data: dict[str, Any]) -> None:
    raw, tf = data["raw"], data["tierflow"]
    rs, ts = raw["submitter"], tf["submitter"]

    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}x" if b else "-"

    rows = [
        ("jobs", f"{raw['jobs']}", f"{tf['jobs']}", ""),
        (
            "submitter wall s",
            f"{rs['wall_s']:.1f}",
            f"{ts['wall_s']:.1f}",
            ratio(ts["wall_s"], rs["wall_s"]),
        ),
        (
            "submit rate jobs/s",
            f"{raw['submit_rate_per_s']:.0f}",
            f"{tf['submit_rate_per_s']:.0f}",
            ratio(tf["submit_rate_per_s"], raw["submit_rate_per_s"]),
        ),
        (
            "submit start → last done s",
            f"{raw['total_s']:.1f}",
            f"{tf['total_s']:.1f}",
            ratio(tf["total_s"], raw["total_s"]),
        ),
        (
            "jobs/s (end to end)",
            f"{raw['jobs_per_s']:.0f}",
            f"{tf['jobs_per_s']:.0f}",
            ratio(tf["jobs_per_s"], raw["jobs_per_s"]),
        ),
        (
            "drain after submitter exit s",
            f"{raw['drain_after_submit_s']:.1f}",
            f"{tf['drain_after_submit_s']:.1f}",
            "",
        ),
        (
            "submitter peak RSS MiB",
            f"{rs['peak_rss_mib']:.0f}",
            f"{ts['peak_rss_mib']:.0f}",
            ratio(ts["peak_rss_mib"], rs["peak_rss_mib"]),
        ),
        ("tierflow CLI start-up s (before line 1)", "", f"{tf['cli_start_s']:.1f}", ""),
        (
            "submitter RSS at lines " + "/".join(tf["submitter_rss_mib_by_line"]) + " MiB",
            "",
            "/".join(f"{v or 0:.0f}" for v in tf["submitter_rss_mib_by_line"].values()),
            "",
        ),
        (
            "submitter RSS 25/50/75/100% of wall MiB",
            "/".join(f"{v:.0f}" for v in rs["rss_mib_at"].values()),
            "/".join(f"{v:.0f}" for v in ts["rss_mib_at"].values()),
            "",
        ),
        (
            "workers RSS MiB (after)",
            f"{sum(raw['workers_rss_mib'].values()):.0f}",
            f"{sum(tf['workers_rss_mib'].values()):.0f}",
            "",
        ),
    ]
    print(f"Batch throughput, {data['backend']} backend on every tier, one run:")
    table(("metric", "raw Celery", "tierflow batch", "tierflow / raw"), rows)
    print()
    print(f"raw:      {raw['worker']}; submitter sends no-op tasks (Redis result backend)")
    print(
        "tierflow: `tierflow up --dashboard 0` (router 8 threads, local_fast 2, local_quality "
        "640, api_fallback 16, beat) + `tierflow batch run FILE.jsonl`"
    )
    print(
        f"tierflow statuses: {tf['statuses']}; jobs stored at {tf['store_rate_per_s']:.0f}/s, "
        f"fleet drained {tf['drain_jobs_per_s']:.0f} jobs/s from the first stored job"
    )
    print(
        "tierflow processes RSS MiB after the batch: "
        + ", ".join(f"{k} {v:.0f}" for k, v in tf["workers_rss_mib"].items())
    )


def table(head: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]

    def fmt(row: tuple[str, ...]) -> str:
        return " | ".join(
            c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(row)
        )

    print(fmt(head))
    print("-+-".join("-" * w for w in widths))
    for row in rows:
        print(fmt(row))


# -- interactive under a batch -------------------------------------------------------------------
@dataclass
class RoundTrip:
    loaded: bool  # under the batch
    ms: float  # submit_job → wait() returned
    in_fleet_ms: float  # the job's created_at → finished_at
    queued: int  # fleet messages waiting when it was sent
    batch_open: int  # the batch's unfinished jobs when it was sent (-1: idle phase)
    job_id: str
    to_attempt_ms: float = 0.0  # created_at → its first attempt's started_at (routing, queues)
    attempt_ms: float = 0.0  # that attempt's started_at → finished_at


def mode_interactive(args: argparse.Namespace) -> dict[str, Any]:
    with run_services(args.redis_db, "interactive") as run:
        config = fake_config(run.state_dir)
        env = run.env(config)
        # This process submits the interactive jobs: its settings are the fleet's.
        os.environ.update({k: v for k, v in env.items() if k.startswith("TIERFLOW_")})
        from router import submit_job

        client = redis.Redis.from_url(run.redis_url)
        samples: list[RoundTrip] = []

        def one(i: int, phase: str, bid: str | None = None) -> None:
            queued = run.queued(client)
            batch_open = -1
            if bid is not None:
                open_rows = run.sql(
                    "SELECT count(*) FROM jobs WHERE batch_id = %s AND NOT status = ANY(%s)",
                    (bid, list(TERMINAL)),
                )
                batch_open = int(open_rows[0][0])
            t0 = time.perf_counter()
            result = submit_job(
                f"Extract topic from: 'interactive {run.run_id} {phase} {i}: the login bug'", ACTION
            ).wait(timeout=args.timeout)
            took = (time.perf_counter() - t0) * 1000
            if result.status != "succeeded":
                raise RuntimeError(f"interactive job {i} ended {result.status}: {result.error}")
            if i >= 0:
                samples.append(
                    RoundTrip(
                        phase == "loaded",
                        took,
                        result.latency_ms or 0.0,
                        queued,
                        batch_open,
                        result.job_id,
                    )
                )

        path = write_batch(
            run.state_dir / "batch.jsonl", args.batch_jobs, fake_line(run.run_id, "bg")
        )
        name = f"bench-bg-{run.run_id}"
        with up_fleet(run, env):
            for i in range(args.warmup):
                one(-1 - i, "idle")
            log(f"idle fleet: {args.interactive_jobs} sequential round trips")
            for i in range(args.interactive_jobs):
                one(i, "idle")
            log(f"starting a {args.batch_jobs}-job batch")
            measured: dict[str, Any] = {}
            started = datetime.now(UTC)
            submitter = _Background(
                lambda: measured.update(
                    m=run_measured(
                        [*batch_run(path, name)]
                        + ([] if args.in_flight is None else ["--in-flight", str(args.in_flight)]),
                        env,
                        timeout_s=args.timeout,
                    )
                )
            )
            bid = _wait_for_batch_start(run, name, args.batch_jobs // 20, args.timeout)
            at_start = batch_counts(run, bid)
            log(f"loaded fleet: {args.interactive_jobs} round trips; batch now {at_start}")
            loaded_began = time.perf_counter()
            for i in range(args.interactive_jobs):
                one(i, "loaded", bid)
            loaded_s = time.perf_counter() - loaded_began
            at_end = batch_counts(run, bid)
            queued_end = run.queued(client)
            submitter.join(args.timeout)
            m: Measured | None = measured.get("m")
            if m is None:
                raise RuntimeError("the batch submitter did not finish")
            check_ok(m, "tierflow batch run")
            if not wait_batch(run, bid, args.batch_jobs, args.timeout):
                raise RuntimeError(f"batch not finished: {batch_counts(run, bid)}")
        client.close()
        first_stored, _, last_done = batch_times(run, bid)
        split_in_fleet(run, samples)

    def stats(loaded: bool, key: str) -> dict[str, float]:
        values = [float(getattr(s, key)) for s in samples if s.loaded == loaded]
        return {
            "p50": percentile(values, 0.5),
            "p95": percentile(values, 0.95),
            "mean": sum(values) / len(values),
        }

    idle, loaded = stats(False, "ms"), stats(True, "ms")
    loaded_queued = [s.queued for s in samples if s.loaded]
    loaded_open = [s.batch_open for s in samples if s.loaded]
    return {
        "mode": "interactive",
        "backend": "FAKE (zero latency)",
        "interactive_jobs": args.interactive_jobs,
        "batch_jobs": args.batch_jobs,
        "in_flight": args.in_flight,
        "idle_ms": idle,
        "loaded_ms": loaded,
        "idle_in_fleet_ms": stats(False, "in_fleet_ms"),
        "loaded_in_fleet_ms": stats(True, "in_fleet_ms"),
        "idle_to_attempt_ms": stats(False, "to_attempt_ms"),
        "loaded_to_attempt_ms": stats(True, "to_attempt_ms"),
        "idle_attempt_ms": stats(False, "attempt_ms"),
        "loaded_attempt_ms": stats(True, "attempt_ms"),
        "p50_ratio": round(loaded["p50"] / idle["p50"], 2),
        "p95_ratio": round(loaded["p95"] / idle["p95"], 2),
        "batch_at_loaded_start": at_start,
        "batch_at_loaded_end": at_end,
        "queued_while_loaded": {
            "min": min(loaded_queued),
            "max": max(loaded_queued),
            "at_end": queued_end,
        },
        "batch_open_while_loaded": {"min": min(loaded_open), "max": max(loaded_open)},
        "loaded_phase_s": round(loaded_s, 2),
        "batch_jobs_per_s_while_loaded": round(
            (sum(at_end.get(k, 0) for k in TERMINAL) - sum(at_start.get(k, 0) for k in TERMINAL))
            / loaded_s,
            1,
        ),
        "batch_ran_throughout": min(loaded_open) > 0
        and sum(at_end.get(k, 0) for k in TERMINAL) < args.batch_jobs,
        "batch_jobs_per_s": round(args.batch_jobs / (last_done - started).total_seconds(), 1),
        "batch_drain_jobs_per_s": round(
            args.batch_jobs / (last_done - first_stored).total_seconds(), 1
        ),
        "submitter": submitter_summary(m),
    }


def split_in_fleet(run: Run, samples: list[RoundTrip]) -> None:
    """Fill each round trip's time to its first attempt and that attempt's own time."""
    rows = run.sql(
        "SELECT j.id, extract(epoch FROM a.started_at - j.created_at) * 1000, "
        "extract(epoch FROM a.finished_at - a.started_at) * 1000 "
        "FROM jobs j JOIN attempts a ON a.job_id = j.id AND a.attempt_no = 0 "
        "WHERE j.id = ANY(%s)",
        ([s.job_id for s in samples],),
    )
    found = {str(j): (float(w or 0), float(a or 0)) for j, w, a in rows}
    for s in samples:
        s.to_attempt_ms, s.attempt_ms = found.get(s.job_id, (0.0, 0.0))


class _Background:
    """A function run on a thread, joined later (the batch submitter beside the round trips)."""

    def __init__(self, target: Callable[[], None]) -> None:
        import threading

        self.error: BaseException | None = None

        def runner() -> None:
            try:
                target()
            except BaseException as exc:  # re-raised by join
                self.error = exc

        self.thread = threading.Thread(target=runner, daemon=True)
        self.thread.start()

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)
        if self.error is not None:
            raise self.error


def _wait_for_batch_start(run: Run, name: str, finished: int, timeout_s: float) -> str:
    """The batch's id once at least ``finished`` of its jobs are done (the fleet is busy)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        rows = run.sql("SELECT id FROM batches WHERE name = %s", (name,))
        if rows:
            counts = batch_counts(run, str(rows[0][0]))
            if sum(counts.get(s, 0) for s in TERMINAL) >= finished:
                return str(rows[0][0])
        time.sleep(0.2)
    raise RuntimeError(f"batch {name} did not start within {timeout_s}s")


def print_interactive(data: dict[str, Any]) -> None:
    print(
        f"Interactive round trips (submit_job().wait(), priority 5, sequential, "
        f"n={data['interactive_jobs']} each), {data['backend']} backend:"
    )
    columns = [  # (heading, key, statistic)
        ("p50 ms", "ms", "p50"),
        ("p95 ms", "ms", "p95"),
        ("mean ms", "ms", "mean"),
        ("in-fleet p50", "in_fleet_ms", "p50"),
        ("in-fleet p95", "in_fleet_ms", "p95"),
        ("to attempt p50", "to_attempt_ms", "p50"),
        ("attempt p50", "attempt_ms", "p50"),
    ]
    idle = [data[f"idle_{k}" if k != "ms" else "idle_ms"][q] for _, k, q in columns]
    loaded = [data[f"loaded_{k}" if k != "ms" else "loaded_ms"][q] for _, k, q in columns]
    table(
        ("fleet", *(h for h, _, _ in columns)),
        [
            ("idle", *(f"{v:.1f}" for v in idle)),
            (f"under a {data['batch_jobs']}-job batch", *(f"{v:.1f}" for v in loaded)),
            ("ratio", *(f"{b / a:.2f}x" if a else "-" for a, b in zip(idle, loaded, strict=True))),
        ],
    )
    print(
        "in-fleet: the job's created_at → finished_at; to attempt: created_at → its first "
        "attempt's start (route_job and both queues); attempt: that attempt's own run"
    )
    q = data["queued_while_loaded"]
    print()
    print(
        f"batch during the loaded phase ({data['loaded_phase_s']:.1f}s): statuses "
        f"{data['batch_at_loaded_start']} → {data['batch_at_loaded_end']}; batch messages "
        f"queued before each round trip {q['min']}..{q['max']}, {q['at_end']} at its end; "
        f"unfinished {data['batch_open_while_loaded']['min']}.."
        f"{data['batch_open_while_loaded']['max']}; window "
        f"{'default' if data['in_flight'] is None else data['in_flight'] or 'none'}"
        + (
            ""
            if data["batch_ran_throughout"]
            else "  ** the batch ran out during the phase: not all round trips were under load **"
        )
    )
    s = data["submitter"]
    print(
        f"batch: {data['batch_jobs_per_s_while_loaded']:.0f} jobs/s during the loaded phase, "
        f"{data['batch_jobs_per_s']:.0f} jobs/s end to end, drained "
        f"{data['batch_drain_jobs_per_s']:.0f} jobs/s; submitter {s['wall_s']:.1f}s, peak RSS "
        f"{s['peak_rss_mib']:.0f} MiB"
    )


# -- the real embedded model ---------------------------------------------------------------------
QUESTIONS = [
    "Is Paris the capital of France?",
    "Is the sun a planet?",
    "Is water wet?",
    "Do cats bark?",
    "Is ice frozen water?",
    "Is Python a programming language?",
]


def real_line(i: int) -> dict[str, Any]:
    """A yes/no question; the prompt names no label (the fleet's instructions name them), so an
    answer that repeats the prompt does not name both."""
    question = QUESTIONS[i % len(QUESTIONS)] if i % 2 else f"Is {i // 2} an even number?"
    return {"prompt": question, "action_type": REAL_ACTION}


def mode_real(args: argparse.Namespace) -> dict[str, Any]:
    n = args.real
    with run_services(args.redis_db, "real") as run:
        closed = free_port()  # nothing listens: the vLLM model is unavailable, not someone's
        env = run.env(
            None,
            TIERFLOW_LOCAL_ENGINE_URL=f"http://127.0.0.1:{free_port()}/v1",
            TIERFLOW_VLLM_URL=f"http://127.0.0.1:{closed}/v1",
        )
        path = write_batch(run.state_dir / "real.jsonl", n, real_line)
        name = f"bench-real-{run.run_id}"
        with up_fleet(run, env) as fleet:
            started = datetime.now(UTC)
            sent = run_measured(batch_run(path, name), env, timeout_s=args.real_timeout)
            check_ok(sent, "tierflow batch run")
            bid = batch_id(run, name)
            complete = wait_batch(run, bid, n, max(0.0, args.real_timeout - sent.wall_s), 2.0)
            waited_s = (datetime.now(UTC) - started).total_seconds()
            cancelled = 0
            if not complete:
                cancel = run_measured(
                    [sys.executable, "-m", "tierflow.cli", "batch", "cancel", name], env
                )
                log(f"  timeout: {cancel.output.strip()}")
                cancelled = batch_counts(run, bid).get("cancelled", 0)
                wait_batch(run, bid, n, 120, 2.0)  # in-flight jobs finish
            rss = fleet.rss_mib()
            engine_log = run.state_dir / "logs" / "local-engine.log"
            engine_note = _engine_note(engine_log)
        counts = batch_counts(run, bid)
        rows = run.sql(
            "SELECT a.tier, a.status, count(*), coalesce(sum(a.cost_usd), 0), "
            "coalesce(avg(a.latency_ms), 0), coalesce(sum(a.output_tokens), 0) "
            "FROM attempts a JOIN jobs j ON j.id = a.job_id WHERE j.batch_id = %s "
            "GROUP BY a.tier, a.status",
            (bid,),
        )
        errors = run.sql(
            "SELECT a.tier, a.error_kind, left(coalesce(a.error, ''), 160), count(*) "
            "FROM attempts a JOIN jobs j ON j.id = a.job_id WHERE j.batch_id = %s "
            "AND a.status IN ('error', 'skipped') GROUP BY 1, 2, 3 ORDER BY 4 DESC LIMIT 8",
            (bid,),
        )
        rejected = run.sql(
            "SELECT a.tier, left(coalesce(a.quality_issues::text, ''), 160), count(*), "
            "min(left(coalesce(a.text, ''), 100)) "
            "FROM attempts a JOIN jobs j ON j.id = a.job_id WHERE j.batch_id = %s "
            "AND a.status = 'rejected' GROUP BY 1, 2 ORDER BY 3 DESC LIMIT 6",
            (bid,),
        )
        served = run.sql(
            "SELECT tier, model, count(*) FROM jobs WHERE batch_id = %s AND status = 'succeeded' "
            "GROUP BY tier, model",
            (bid,),
        )
        cost = run.sql(
            "SELECT coalesce(sum(cost_usd), 0), coalesce(sum(api_baseline_cost_usd), 0), "
            "min(created_at), max(finished_at), count(*) FILTER (WHERE fake) "
            "FROM jobs WHERE batch_id = %s",
            (bid,),
        )[0]
    per_tier: dict[str, dict[str, Any]] = {}
    for tier, status, count, tier_cost, latency, tokens in rows:
        t = per_tier.setdefault(
            tier,
            {
                "attempts": 0,
                "by_status": {},
                "cost_usd": 0.0,
                "latency_ms_sum": 0.0,
                "output_tokens": 0,
            },
        )
        t["attempts"] += int(count)
        t["by_status"][status] = int(count)
        t["cost_usd"] += float(tier_cost)
        t["latency_ms_sum"] += float(latency) * int(count)
        t["output_tokens"] += int(tokens)
    for t in per_tier.values():
        judged = t["by_status"].get("passed", 0) + t["by_status"].get("rejected", 0)
        t["pass_rate"] = round(t["by_status"].get("passed", 0) / judged, 3) if judged else None
        t["mean_latency_ms"] = round(t.pop("latency_ms_sum") / t["attempts"], 1)
    finished = sum(counts.get(s, 0) for s in ("succeeded", "failed", "expired"))
    last_done: datetime | None = cost[3]
    span = (last_done - started).total_seconds() if last_done else waited_s
    return {
        "mode": "real",
        "backend": "REAL: embedded llama.cpp, Gemma 3 270M",
        "action": REAL_ACTION,
        "jobs": n,
        "complete": complete,
        "cancelled_at_timeout": cancelled,
        "finished": finished,
        "statuses": counts,
        "served_by": {f"{t}/{m}": int(c) for t, m, c in served},
        "span_s": round(span, 1),
        "jobs_per_s": round(finished / span, 3) if span else None,
        "cost_usd": float(cost[0]),
        "api_baseline_cost_usd": float(cost[1]),
        "fake_jobs": int(cost[4]),
        "per_tier": per_tier,
        "top_errors": [
            {"tier": t, "kind": k, "error": e, "attempts": int(c)} for t, k, e, c in errors
        ],
        "top_rejections": [
            {"tier": t, "issues": i, "attempts": int(c), "answer_example": a}
            for t, i, c, a in rejected
        ],
        "submitter": submitter_summary(sent),
        "fleet_rss_mib": {k: round(v, 1) for k, v in rss.items()},
        "engine": engine_note,
    }


def _engine_note(path: Path) -> str:
    """The engine log's line on extra buffers (what the probe decided), if any."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    hits = [line for line in lines if "extra" in line.lower() and "buffer" in line.lower()]
    return hits[-1][-200:] if hits else ""


def print_real(data: dict[str, Any]) -> None:
    print(f"Batch on the {data['backend']} ({data['action']}, `tierflow up` default config):")
    done = (
        "all finished"
        if data["complete"]
        else (f"NOT all finished in time: {data['cancelled_at_timeout']} cancelled at the timeout")
    )
    table(
        ("metric", "value"),
        [
            ("jobs", str(data["jobs"])),
            ("finished (succeeded+failed+expired)", f"{data['finished']} ({done})"),
            ("statuses", json.dumps(data["statuses"])),
            ("served by", json.dumps(data["served_by"])),
            ("submit start → last done s", f"{data['span_s']:.1f}"),
            ("jobs/s", f"{data['jobs_per_s']:.3f}"),
            (
                "cost USD (API-only baseline)",
                f"{data['cost_usd']:.6f} ({data['api_baseline_cost_usd']:.6f})",
            ),
            (
                "submitter wall s / peak RSS MiB",
                f"{data['submitter']['wall_s']:.1f} / {data['submitter']['peak_rss_mib']:.0f}",
            ),
        ],
    )
    print()
    rows = []
    for tier, t in sorted(data["per_tier"].items()):
        rate = "-" if t["pass_rate"] is None else f"{t['pass_rate']:.1%}"
        rows.append(
            (
                tier,
                str(t["attempts"]),
                rate,
                json.dumps(t["by_status"]),
                f"{t['mean_latency_ms']:.0f}",
                str(t["output_tokens"]),
                f"{t['cost_usd']:.6f}",
            )
        )
    table(
        ("tier", "attempts", "pass rate", "attempts by status", "mean ms", "out tokens", "USD"),
        rows,
    )
    print("pass rate = passed / (passed + rejected): attempts that reached the gate")
    for e in data["top_errors"]:
        print(f"  {e['attempts']:>4} x {e['tier']} {e['kind']}: {e['error']}")
    for r in data["top_rejections"]:
        print(f"  {r['attempts']:>4} x {r['tier']} rejected: {r['issues']}")
        print(f"         e.g. {r['answer_example']!r}")
    if data["engine"]:
        print(f"engine: {data['engine']}")


# -- main ----------------------------------------------------------------------------------------
# -- submission alone ---------------------------------------------------------------------------
def _timed(argv: list[str], env: dict[str, str], what: str, rounds: int = 1) -> Measured:
    """The fastest of ``rounds`` runs of ``argv`` (each must exit 0)."""
    runs = [run_measured(argv, env) for _ in range(rounds)]
    for m in runs:
        check_ok(m, what)
    return min(runs, key=lambda m: m.wall_s)


def mode_submit(args: argparse.Namespace) -> dict[str, Any]:
    """N lines stored and sent by ``tierflow batch run --in-flight 0`` with no worker running,
    beside raw Celery's ``apply_async`` loop (N no-op sends) and a raw multi-row insert of N
    job-sized rows; the submitter's peak RSS at N/10 and N lines; CLI start times beside
    ``python -c pass``. Every figure is one child process of this run, measured alike."""
    n = args.submit
    with run_services(args.redis_db, "submit") as run:
        env = run.env(fake_config(run.state_dir))
        cli = [sys.executable, "-m", "tierflow.cli"]
        _timed([*cli, "db", "upgrade"], env, "tierflow db upgrade")
        raw_env = run.env(
            None,
            TFBENCH_RAW_BROKER_URL=run.redis_url,
            TFBENCH_RAW_PREFIX=f"{run.prefix}:raw",
            TFBENCH_RAW_QUEUE=RAW_QUEUE,
        )
        support = [sys.executable, str(REPO / "tests/bench/batch_support.py")]
        raw_send = _timed([*support, "raw-send", str(n), run.run_id], raw_env, "raw send")
        raw_insert = _timed([*support, "raw-insert", str(n), run.pg_url], env, "raw insert")
        submitted: dict[int, dict[str, Any]] = {}
        for size in sorted({max(1, n // 10), n}):
            path = write_batch(
                run.state_dir / f"submit-{size}.jsonl", size, fake_line(run.run_id, f"s{size}")
            )
            name = f"submit-{size}"
            sent = _timed([*batch_run(path, name), "--in-flight", "0"], env, "tierflow batch run")
            opened, stored = run.sql(
                "SELECT b.created_at, count(j.id) FROM batches b JOIN jobs j ON j.batch_id = b.id "
                "WHERE b.name = %s GROUP BY b.created_at",
                (name,),
            )[0]
            # from the batch's opening (the CLI started, the config checked) to the exit
            past_start = max(1e-9, sent.wall_s - (opened - sent.started_at).total_seconds())
            submitted[size] = {
                "wall_s": round(sent.wall_s, 2),
                "lines_per_s": round(size / sent.wall_s, 1),
                "stored": stored,
                "past_start_lines_per_s": round(size / past_start, 1),
                "queued": run.queued(redis.Redis.from_url(run.redis_url)),
                "peak_rss_mib": round(sent.peak_rss_mib, 1),
            }
        path = write_batch(run.state_dir / "in-process.jsonl", n, fake_line(run.run_id, "inproc"))
        inproc = _timed([*support, "submit-batch", str(path), "in-process"], env, "submit_batch")
        timed = json.loads(inproc.output.split("SUBMIT ", 1)[1].splitlines()[0])
        in_process = {
            "lines": timed["lines"],
            "submit_s": round(timed["submit_s"], 2),
            "lines_per_s": round(timed["lines"] / timed["submit_s"], 1),
            "peak_rss_mib": round(inproc.peak_rss_mib, 1),
        }
        starts = {
            "python -c pass": _timed([sys.executable, "-c", "pass"], env, "python", 3).wall_s,
            "tierflow --help": _timed([*cli, "--help"], env, "tierflow --help", 3).wall_s,
            "tierflow batch status": _timed(
                [*cli, "batch", "status", f"submit-{n}"], env, "tierflow batch status", 3
            ).wall_s,
        }

    def child(m: Measured) -> dict[str, float]:
        return {"wall_s": round(m.wall_s, 2), "lines_per_s": round(n / m.wall_s, 1),
                "peak_rss_mib": round(m.peak_rss_mib, 1)}  # fmt: skip

    return {
        "lines": n,
        "raw_send": child(raw_send),
        "raw_insert": child(raw_insert),
        "tierflow": submitted,
        "submit_batch": in_process,
        "start_s": {k: round(v, 3) for k, v in starts.items()},
    }


def print_submit(data: dict[str, Any]) -> None:
    n = data["lines"]
    print(f"submission alone, {n} lines, no worker (lines/s = lines / the child's wall time)")
    rows = [
        ("raw Celery apply_async loop", f"{n}", f"{data['raw_send']['wall_s']:.2f}",
         f"{data['raw_send']['lines_per_s']:.0f}", "-", f"{data['raw_send']['peak_rss_mib']:.0f}"),
        ("raw multi-row insert (500/stmt)", f"{n}", f"{data['raw_insert']['wall_s']:.2f}",
         f"{data['raw_insert']['lines_per_s']:.0f}", "-",
         f"{data['raw_insert']['peak_rss_mib']:.0f}"),
    ]  # fmt: skip
    for size, got in sorted(data["tierflow"].items()):
        rows.append(
            ("tierflow batch run --in-flight 0", f"{size}", f"{got['wall_s']:.2f}",
             f"{got['lines_per_s']:.0f}", f"{got['past_start_lines_per_s']:.0f}",
             f"{got['peak_rss_mib']:.0f}")
        )  # fmt: skip
    got = data["submit_batch"]
    rows.append(
        ("submit_batch in process (timed alone)", f"{got['lines']}", f"{got['submit_s']:.2f}",
         f"{got['lines_per_s']:.0f}", f"{got['lines_per_s']:.0f}", f"{got['peak_rss_mib']:.0f}")
    )  # fmt: skip
    head = ("submitter", "lines", "wall s", "lines/s", "past start /s", "peak RSS MiB")
    table(head, rows)
    print()
    table(("command", "start s"), [(k, f"{v:.3f}") for k, v in data["start_s"].items()])


def main() -> int:
    parser = argparse.ArgumentParser(description="tierflow batch benchmarks")
    parser.add_argument("--jobs", type=int, default=None, help="throughput: batch size (10000)")
    parser.add_argument("--interactive", action="store_true", help="interactive under a batch")
    parser.add_argument("--interactive-jobs", type=int, default=100)
    parser.add_argument("--batch-jobs", type=int, default=5000, help="--interactive's batch")
    parser.add_argument("--warmup", type=int, default=10, help="--interactive's warm-up")
    parser.add_argument(
        "--in-flight",
        type=int,
        default=None,
        help="--interactive: the batch's window (0: none; default: the fleet's, which yields)",
    )
    parser.add_argument("--real", type=int, default=0, metavar="N", help="N jobs, real model")
    parser.add_argument("--submit", type=int, default=0, metavar="N", help="N lines, no worker")
    parser.add_argument("--real-timeout", type=float, default=720.0)
    parser.add_argument("--raw-concurrency", type=int, default=8)
    parser.add_argument("--redis-db", type=int, default=13, help="not the tests' database 0")
    parser.add_argument("--timeout", type=float, default=1800.0, help="per phase, seconds")
    parser.add_argument("--json", action="store_true", help="one JSON object, no tables")
    parser.add_argument("--json-out", type=Path, help="also write the JSON object to this file")
    args = parser.parse_args()
    if args.jobs is None and not args.interactive and not args.real and not args.submit:
        args.jobs = 10_000
    missing = services_up()
    if missing:
        log("missing services: " + ", ".join(missing))
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    log(f"PostgreSQL {PG_HOST}:{PG_PORT}, Redis database {args.redis_db}")

    out: dict[str, Any] = {}
    printers: list[Callable[[], None]] = []
    try:
        if args.jobs:
            out["throughput"] = mode_throughput(args)
            printers.append(lambda: print_throughput(out["throughput"]))
        if args.interactive:
            out["interactive"] = mode_interactive(args)
            printers.append(lambda: print_interactive(out["interactive"]))
        if args.submit:
            out["submit"] = mode_submit(args)
            printers.append(lambda: print_submit(out["submit"]))
        if args.real:
            out["real"] = mode_real(args)
            printers.append(lambda: print_real(out["real"]))
    except (KeyboardInterrupt, SystemExit):
        log("interrupted; cleaned up")
        return 1
    except Exception:
        traceback.print_exc()
        return 1
    load = os.getloadavg()
    out["machine"] = {"cpus": os.cpu_count(), "loadavg": load, "python": platform.python_version()}
    if args.json_out:
        args.json_out.write_text(json.dumps(out, indent=2, default=str))
    if args.json:
        print(json.dumps(out, indent=2, default=str))
        return 0
    for show in printers:
        print()
        show()
    print()
    print(
        f"machine: {os.cpu_count()} CPUs, load average {load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f}, "
        f"Python {platform.python_version()}. Shared, noisy machine, one run: compare the "
        "ratios of one run, and rerun before concluding."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
