"""Saturation of one vLLM server by one ``local_quality`` worker, beside a direct asyncio client.

    .venv/bin/python tests/bench/bench_gpu.py [--slots 1024] [--concurrency 640] [--window 40]
                                              [--output-tokens 200] [--tokens-per-s 20]
                                              [--url http://127.0.0.1:8000/v1 --model NAME]

Against the SIMULATED vLLM server (tests/support/sim_vllm.py, started here with ``--slots``
sequences) unless ``--url`` names a real OpenAI-compatible server (``infra/gpu/bench-real-vllm.sh``
does that on a GPU node; then the in-flight column comes from the real ``vllm:*`` gauges).

1. direct: the official ``openai.AsyncOpenAI`` client with ``--concurrency`` tasks, each calling
   in a loop, for a warm-up then ``--window`` seconds;
2. fleet: the jobs are submitted and routed first (a router worker), then ONE ``local_quality``
   worker (threads pool, ``--concurrency`` threads, prefetch from ``workers/pools.py``) is
   started and measured over the same window once it is warm.

For each: completed requests/s and mean requests running over the window (both from the
server's /metrics counters: ``sim_vllm_requests_completed_total`` and the integral
``sim_vllm_running_seconds_total``; with a real vLLM server, from sampling
``vllm:num_requests_running`` and the worker's own job rows), peak running, and for the fleet the
worker's RSS (psutil, the worker and its children). Needs PostgreSQL and Redis as the tests do;
makes its own database and key prefix and removes them. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# Only modules that read no tierflow settings may be imported before the environment is set.
import psutil  # noqa: E402

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
from tests.support.sim_vllm import SimVLLMProcess, parse_metrics  # noqa: E402

PROMPT = "Summarize item {i} of the saturation benchmark in one sentence."


@dataclass
class Phase:
    name: str
    completed: int
    seconds: float
    mean_running: float
    peak_running: float
    rss_mb: float | None = None
    cpu_ms_per_job: float | None = None

    @property
    def per_s(self) -> float:
        return self.completed / self.seconds


class Server:
    """Reads counters from the simulated server, or samples a real vLLM's gauges."""

    def __init__(self, origin: str, simulated: bool) -> None:
        self.origin, self.simulated = origin, simulated
        self._samples: list[float] = []
        self._peak = 0.0
        self._stop = threading.Event()

    def metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(self.origin + "/metrics", timeout=5) as resp:
            return parse_metrics(resp.read().decode())

    def running(self) -> float:
        return self.metrics().get("vllm:num_requests_running", 0.0)

    def window(
        self, seconds: float, completed_now: Callable[[], int]
    ) -> tuple[int, float, float, float]:
        """(completed, elapsed, mean running, peak running) over ``seconds`` from now."""
        samples: list[float] = []
        m0, c0, t0 = self.metrics(), completed_now(), time.monotonic()
        while time.monotonic() - t0 < seconds:
            samples.append(self.running())
            time.sleep(0.25)
        m1, c1, t1 = self.metrics(), completed_now(), time.monotonic()
        elapsed = t1 - t0
        if self.simulated:
            mean = (m1["sim_vllm_running_seconds_total"] - m0["sim_vllm_running_seconds_total"]) / (
                elapsed
            )
        else:
            mean = statistics.fmean(samples) if samples else 0.0
        return c1 - c0, elapsed, mean, max(samples, default=0.0)


def bench_direct(args: argparse.Namespace, server: Server, url: str, model: str) -> Phase:
    import httpx2
    import openai

    done = 0

    async def run() -> tuple[int, float, float, float]:
        nonlocal done
        client = openai.AsyncOpenAI(
            base_url=url, api_key="not-needed", max_retries=0, timeout=300,
            http_client=openai.DefaultAsyncHttpxClient(
                limits=httpx2.Limits(max_connections=4096, max_keepalive_connections=4096)
            ),
        )  # fmt: skip
        stop = asyncio.Event()

        # Staggered starts (over one request's latency at batch 1) so the calls do not run in
        # lockstep waves, which a window would catch one wave of; the fleet's are staggered by
        # their own submission.
        spread = args.output_tokens / args.tokens_per_s

        async def loop(k: int) -> None:
            nonlocal done
            await asyncio.sleep(spread * k / args.concurrency)
            i = 0
            while not stop.is_set():
                await client.chat.completions.create(
                    model=model, max_tokens=args.max_tokens,
                    messages=[{"role": "user", "content": PROMPT.format(i=f"{k}-{i}")}],
                )  # fmt: skip
                done += 1
                i += 1

        tasks = [asyncio.create_task(loop(k)) for k in range(args.concurrency)]
        await asyncio.sleep(args.warmup + spread)
        measured = await asyncio.to_thread(server.window, args.window, lambda: done)
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await client.close()
        return measured

    completed, secs, mean, peak = asyncio.run(run())
    return Phase("direct AsyncOpenAI", completed, secs, mean, peak)


