"""What the dashboard's fairness and overhead panel costs a redraw, beside the rest of the overview.

    python tests/bench/bench_dashboard_panel.py [--jobs 20000] [--old 20000] [--rounds 20]

Needs PostgreSQL on 127.0.0.1:5432 (trust, user ``postgres``) and Redis on 127.0.0.1:6379. On a
fresh database at the migrations' head it writes ``--jobs`` finished jobs submitted within the
last hour (two attempts each, four daemons) and ``--old`` older ones (outside the window), then
times, ``--rounds`` times each, interleaved: the panel's two window statements
(:func:`tierflow.store.overhead.recent_times`, :func:`~tierflow.store.overhead.daemon_attempts`),
the whole panel uncached (:func:`tierflow.app.fairness.fairness`), and the whole overview
(:func:`tierflow.app.overview.build_overview`) with the panel's cache emptied before each call,
and the same with the cache warm. Prints the median and the max, in ms. The database is dropped
at the end.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.support import services

_FILL = """
INSERT INTO jobs (id, status, action_type, prompt, context, metadata, priority, stream,
                  allow_degraded, degraded, fake, cost_usd, api_baseline_cost_usd, tier,
                  created_at, updated_at, finished_at)
SELECT md5(:tag || g)::uuid::text, 'succeeded', 'extract_topic', 'p', '{}'::jsonb,
       jsonb_build_object('daemon', 'd' || (g % 4)), 5, false, false, false, true, 0, 0,
       CASE WHEN g % 3 = 0 THEN 'local_quality' ELSE 'local_fast' END,
       now() - make_interval(secs => :start + (g % 3000)), now(),
       now() - make_interval(secs => :start + (g % 3000)) + make_interval(secs => 1 + g % 5)
FROM generate_series(1, :n) g;
INSERT INTO attempts (job_id, attempt_no, step, tier, model, status, delivery_retry,
                      input_tokens, output_tokens, latency_ms, cost_usd, fake, started_at,
                      finished_at)
SELECT j.id, k, k - 1, CASE WHEN k = 1 THEN 'local_fast' ELSE j.tier END, 'm', 'succeeded', 0,
       10, 10, 200 + k * 50, 0, true,
       j.created_at + make_interval(secs => 0.1 * k), j.created_at + make_interval(secs => 0.5 * k)
FROM jobs j, generate_series(1, 2) k WHERE j.id IN (
  SELECT md5(:tag || g)::uuid::text FROM generate_series(1, :n) g);
"""


_SHARE_ARGS = {"batch_priority": 1, "batch_line": "~batch", "default_daemon": "-"}


def _time(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--old", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--explain", action="store_true", help="print the statements' plans")
    args = parser.parse_args()
    name = f"tierflow_bench_panel_{uuid.uuid4().hex[:8]}"
    url = services.create_database(name)
    os.environ["TIERFLOW_DATABASE_URL"] = url.replace("+psycopg", "")
    os.environ["TIERFLOW_BROKER_URL"] = services.REDIS_URL
    os.environ["TIERFLOW_KEY_PREFIX"] = f"bench-panel-{uuid.uuid4().hex[:6]}"
    try:
        _run(url, args)
    finally:
        from tierflow.core.db import reset_engines

        reset_engines()
        services.drop_database(name)


def _run(url: str, args: argparse.Namespace) -> None:
    from sqlalchemy import text

    from router.fairshare import BATCH_LINE, DEFAULT_DAEMON
    from tierflow.app import fairness as panel
    from tierflow.app.overview import build_overview
    from tierflow.app.queues import queue_depths
    from tierflow.core.constants import BATCH_PRIORITY
    from tierflow.core.db import session_scope, upgrade_database
    from tierflow.core.settings import get_settings
    from tierflow.store.activity import running_attempts
    from tierflow.store.overhead import daemon_attempts, recent_times

    upgrade_database(url)
    with session_scope() as session:
        for statement in _FILL.split(";\n"):
            if not statement.strip():
                continue
            session.execute(text(statement), {"tag": "new", "n": args.jobs, "start": 10})
            session.execute(text(statement), {"tag": "old", "n": args.old, "start": 4000})
        session.execute(text("ANALYZE"))
    if args.explain:
        from tierflow.store import overhead

        with session_scope() as session:
            session.execute(overhead._REPORT_SETTINGS)
            for sql, extra in ((overhead._TIMES_SQL, {}), (overhead._SHARES_SQL, _SHARE_ARGS)):
                plan = session.execute(
                    text("EXPLAIN (ANALYZE, BUFFERS) " + sql.text),
                    {"window_s": panel.WINDOW_S, **extra},
                )
                print("\n".join(row[0] for row in plan), end="\n\n")
    config = get_settings().llm
    queues, running = queue_depths(), running_attempts()

    def uncached_overview() -> None:
        panel.forget_cache()
        build_overview()

    def uncached_panel() -> None:
        panel.forget_cache()
        panel.fairness(config, queues, running)

    cases: dict[str, Callable[[], object]] = {
        "recent_times": lambda: recent_times(panel.WINDOW_S),
        "daemon_attempts": lambda: daemon_attempts(
            panel.WINDOW_S,
            batch_priority=BATCH_PRIORITY,
            batch_line=BATCH_LINE,
            default_daemon=DEFAULT_DAEMON,
        ),
        "panel, uncached": uncached_panel,
        "overview, panel uncached": uncached_overview,
        "overview, panel cached": build_overview,
    }
    build_overview()  # warm: connections, probes, the gate's fit
    found: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(args.rounds):
        for label, fn in cases.items():
            found[label].append(_time(fn))
    print(f"{args.jobs} jobs in the window, {args.old} before it, 2 attempts each")
    for label, ms in found.items():
        print(f"{label:28s} median {statistics.median(ms):8.1f} ms   max {max(ms):8.1f} ms")


if __name__ == "__main__":
    main()
