"""Benchmark the embedded engine on this machine: batched vs. sequential, direct vs. HTTP.

    .venv/bin/python tests/bench/bench_local_engine.py [--requests 10] [--max-tokens 32]
        [--extra-buffers auto|on|off] [--concurrency 1,2,4,8] [--concurrent-tokens 64]

First table (``--concurrency``): at each level C, 2*C greedy requests of ``--concurrent-tokens``
tokens sent from C threads at once, to the sequential engine this project had before continuous
batching (one ``Llama.create_completion`` at a time under a lock, the same model file and
threads) and to the batched engine (slots = the largest C), same prompts, same run. Reports
aggregate completion tokens/s (all tokens / wall time), latency p50/p95 (ms) and the ratio;
then the prompt tokens the prefix cache reused over two rounds of requests sharing a system text.
Second table: the batched engine alone, one request at a time, four ways (direct, direct stream,
HTTP, HTTP stream).

Each mode runs one warm-up request, then ``--requests`` greedy completions of ``--max-tokens``
tokens over distinct prompts (so llama.cpp's prompt-prefix reuse does not flatter the numbers).
Reports latency p50/p90 (ms, whole request), time to first token p50 for streams (ms), and
tokens/s (completion tokens summed over all requests / their latency summed). Not collected by
pytest (``tests/bench`` is ignored).

``--extra-buffers`` loads the engine with or without llama.cpp's extra buffer types (AMX,
repacked weights); run it once with ``on`` and once with ``off`` to compare. ``on`` is refused
where the probe saw it crash (a CPU that advertises AMX and faults on it), rather than dying.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import openai

from tierflow.core.config import EXTRA_BUFFERS_CHOICES
from workers.engine.engine import (
    DEFAULT_N_CTX,
    MODEL_ID,
    LocalEngine,
    choose_extra_buffers,
    get_engine,
)
from workers.engine.loader import load_llama, resolve_model_path
from workers.engine.probe import probe_extra_buffers
from workers.engine.server import start_in_thread

PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village,",
    "The three primary colours are",
    "To make a cup of tea, first",
    "The largest planet in the solar system is",
    "A list of programming languages:",
    "The history of the Roman Empire began",
    "Water boils at a temperature of",
    "The best way to learn a new language is",
    "In mathematics, a prime number is",
]


@dataclass(frozen=True)
class Sample:
    seconds: float  # whole request
    tokens: int  # completion tokens
    first_token_s: float | None = None  # streams only
    text: str = ""


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run(name: str, call: Callable[[str], Sample], n: int) -> dict[str, object]:
    call(PROMPTS[-1])  # warm-up
    samples = [call(PROMPTS[i % len(PROMPTS)]) for i in range(n)]
    latencies = [s.seconds * 1000 for s in samples]
    firsts = [s.first_token_s * 1000 for s in samples if s.first_token_s is not None]
    return {
        "mode": name,
        "n": n,
        "p50_ms": statistics.median(latencies),
        "p90_ms": _percentile(latencies, 0.9),
        "ttft_p50_ms": statistics.median(firsts) if firsts else None,
        "tokens": sum(s.tokens for s in samples) / n,
        "tok_s": sum(s.tokens for s in samples) / (sum(latencies) / 1000),
    }


def concurrency_table(levels: list[int], max_tokens: int, extra_buffers: bool) -> None:
    """Sequential (before) vs batched (now) at each concurrency level, printed as a table."""
    old = load_llama(resolve_model_path(), n_ctx=DEFAULT_N_CTX, extra_buffers=extra_buffers)
    lock = threading.Lock()

    def sequential(prompt: str) -> Sample:
        t = time.perf_counter()
        with lock:
            out = old.create_completion(prompt, max_tokens=max_tokens, temperature=0.0)
        usage = out["usage"]["completion_tokens"]
        return Sample(time.perf_counter() - t, usage, text=out["choices"][0]["text"])

    engine = LocalEngine(slots=max(levels), extra_buffers="on" if extra_buffers else "off")

    def batched(prompt: str) -> Sample:
        t = time.perf_counter()
        result = engine.complete(prompt, max_tokens=max_tokens, temperature=0.0)
        return Sample(time.perf_counter() - t, result.completion_tokens, text=result.text)

    texts: dict[str, list[tuple[str, str]]] = {"seq": [], "batch": []}

    def level(call: Callable[[str], Sample], c: int, name: str) -> tuple[float, float, float]:
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(2 * c)]
        t = time.perf_counter()
        with ThreadPoolExecutor(c) as pool:
            samples = list(pool.map(call, prompts))
        texts[name] += [(p, x.text) for p, x in zip(prompts, samples, strict=True)]
        wall = time.perf_counter() - t
        ms = [x.seconds * 1000 for x in samples]
        return sum(x.tokens for x in samples) / wall, statistics.median(ms), _percentile(ms, 0.95)

    sequential(PROMPTS[-1]), batched(PROMPTS[-1])  # warm-up
    print(f"\nconcurrent greedy requests of {max_tokens} tokens; engine {engine.describe()}")
    header = (
        f"{'C':>3}{'seq tok/s':>11}{'seq p50':>9}{'seq p95':>9}"
        f"{'batch tok/s':>13}{'b p50':>8}{'b p95':>8}{'x':>7}"
    )
    print(header)
    print("-" * len(header))
    for c in levels:
        s_rate, s_p50, s_p95 = level(sequential, c, "seq")
        b_rate, b_p50, b_p95 = level(batched, c, "batch")
        print(
            f"{c:>3}{s_rate:>11.1f}{s_p50:>9.0f}{s_p95:>9.0f}"
            f"{b_rate:>13.1f}{b_p50:>8.0f}{b_p95:>8.0f}{b_rate / s_rate:>7.2f}"
        )
    alone = dict(texts["seq"])  # greedy and one at a time: each prompt's reference answer
    same = sum(alone[p] == t for p, t in texts["batch"])
    print(
        f"batched greedy answers identical to the sequential engine's: {same} of "
        f"{len(texts['batch'])} (the rest part where batched kernels round differently)"
    )
    system = "You are a careful assistant. Answer in one short sentence, plainly. " * 12
    before, prompt_tokens = engine.reused_tokens, 0
    t = time.perf_counter()
    for _round in range(2):  # the second round finds every slot holding the system text
        with ThreadPoolExecutor(max(levels)) as pool:
            results = list(
                pool.map(
                    lambda p: engine.complete(p, system=system, max_tokens=16, temperature=0.0),
                    PROMPTS[: max(levels)],
                )
            )
        prompt_tokens += sum(r.prompt_tokens for r in results)
    reused = engine.reused_tokens - before
    print(
        f"\nprefix cache: 2 rounds of {max(levels)} requests sharing a system text: "
        f"{reused} of {prompt_tokens} prompt tokens reused ({reused / prompt_tokens:.0%}), "
        f"{time.perf_counter() - t:.1f}s"
    )
    engine.close()
    old.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="benchmark the embedded llama.cpp engine")
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--extra-buffers", choices=EXTRA_BUFFERS_CHOICES, default="auto")
    parser.add_argument("--concurrency", default="1,2,4,8", help="levels; empty: skip the table")
    parser.add_argument("--concurrent-tokens", type=int, default=64)
    args = parser.parse_args()
    max_tokens = args.max_tokens
    if args.extra_buffers == "on":
        verdict = probe_extra_buffers()
        if not verdict.works:
            raise SystemExit(f"extra buffers on: not measured, {verdict.describe()}")

    if args.concurrency:
        levels = [int(c) for c in args.concurrency.split(",")]
        chosen = choose_extra_buffers(args.extra_buffers).enabled
        concurrency_table(levels, args.concurrent_tokens, chosen)
    if args.requests <= 0:
        return
    started = time.perf_counter()
    engine = get_engine(extra_buffers=args.extra_buffers)
    print(f"engine ready in {time.perf_counter() - started:.2f}s (model load {engine.load_s:.2f}s)")
    print(engine.extra_buffers.describe())
    server, url = start_in_thread(port=0, extra_buffers=args.extra_buffers)
    client = openai.OpenAI(base_url=url, api_key="local", max_retries=0, timeout=120)

    def direct(prompt: str) -> Sample:
        t = time.perf_counter()
        result = engine.complete(prompt, max_tokens=max_tokens, temperature=0.0)
        return Sample(time.perf_counter() - t, result.completion_tokens)

    def direct_stream(prompt: str) -> Sample:
        t, first = time.perf_counter(), None
        tokens = 0
        for chunk in engine.stream(prompt, max_tokens=max_tokens, temperature=0.0):
            if first is None and chunk.delta:
                first = time.perf_counter() - t
            if chunk.result is not None:
                tokens = chunk.result.completion_tokens
        return Sample(time.perf_counter() - t, tokens, first)

    def http(prompt: str) -> Sample:
        t = time.perf_counter()
        response = client.chat.completions.create(
            model=MODEL_ID,
            messages=[{"role": "user", "content": prompt}],
            max_tokens=max_tokens,
            temperature=0.0,
        )
        assert response.usage is not None
        return Sample(time.perf_counter() - t, response.usage.completion_tokens)

    def http_stream(prompt: str) -> Sample:
        t, first, tokens = time.perf_counter(), None, 0
        stream = client.chat.completions.create(
            model=MODEL_ID,
            messages=[{"role": "user", "content": prompt}],
            max_tokens=max_tokens,
            temperature=0.0,
            stream=True,
            stream_options={"include_usage": True},
        )
        for chunk in stream:
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = time.perf_counter() - t
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
        return Sample(time.perf_counter() - t, tokens, first)

    try:
        rows = [
            run("direct", direct, args.requests),
            run("direct stream", direct_stream, args.requests),
            run("http (openai sdk)", http, args.requests),
            run("http stream (sdk)", http_stream, args.requests),
        ]
    finally:
        client.close()
        server.shutdown()
        server.server_close()

    buffers = "on" if engine.extra_buffers.enabled else "off"
    print(
        f"\n{args.requests} requests per mode, max_tokens={max_tokens}, greedy, 2 threads, "
        f"extra buffers {buffers}"
    )
    header = f"{'mode':<20}{'p50 ms':>9}{'p90 ms':>9}{'TTFT p50':>10}{'tokens':>8}{'tok/s':>8}"
    print(header)
    print("-" * len(header))
    for r in rows:
        ttft = f"{r['ttft_p50_ms']:.0f}" if r["ttft_p50_ms"] is not None else "-"
        print(
            f"{r['mode']:<20}{r['p50_ms']:>9.0f}{r['p90_ms']:>9.0f}{ttft:>10}"
            f"{r['tokens']:>8.1f}{r['tok_s']:>8.1f}"
        )


if __name__ == "__main__":
    main()
