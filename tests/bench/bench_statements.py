"""PostgreSQL's own cost of a job's statements, per schema, beside the design floor's transactions.

    python tests/bench/bench_statements.py [--jobs 1500] [--warmup 100] [--rounds 3]
        [--variant 'NAME=SQL; SQL ...'] ...

Needs PostgreSQL on 127.0.0.1:5432 (trust, user ``postgres``) and Redis on 127.0.0.1:6379. The
fleet benchmark (``bench_fleet.py``) measures PostgreSQL's CPU on a machine shared with the
workers, the client and Redis, where a run's figure moves by a fifth from one minute to the next.
This one isolates it:

1. ``--jobs`` jobs run in this process as the fleet runs them (``submit_job``, ``route_job``,
   ``run_attempt``, the fake backend at zero latency) on a database at the migrations' head,
   and every statement of the job's own path (:func:`tierflow.store.rows.run_one`) is recorded
   with its bound parameters, in order;
2. the recorded statements are replayed, job by job, on one fresh database per schema (``head``
   and each ``--variant``: statements run on a head database first, an index dropped, say),
   each on one connection of its own, the schemas taking turns job by job so that a slow
   minute of the machine slows all of them alike; beside them the design floor's three
   transactions of a job (``floor_app.py``: an autocommit insert; an update and a commit; an
   insert, an update and a commit);
3. each backend's user + system CPU is read from ``/proc`` before and after (``psutil``), and
   this process's thread CPU around each schema's statements.

Prints, per schema and round, the backend's and the client's CPU per job in µs, and the median
of the rounds with its ratio to the floor's. Everything it creates is dropped at the end.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# Only modules that read no tierflow settings may be imported before the environment is set.
import psutil  # noqa: E402
import psycopg  # noqa: E402

from tests.support.services import (  # noqa: E402
    REDIS_URL,
    create_database,
    delete_prefix,
    drop_database,
    fake_model,
    fleet_config,
    services_up,
    write_config,
)

ACTION = "extract_topic"  # simple → local_fast, passes the gate on the fake's echo answer
Recorded = tuple[str, Mapping[str, Any]]  # (the driver's SQL, its bound parameters)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def record_jobs(n: int, run_id: str) -> list[list[Recorded]]:
    """Run ``n`` jobs in this process; each job's ``run_one`` statements, in order (only jobs
    that took the fleet's ordinary path: four statements)."""
    from router import submit_job
    from router.dispatch import route_facts
    from tierflow.store import rows
    from workers.tasks import route_job, run_attempt

    recorded: list[Recorded] = []
    original = rows.run_one

    def recording(stmt: rows.Statement, params: Mapping[str, Any]) -> tuple[Any, ...] | None:
        recorded.append((stmt.sql, stmt.bind(params)))
        return original(stmt, params)

    rows.run_one = recording
    jobs: list[list[Recorded]] = []
    try:
        for i in range(-1, n):  # job -1 lets the router read the mode once (its 5th statement)
            prompt = f"Extract topic from: 'statements {run_id} job {i}: fixed the auth bug'"
            del recorded[:]
            handle = submit_job(prompt, ACTION)
            route_job(handle.job_id, facts=route_facts(ACTION, prompt, {}, 5))
            run_attempt(handle.job_id, 0, 0, 0)
            if i >= 0 and len(recorded) == 4:
                jobs.append(list(recorded))
    finally:
        rows.run_one = original
    return jobs


def backend_cpu_s(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


class Schema:
    """One database, one connection, and the CPU its backend and this thread spent on it."""

    def __init__(self, name: str, setup: Sequence[str]) -> None:
        from tierflow.core.db import upgrade_database

        self.name = name
        self.db = f"tierflow_stmts_{uuid.uuid4().hex[:8]}"
        url = create_database(self.db)
        upgrade_database(url)
        self.conn = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"),
                                    autocommit=True)  # fmt: skip
        for sql in setup:
            self.conn.execute(sql)
        pid = self.conn.execute("SELECT pg_backend_pid()").fetchone()
        assert pid is not None
        self.backends = [psutil.Process(pid[0])]

    def replay(self, job: list[Recorded]) -> None:
        for sql, params in job:
            cursor = self.conn.execute(sql, params)
            if cursor.pgresult is not None and cursor.pgresult.status == 2:  # TUPLES_OK
                cursor.fetchone()

    def close(self) -> None:
        self.conn.close()
        drop_database(self.db)


class Floor:
    """The design floor's transactions of a job, on a database of its own (``floor_app``'s)."""

    name = "floor"

    def __init__(self) -> None:
        from tests.bench.floor_app import create_schema

        self.db = f"tierflow_stmts_floor_{uuid.uuid4().hex[:8]}"
        url = create_database(self.db).replace("postgresql+psycopg://", "postgresql://")
        create_schema(url)
        self.client = psycopg.connect(url, autocommit=True)
        self.worker = psycopg.connect(url)
        pids = [c.execute("SELECT pg_backend_pid()").fetchone() for c in (self.client, self.worker)]
        self.worker.commit()
        self.backends = [psutil.Process(p[0]) for p in pids if p is not None]
        self.n = 0

    def replay(self, _job: list[Recorded]) -> None:
        self.n += 1
        job_id = f"j{self.n}"
        self.client.execute("INSERT INTO floor_jobs (id, status) VALUES (%s, 'queued')", (job_id,))
        self.worker.execute(
            "UPDATE floor_jobs SET status = 'routed', tier = 'local_fast' WHERE id = %s", (job_id,)
        )
        self.worker.commit()
        self.worker.execute(
            "INSERT INTO floor_attempts (job_id, attempt_no, answer) VALUES (%s, 1, 'ok')",
            (job_id,),
        )
        self.worker.execute(
            "UPDATE floor_jobs SET status = 'succeeded', result = 'ok', finished_at = now()"
            " WHERE id = %s",
            (job_id,),
        )
        self.worker.commit()

    def close(self) -> None:
        self.client.close()
        self.worker.close()
        drop_database(self.db)