def bench_fleet(args: argparse.Namespace, server: Server, env: dict[str, str],
                workers: list[WorkerProcess]) -> Phase:  # fmt: skip
    from router import submit_job
    from tierflow import store
    from workers.pools import POOLS

    # enough jobs for warm-up + window at the direct client's rate, with a margin
    n = args.jobs
    print(f"fleet: submitting {n} jobs (routed before the tier worker starts) ...", flush=True)
    with ThreadPoolExecutor(8) as pool:
        handles = list(pool.map(lambda i: submit_job(PROMPT.format(i=i), "summarize"), range(n)))
    deadline = time.monotonic() + 300
    while (store.job_progress(handles[-1].job_id) or ("", None))[1] is None:
        if time.monotonic() > deadline:
            raise RuntimeError("jobs were not routed")
        time.sleep(0.5)
    spec = POOLS["local_quality"]
    mine = [
        WorkerProcess(
            env, "tier.local_quality", args.concurrency // args.workers, spec.pool,
            name=f"gpu-bench{k}",
            extra_args=["--prefetch-multiplier", str(args.prefetch or spec.prefetch)],
        )
        for k in range(args.workers)
    ]  # fmt: skip
    workers.extend(mine)
    for worker in mine:
        worker.wait_ready(120)
    procs = [psutil.Process(w.proc.pid) for w in mine]
    rss_peak = 0.0

    def rss() -> float:
        total = 0
        for proc in procs:
            total += proc.memory_info().rss
            for child in proc.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    total += child.memory_info().rss
        return total / 2**20

    def cpu() -> float:
        return sum(t.user + t.system for t in (p.cpu_times() for p in procs))

    stop = threading.Event()

    def watch_rss() -> None:
        nonlocal rss_peak
        while not stop.is_set():
            rss_peak = max(rss_peak, rss())
            time.sleep(0.5)

    threading.Thread(target=watch_rss, daemon=True).start()
    t0 = time.monotonic()
    while server.running() < 0.9 * min(args.concurrency, args.slots):
        if time.monotonic() - t0 > 120:
            break
        time.sleep(0.25)
    time.sleep(args.warmup)

    def completed_now() -> int:
        return int(server.metrics().get("sim_vllm_requests_completed_total", 0))

    if not server.simulated:
        ids = [h.job_id for h in handles]

        def completed_now() -> int:
            return sum(1 for j in ids if store.job_status(j) == "succeeded")

    cpu0 = cpu()
    completed, secs, mean, peak = server.window(args.window, completed_now)
    cpu_s = cpu() - cpu0
    stop.set()
    name = f"fleet: {args.workers} worker(s), threads x{args.concurrency // args.workers}"
    return Phase(name, completed, secs, mean, peak,
                 rss_peak, 1000 * cpu_s / max(1, completed))  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slots", type=int, default=1024, help="simulated max_num_seqs")
    ap.add_argument("--concurrency", type=int, default=640, help="worker threads = direct tasks")
    ap.add_argument("--window", type=float, default=45.0)
    ap.add_argument("--warmup", type=float, default=15.0)
    ap.add_argument("--output-tokens", type=int, default=200)
    ap.add_argument("--tokens-per-s", type=float, default=20.0)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--jobs", type=int, default=0, help="fleet jobs (0: sized from the direct run)")
    ap.add_argument("--workers", type=int, default=1, help="worker processes sharing --concurrency")
    ap.add_argument("--prefetch", type=int, default=0, help="0: workers/pools.py's")
    ap.add_argument("--url", default=None, help="a real OpenAI-compatible server (…/v1)")
    ap.add_argument("--model", default="simulated-llama-70b")
    args = ap.parse_args()
    missing = services_up()
    if missing:
        print("missing services: " + ", ".join(missing), file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    run_id = uuid.uuid4().hex[:10]
    db_name, prefix = f"tierflow_bench_{run_id}", f"tfbench-{run_id}"
    workers: list[WorkerProcess] = []
    sim: SimVLLMProcess | None = None
    try:
        if args.url is None:
            from tierflow.app.embedded import free_port

            sim = SimVLLMProcess(
                free_port(), "--max-num-seqs", str(args.slots), "--output-tokens",
                str(args.output_tokens), "--tokens-per-s", str(args.tokens_per_s),
            ).start().wait_listening()  # fmt: skip
            sim.wait_healthy()
            url = sim.url
        else:
            url = args.url.rstrip("/")
        server = Server(url.removesuffix("/v1"), simulated=sim is not None)

        direct = bench_direct(args, server, url, args.model)
        print(f"direct: {direct.per_s:.1f} req/s, mean running {direct.mean_running:.0f}",
              flush=True)  # fmt: skip
        if not args.jobs:
            args.jobs = int(direct.per_s * (args.window + args.warmup + 30)) + args.concurrency
        time.sleep(5)  # the direct client's last calls drain

        db_url = create_database(db_name)
        node = {
            "name": "gpu-node", "provider": "vllm", "model_id": args.model, "base_url": url,
            "max_tokens": args.max_tokens, "timeout_s": 300,
            "limits": {"max_concurrency": max(args.slots, args.concurrency)},
        }  # fmt: skip
        config = fleet_config(
            local_quality=[node], api_fallback=[fake_model("fake-api")],
            action_tier_overrides={"summarize": "local_quality"}, auto_cloud_after_s=None,
        )  # fmt: skip
        config_path = write_config(config, Path(tempfile.mkdtemp(prefix="tierflow-bench-cfg-")))
        os.environ.pop("TIERFLOW_REDIS_URL", None)
        os.environ.update({
            "TIERFLOW_BROKER_URL": REDIS_URL, "TIERFLOW_DATABASE_URL": db_url,
            "TIERFLOW_KEY_PREFIX": prefix, "TIERFLOW_CONFIG": str(config_path),
        })  # fmt: skip
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        from tierflow.core.db import upgrade_database

        upgrade_database(db_url)
        router = WorkerProcess(env, "router,maintenance", 8, "threads", name="bench-router")
        workers.append(router)
        router.wait_ready(120)
        fleet = bench_fleet(args, server, env, workers)

        print()
        print(f"server: {'SIMULATED vLLM' if sim else url}, {args.slots} slots, "
              f"{args.output_tokens} tokens at {args.tokens_per_s}/s per sequence (batch 1); "
              f"window {args.window:.0f}s after {args.warmup:.0f}s warm-up")  # fmt: skip
        print(f"{'client':<34} | {'req/s':>7} | {'mean running':>12} | {'peak':>5} | "
              f"{'RSS MiB':>7} | {'CPU ms/job':>10} | {'vs direct':>9}")  # fmt: skip
        print("-" * 103)
        for phase in (direct, fleet):
            rss = f"{phase.rss_mb:.0f}" if phase.rss_mb else "-"
            cpu = f"{phase.cpu_ms_per_job:.1f}" if phase.cpu_ms_per_job else "-"
            ratio = phase.per_s / direct.per_s
            print(f"{phase.name:<34} | {phase.per_s:7.1f} | {phase.mean_running:12.0f} | "
                  f"{phase.peak_running:5.0f} | {rss:>7} | {cpu:>10} | {ratio:9.0%}")  # fmt: skip
        return 0
    finally:
        for w in workers:
            w.stop(30)
        if sim is not None:
            sim.stop()
        try:
            drop_database(db_name)
        except Exception as exc:
            print(f"(drop database: {exc})", file=sys.stderr)
        delete_prefix(prefix)


if __name__ == "__main__":
    sys.exit(main())
