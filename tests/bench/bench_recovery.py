"""How long a worker's death costs, beside the same run with no death, in one run.

    python tests/bench/bench_recovery.py [--jobs 20] [--call-ms 2000] [--lag-s 20]

Needs PostgreSQL on 127.0.0.1:5432 (trust, user ``postgres``) and Redis on 127.0.0.1:6379; makes
its own database and key prefix and removes both (and its workers) at the end. Not collected
by pytest (``tests/bench`` is ignored).

Runs, each on fresh real ``celery worker`` processes, ``--jobs`` jobs of ``--call-ms`` calls on
``local_fast`` (the fake backend), default delivery settings (lease 15 s, visibility 900 s):

baseline     the supervised pair ``tierflow up`` runs (router, local_fast), no kill;
supervised   the same, local_fast killed with ``kill -9`` once it holds calls: the supervisor
             (``tierflow.app.supervisor.Supervisor`` with ``tierflow up``'s handler,
             ``fleet.release_dead_worker_leases``) releases its leases, re-sends its jobs and
             restarts it;
unsupervised two plain local_fast workers (another host's ``tierflow worker``), one killed; the
             sweeper (``workers.sweeper.sweep``, every ``SWEEP_INTERVAL_S`` as beat sends it)
             re-sends its jobs once their lease lapsed.

Each prints the time from the kill to the end of the last job the victim held, the whole run's
time, and jobs lost (not ended 120 s after the kill) and charged twice (a job whose cost is not
its calls' sum, or with two passed attempts). Then the lease keeper's renewal lag under load:
``--lag-s`` seconds of renewals of 50 leases (3 s, due every 1 s) against the bench database,
while 4 processes spin on the CPU and one writes to PostgreSQL in a loop: how late each renewal
came after it was due (p50, p99, max), against the two thirds of a lease it may be late by.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from datetime import timedelta
from multiprocessing import Process
from pathlib import Path

RUN = uuid.uuid4().hex[:8]
DB_NAME = f"tierflow_bench_recovery_{RUN}"
PREFIX = f"tfbench-rec-{RUN}"
os.environ["TIERFLOW_BROKER_URL"] = "redis://127.0.0.1:6379/0"
os.environ["TIERFLOW_DATABASE_URL"] = f"postgresql://postgres@127.0.0.1:5432/{DB_NAME}"
os.environ["TIERFLOW_KEY_PREFIX"] = PREFIX
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.faults.helpers import audit, rows, wait_finished  # noqa: E402
from tests.support import services  # noqa: E402
from tierflow.core.settings import reset_settings  # noqa: E402

PASSED = ("succeeded", "failed", "expired")


def held_by(url: str, node: str) -> list[str]:
    found = rows(
        url,
        "SELECT job_id FROM attempts WHERE status = 'running' AND worker LIKE :w",
        w=f"{node}@%",
    )
    return [r["job_id"] for r in found]


def submit(n: int, tag: str) -> list[str]:
    from router import submit_job

    return [
        submit_job(f"Extract topic from: '{tag} {i}'", "extract_topic").job_id for i in range(n)
    ]


def kill_when_holding(url: str, node: str, pid_of, at_least: int) -> tuple[list[str], float]:
    deadline = time.monotonic() + 60
    while len(held_by(url, node)) < at_least and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(pid_of(), signal.SIGKILL)
    killed = time.monotonic()
    time.sleep(0.3)  # the process is gone; what it held is still marked running
    return held_by(url, node), killed


def figures(
    url: str, name: str, jobs: list[str], held: list[str], start: float, killed: float | None
) -> dict:
    finished = wait_finished(url, held or jobs, 120)
    recovered = time.monotonic() - (killed or start)
    wait_finished(url, jobs, 120)
    total = time.monotonic() - start
    fig = audit(url, name, jobs, timeout=5)
    return {
        "run": name,
        "held": len(held),
        "recovery_s": round(recovered, 1) if killed else None,
        "total_s": round(total, 1),
        "lost": fig.lost + sum(1 for s in finished.values() if s not in PASSED),
        "charged_twice": fig.duplicates + fig.cost_mismatches,
        "succeeded": fig.succeeded,
    }


def supervised(url: str, jobs_n: int, kill: bool, log_dir: Path) -> dict:
    from tierflow.app.fleet import release_dead_worker_leases
    from tierflow.app.supervisor import Supervisor
    from workers.pools import worker_argv

    sup = Supervisor(log_dir / f"sup-{kill}", on_event=release_dead_worker_leases)
    sup.start()
    try:
        for name in ("router", "local_fast"):
            argv = [sys.executable, "-m", "celery", *worker_argv(name, beat=False)]
            sup.add(f"worker-{name}", argv, ready_marker=" ready.")
        sup.wait_ready(["worker-router", "worker-local_fast"], 90)
        start = time.monotonic()
        jobs = submit(jobs_n, f"sup-{kill}-{RUN}")
        held, killed = [], None
        if kill:
            node = "local_fast"  # its deliveries: local_fast@HOST/PID.run:task
            held, killed = kill_when_holding(
                url, node, lambda: sup.child("worker-local_fast").pid, 2
            )
        return figures(url, "supervised kill" if kill else "baseline", jobs, held, start, killed)
    finally:
        sup.stop(20)


def unsupervised(url: str, jobs_n: int) -> dict:
    from schemas.jobs import utcnow
    from tierflow.core.constants import SWEEP_INTERVAL_S
    from workers.sweeper import sweep

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    router = services.WorkerProcess(env, queues="router", concurrency=4, name=f"r{RUN}")
    a = services.WorkerProcess(env, queues="tier.local_fast", concurrency=2, name=f"a{RUN}")
    b = services.WorkerProcess(env, queues="tier.local_fast", concurrency=2, name=f"b{RUN}")
    stop = threading.Event()

    def beat() -> None:  # what beat's sweep does, every interval
        while not stop.wait(SWEEP_INTERVAL_S):
            sweep(utcnow(), timedelta(seconds=120))

    try:
        for w in (router, a, b):
            w.wait_ready()
        threading.Thread(target=beat, daemon=True).start()
        start = time.monotonic()
        jobs = submit(jobs_n, f"unsup-{RUN}")
        held, killed = kill_when_holding(url, a.name, lambda: a.proc.pid, 2)
        return figures(url, "unsupervised kill", jobs, held, start, killed)
    finally:
        stop.set()
        for w in (router, a, b):
            w.stop()


def _spin() -> None:
    while True:
        pass


def _write_loop(url: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.connect() as conn:
        conn.execute(text("CREATE TEMP TABLE churn (x int)"))
        while True:
            conn.execute(text("INSERT INTO churn SELECT generate_series(1, 2000)"))
            conn.execute(text("DELETE FROM churn"))
            conn.commit()


def renewal_lag(url: str, seconds: float) -> dict:
    """Renewals of 50 held leases under CPU and PostgreSQL load: lateness after they were due."""
    from tierflow import store
    from workers.leases import LeaseKeeper

    lease_s = 3.0
    due: dict = {}
    lags: list[float] = []

    def renew(keys, length):
        began = time.monotonic()
        renewed = store.renew_leases(keys, length)
        landed = time.monotonic()  # a renewal counts once its statement is back
        lags.extend(max(0.0, landed - due[k]) for k in keys if k in due)
        for k in keys:
            due[k] = began + length / 3  # as the keeper times its next one
        return set(keys) | renewed  # nothing real is held: count every renewal as kept

    keeper = LeaseKeeper(renew)
    load = [Process(target=_spin, daemon=True) for _ in range(4)]
    load.append(
        Process(target=_write_loop, args=(os.environ["TIERFLOW_DATABASE_URL"],), daemon=True)
    )
    for p in load:
        p.start()
    try:
        for i in range(50):
            key = keeper.keep(f"00000000-0000-0000-0000-{i:012d}", 0, "bench:lag", lease_s)
            due[key.key] = key.due_at
        time.sleep(seconds)
    finally:
        for p in load:
            p.terminate()
        for held in keeper.held():
            keeper.drop(held.key)
    lags.sort()
    return {
        "renewals": len(lags),
        "lag_p50_ms": round(statistics.median(lags) * 1000, 1),
        "lag_p99_ms": round(lags[int(len(lags) * 0.99) - 1] * 1000, 1),
        "lag_max_ms": round(lags[-1] * 1000, 1),
        "allowed_ms": round(lease_s * 2 / 3 * 1000),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--call-ms", type=int, default=2000)
    parser.add_argument("--lag-s", type=float, default=20.0)
    args = parser.parse_args()
    missing = services.services_up()
    if missing:
        sys.exit("missing services: " + ", ".join(missing))
    config = services.fleet_config(
        local_fast=[services.fake_model("fake-fast", latency_ms=args.call_ms,
                                        input_cost_per_million=1.0, output_cost_per_million=2.0)]
    )  # fmt: skip
    os.environ["TIERFLOW_CONFIG"] = str(services.write_config(config))
    url = services.create_database(DB_NAME)
    log_dir = Path(tempfile.mkdtemp(prefix="bench-recovery-"))
    try:
        from tierflow.core.db import upgrade_database

        reset_settings()
        upgrade_database(url)
        results = [
            supervised(url, args.jobs, False, log_dir),
            supervised(url, args.jobs, True, log_dir),
            unsupervised(url, args.jobs),
        ]
        lag = renewal_lag(url, args.lag_s)
    finally:
        from tierflow.core.db import reset_engines

        reset_engines()
        services.drop_database(DB_NAME)
        services.delete_prefix(PREFIX)
    print(f"\n{args.jobs} jobs of {args.call_ms} ms calls, lease 15 s, visibility 900 s")
    print(f"{'run':<18}{'held':>6}{'kill->last held end s':>23}{'all jobs s':>12}"
          f"{'lost':>6}{'charged twice':>15}")  # fmt: skip
    for r in results:
        rec = "-" if r["recovery_s"] is None else f"{r['recovery_s']:.1f}"
        print(f"{r['run']:<18}{r['held']:>6}{rec:>23}{r['total_s']:>12.1f}{r['lost']:>6}"
              f"{r['charged_twice']:>15}")  # fmt: skip
    print(f"\nlease renewal lag under load (4 spinners + a PostgreSQL writer, 2 cores): {lag}")


if __name__ == "__main__":
    main()