def measure(
    targets: list[Schema | Floor], jobs: list[list[Recorded]], warmup: int
) -> dict[str, tuple[float, float]]:
    """Replay ``jobs`` on every target, taking turns job by job; per target the backend's and
    this thread's CPU per job (µs) over the jobs after ``warmup``."""
    for job in jobs[:warmup]:
        for target in targets:
            target.replay(job)

    before = {t.name: sum(map(backend_cpu_s, t.backends)) for t in targets}
    client = dict.fromkeys(before, 0.0)
    timed = jobs[warmup:]
    for job in timed:
        for target in targets:
            started = time.thread_time()
            target.replay(job)
            client[target.name] += time.thread_time() - started
    n = len(timed)
    return {
        t.name: ((sum(map(backend_cpu_s, t.backends)) - before[t.name]) / n * 1e6,
                 client[t.name] / n * 1e6)
        for t in targets
    }  # fmt: skip


def parse_variant(text: str) -> tuple[str, list[str]]:
    name, sep, sql = text.partition("=")
    if not sep or not name.strip() or not sql.strip():
        raise argparse.ArgumentTypeError(f"--variant wants NAME=SQL[; SQL...], not {text!r}")
    return name.strip(), [s for s in (part.strip() for part in sql.split(";")) if s]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--jobs", type=int, default=1500, help="jobs recorded and replayed")
    parser.add_argument("--warmup", type=int, default=100, help="replayed before measuring")
    parser.add_argument("--rounds", type=int, default=3, help="fresh databases, targets rotated")
    parser.add_argument("--variant", type=parse_variant, action="append", default=[],
                        help="NAME=SQL; SQL: head changed by these statements")  # fmt: skip
    args = parser.parse_args()
    if args.jobs <= args.warmup or args.warmup < 0 or args.rounds < 1:
        parser.error("--jobs must exceed --warmup (at least 0), --rounds be at least 1")
    missing = services_up()
    if missing:
        log("missing services: " + ", ".join(missing))
        return 2

    run_id = uuid.uuid4().hex[:10]
    prefix = f"tfbench-stmts-{run_id}"
    config_dir = Path(tempfile.mkdtemp(prefix="tierflow-bench-cfg-"))
    source_db = f"tierflow_stmts_src_{run_id}"
    url = create_database(source_db)
    config = fleet_config(
        local_fast=[fake_model("fake-fast", latency_ms=0)],
        local_quality=[fake_model("fake-quality", latency_ms=0)],
        api_fallback=[fake_model("fake-api", latency_ms=0)],
    )
    os.environ.pop("TIERFLOW_REDIS_URL", None)
    os.environ.update({
        "TIERFLOW_BROKER_URL": REDIS_URL, "TIERFLOW_DATABASE_URL": url,
        "TIERFLOW_KEY_PREFIX": prefix, "TIERFLOW_CONFIG": str(write_config(config, config_dir)),
    })  # fmt: skip
    schemas: list[tuple[str, list[str]]] = [("head", []), *args.variant]
    by_round: dict[str, list[tuple[float, float]]] = {}
    try:
        from tierflow.core.db import upgrade_database

        upgrade_database(url)
        log(f"recording {args.jobs} jobs on {source_db}")
        jobs = record_jobs(args.jobs, run_id)
        log(f"recorded {len(jobs)} jobs of four statements each")
        for r in range(args.rounds):
            targets: list[Schema | Floor] = [*(Schema(*s) for s in schemas), Floor()]
            targets = targets[r % len(targets) :] + targets[: r % len(targets)]
            try:
                got = measure(targets, jobs, args.warmup)
            finally:
                for target in targets:
                    target.close()
            for name, figures in got.items():
                by_round.setdefault(name, []).append(figures)
            log(f"round {r + 1}/{args.rounds}: " + ", ".join(
                f"{name} {b:.0f}/{c:.0f}" for name, (b, c) in got.items()))  # fmt: skip
    finally:
        drop_database(source_db)
        delete_prefix(prefix)

    floor_backend = statistics.median(b for b, _ in by_round["floor"])
    print(f"\nPostgreSQL CPU per job, {len(jobs) - args.warmup} jobs replayed, {args.rounds} "
          "round(s); backend: the server process, client: this thread (psycopg)")  # fmt: skip
    header = ("schema", "backend µs", "client µs", "backend / floor", "rounds (backend)")
    print(f"{header[0]:<12} | {header[1]:>10} | {header[2]:>9} | {header[3]:>15} | {header[4]}")
    print("-" * 13 + "+" + "-" * 12 + "+" + "-" * 11 + "+" + "-" * 17 + "+" + "-" * 18)
    for name in [s[0] for s in schemas] + ["floor"]:
        measured = by_round[name]
        backend = statistics.median(b for b, _ in measured)
        client = statistics.median(c for _, c in measured)
        each = " ".join(f"{b:.0f}" for b, _ in measured)
        versus = backend / floor_backend
        print(f"{name:<12} | {backend:>10.0f} | {client:>9.0f} | {versus:>14.2f}x | {each}")
    print(
        "floor: its three transactions of a job (8 round trips); the others: tierflow's four "
        "statements as recorded"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
