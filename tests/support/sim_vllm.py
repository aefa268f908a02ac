"""A SIMULATED vLLM server: the OpenAI-compatible API and vLLM's /metrics, with no model behind it.

Nothing here runs a model. It reproduces what a fleet in front of a vLLM server sees, so the GPU
tier can be tested and benchmarked on a machine without a GPU:

- ``POST /v1/chat/completions`` (JSON, or SSE chunks with ``stream: true`` and a final usage chunk
  with ``stream_options.include_usage``), ``GET /v1/models``, ``GET /health``, ``GET /metrics``
  (Prometheus text: ``vllm:num_requests_running``, ``vllm:num_requests_waiting``,
  ``vllm:gpu_cache_usage_perc``, plus ``sim_vllm_*`` counters for benchmarks);
- continuous batching: at most ``--max-num-seqs`` sequences run at once, the rest wait in FIFO
  order (``num_requests_waiting``);
- a latency model: time to first token ``ttft_base_s + ttft_per_seq_s * running`` (the prefill
  shares the batch), then tokens at ``tokens_per_s / (1 + decode_slowdown * running /
  max_num_seqs)`` per sequence (decoding a larger batch is slower per sequence, faster in total);
  ``--slow-factor`` stretches both (a slower node);
- a start-up delay (``--startup-delay``: the model load) during which /health, /v1/models and
  completions answer 503;
- ``POST /sim/reset`` zeroes the counters and peaks (a benchmark's phase boundary).

The model id defaults to ``simulated-llama-70b``; every /metrics HELP line and log line says
"simulated". A raw asyncio HTTP/1.1 server (keep-alive, chunked SSE), no dependency, so one
process serves a thousand concurrent sequences on one core. Run it as a process a test can kill::

    python -m tests.support.sim_vllm --port 8011 --max-num-seqs 1024 --startup-delay 5

It prints ``simulated vLLM listening on http://127.0.0.1:PORT`` once bound (before the start-up
delay ends). :class:`SimVLLMProcess` starts one, waits for it and kills it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SIM_MODEL = "simulated-llama-70b"
DEFAULT_ANSWER = (
    "Simulated vLLM answer: the item describes a scheduled maintenance window, its expected "
    "impact on users, and the follow-up steps the team agreed on."
)
log = logging.getLogger("sim_vllm")


def count_tokens(text: str) -> int:
    """About four characters a token, at least one (the tests' other fake servers agree)."""
    return max(1, (len(text) + 3) // 4)


@dataclass
class SimParams:
    max_num_seqs: int = 256
    startup_delay_s: float = 0.0
    ttft_base_s: float = 0.05
    ttft_per_seq_s: float = 0.0005
    tokens_per_s: float = 40.0
    decode_slowdown: float = 1.0
    slow_factor: float = 1.0
    output_tokens: int = 64  # generated per request (capped by the request's max_tokens)
    kv_tokens: int = 400_000  # KV cache capacity in tokens, for gpu_cache_usage_perc
    answer: str = DEFAULT_ANSWER
    model: str = SIM_MODEL


@dataclass
class SimState:
    params: SimParams
    started: float = field(default_factory=time.monotonic)
    running: int = 0
    waiting: deque[asyncio.Future[None]] = field(default_factory=deque)
    kv_in_use: int = 0
    completed: int = 0
    received: int = 0
    peak_running: int = 0
    peak_waiting: int = 0
    generated_tokens: int = 0
    # integral of running (and waiting) over time, for a mean over any window of two scrapes
    running_area: float = 0.0
    waiting_area: float = 0.0
    last_change: float = field(default_factory=time.monotonic)

    @property
    def ready(self) -> bool:
        return time.monotonic() - self.started >= self.params.startup_delay_s

    def _account(self) -> None:
        now = time.monotonic()
        dt = now - self.last_change
        self.running_area += self.running * dt
        self.waiting_area += len(self.waiting) * dt
        self.last_change = now

    async def acquire(self) -> None:
        self._account()
        if self.running < self.params.max_num_seqs and not self.waiting:
            self.running += 1
        else:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self.waiting.append(fut)
            self.peak_waiting = max(self.peak_waiting, len(self.waiting))
            try:
                await fut  # the slot is handed over with the wake-up (running already counted)
            except asyncio.CancelledError:
                self._account()
                if fut in self.waiting:
                    self.waiting.remove(fut)
                elif not fut.cancelled():
                    self.release()
                raise
        self.peak_running = max(self.peak_running, self.running)

    def release(self) -> None:
        self._account()
        while self.waiting:
            fut = self.waiting.popleft()
            if not fut.done():
                fut.set_result(None)  # hand this slot straight on
                return
        self.running -= 1

    def per_token_s(self) -> float:
        p = self.params
        rate = p.tokens_per_s / (1 + p.decode_slowdown * self.running / p.max_num_seqs)
        return p.slow_factor / rate

    def ttft_s(self) -> float:
        p = self.params
        return p.slow_factor * (p.ttft_base_s + p.ttft_per_seq_s * self.running)

    def metrics(self) -> str:
        self._account()
        p = self.params
        name = p.model
        lines = [
            "# HELP vllm:num_requests_running simulated vLLM: requests in the running batch.",
            "# TYPE vllm:num_requests_running gauge",
            f'vllm:num_requests_running{{model_name="{name}"}} {self.running}',
            "# HELP vllm:num_requests_waiting simulated vLLM: requests waiting for a slot.",
            "# TYPE vllm:num_requests_waiting gauge",
            f'vllm:num_requests_waiting{{model_name="{name}"}} {len(self.waiting)}',
            "# HELP vllm:gpu_cache_usage_perc simulated vLLM: KV cache in use (1 = full).",
            "# TYPE vllm:gpu_cache_usage_perc gauge",
            f'vllm:gpu_cache_usage_perc{{model_name="{name}"}} '
            f"{min(1.0, self.kv_in_use / p.kv_tokens):.6f}",
        ]
        extra = {
            "sim_vllm_max_num_seqs": ("gauge", p.max_num_seqs),
            "sim_vllm_peak_requests_running": ("gauge", self.peak_running),
            "sim_vllm_peak_requests_waiting": ("gauge", self.peak_waiting),
            "sim_vllm_requests_received_total": ("counter", self.received),
            "sim_vllm_requests_completed_total": ("counter", self.completed),
            "sim_vllm_generation_tokens_total": ("counter", self.generated_tokens),
            "sim_vllm_running_seconds_total": ("counter", round(self.running_area, 6)),
            "sim_vllm_waiting_seconds_total": ("counter", round(self.waiting_area, 6)),
            "sim_vllm_uptime_seconds": ("gauge", round(time.monotonic() - self.started, 6)),
        }
        for metric, (kind, value) in extra.items():
            lines += [
                f"# HELP {metric} simulated vLLM (benchmark aid, not a vLLM metric).",
                f"# TYPE {metric} {kind}",
                f"{metric} {value}",
            ]
        return "\n".join(lines) + "\n"

    def reset(self) -> None:
        self._account()
        self.completed = self.received = self.generated_tokens = 0
        self.peak_running, self.peak_waiting = self.running, len(self.waiting)
        self.running_area = self.waiting_area = 0.0


class _Request:
    def __init__(self, method: str, path: str, headers: dict[str, str], body: bytes) -> None:
        self.method, self.path, self.headers, self.body = method, path, headers, body


async def _read_request(reader: asyncio.StreamReader) -> _Request | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        return None
    lines = head.decode("latin-1").split("\r\n")
    try:
        method, target, _version = lines[0].split(" ", 2)
    except ValueError:
        return None
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            key, value = line.split(":", 1)
            headers[key.strip().lower()] = value.strip()
    body = b""
    length = int(headers.get("content-length", "0") or 0)
    if length:
        body = await reader.readexactly(length)
    return _Request(method, target.split("?", 1)[0], headers, body)


def _head(status: int, ctype: str, extra: dict[str, str]) -> bytes:
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 503: "Service Unavailable"}
    lines = [f"HTTP/1.1 {status} {reason.get(status, 'OK')}", f"Content-Type: {ctype}"]
    lines += [f"{k}: {v}" for k, v in extra.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _json(status: int, body: Any) -> bytes:
    data = json.dumps(body).encode()
    return _head(status, "application/json", {"Content-Length": str(len(data))}) + data


class SimServer:
    def __init__(self, params: SimParams) -> None:
        self.state = SimState(params)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                req = await _read_request(reader)
                if req is None:
                    break
                keep = await self.dispatch(req, writer)
                await writer.drain()
                if not keep or req.headers.get("connection", "").lower() == "close":
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def dispatch(self, req: _Request, writer: asyncio.StreamWriter) -> bool:
        st = self.state
        loading = {"error": {"message": "simulated vLLM: model still loading", "code": 503}}
        if req.method == "GET" and req.path == "/metrics":
            data = st.metrics().encode()
            ctype = "text/plain; version=0.0.4; charset=utf-8"
            writer.write(_head(200, ctype, {"Content-Length": str(len(data))}) + data)
        elif req.method == "GET" and req.path == "/health":
            writer.write(_json(200, {}) if st.ready else _json(503, loading))
        elif req.method == "GET" and req.path == "/v1/models":
            model = {"id": st.params.model, "object": "model", "owned_by": "simulated-vllm"}
            body = {"object": "list", "data": [model]}
            writer.write(_json(200, body) if st.ready else _json(503, loading))
        elif req.method == "POST" and req.path == "/sim/reset":
            st.reset()
            writer.write(_json(200, {"reset": True}))
        elif req.method == "POST" and req.path in ("/v1/chat/completions", "/v1/completions"):
            if not st.ready:
                writer.write(_json(503, loading))
            else:
                return await self.complete(req, writer)
        else:
            writer.write(_json(404, {"error": {"message": f"no route {req.path}"}}))
        return True

    async def complete(self, req: _Request, writer: asyncio.StreamWriter) -> bool:
        st, p = self.state, self.state.params
        try:
            body = json.loads(req.body or b"{}")
        except ValueError:
            writer.write(_json(400, {"error": {"message": "body is not JSON"}}))
            return True
        st.received += 1
        messages = body.get("messages") or [{"content": body.get("prompt", "")}]
        prompt_tokens = sum(count_tokens(str(m.get("content", ""))) for m in messages)
        n_out = max(1, min(int(body.get("max_tokens") or p.output_tokens), p.output_tokens))
        stream = bool(body.get("stream"))
        usage_chunk = bool((body.get("stream_options") or {}).get("include_usage"))
        rid = f"chatcmpl-sim-{uuid.uuid4().hex[:12]}"
        created = int(time.time())
        # the text is the configured answer (usage is simulated: n_out tokens were "generated")
        text = p.answer
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": n_out,
            "total_tokens": prompt_tokens + n_out,
        }

        def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
            obj = {
                "id": rid, "object": "chat.completion.chunk", "created": created,
                "model": p.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}] if delta
                or finish else [],
                **extra,
            }  # fmt: skip
            data = f"data: {json.dumps(obj)}\n\n".encode()
            return f"{len(data):x}\r\n".encode() + data + b"\r\n"

        await st.acquire()
        st.kv_in_use += prompt_tokens
        emitted = 0
        try:
            await asyncio.sleep(st.ttft_s())
            if stream:
                writer.write(
                    _head(200, "text/event-stream", {"Transfer-Encoding": "chunked"})
                    + chunk({"role": "assistant", "content": ""})
                )
            # decode in steps of about 0.25 s, each step's pace read from the batch at that time
            pos = 0
            while emitted < n_out:
                step = max(1, min(n_out - emitted, int(0.25 / st.per_token_s())))
                await asyncio.sleep(step * st.per_token_s())
                emitted += step
                st.kv_in_use += step
                if stream:
                    piece_end = len(text) if emitted >= n_out else len(text) * emitted // n_out
                    piece, pos = text[pos:piece_end], piece_end
                    writer.write(chunk({"content": piece}))
                    await writer.drain()
            if stream:
                writer.write(chunk({}, "length" if n_out >= int(body.get("max_tokens") or 0)
                                   else "stop"))  # fmt: skip
                if usage_chunk:
                    writer.write(chunk({}, None, usage=usage))
                done = b"data: [DONE]\n\n"
                writer.write(f"{len(done):x}\r\n".encode() + done + b"\r\n0\r\n\r\n")
            else:
                finish = "length" if n_out >= int(body.get("max_tokens") or 0) else "stop"
                writer.write(
                    _json(
                        200,
                        {
                            "id": rid,
                            "object": "chat.completion",
                            "created": created,
                            "model": p.model,
                            "choices": [
                                {
                                    "index": 0,
                                    "finish_reason": finish,
                                    "message": {"role": "assistant", "content": text},
                                }
                            ],
                            "usage": usage,
                        },
                    )
                )
            st.completed += 1
            st.generated_tokens += n_out
        finally:
            st.kv_in_use -= prompt_tokens + emitted
            st.release()
        return True


async def serve(params: SimParams, host: str, port: int) -> None:
    server = SimServer(params)
    srv = await asyncio.start_server(server.handle, host, port, backlog=4096, limit=1 << 20)
    bound = srv.sockets[0].getsockname()[1]
    print(f"simulated vLLM listening on http://{host}:{bound} (model {params.model}, "
          f"max_num_seqs {params.max_num_seqs}, start-up delay {params.startup_delay_s}s)",
          flush=True)  # fmt: skip
    log.info("simulated vLLM: serving %s", params)
    async with srv:
        await srv.serve_forever()


def parse_args(argv: list[str] | None = None) -> tuple[SimParams, str, int]:
    ap = argparse.ArgumentParser(description="A simulated vLLM server (no model runs).")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--max-num-seqs", type=int, default=256)
    ap.add_argument("--startup-delay", type=float, default=0.0)
    ap.add_argument("--ttft-base", type=float, default=0.05)
    ap.add_argument("--ttft-per-seq", type=float, default=0.0005)
    ap.add_argument("--tokens-per-s", type=float, default=40.0)
    ap.add_argument("--decode-slowdown", type=float, default=1.0)
    ap.add_argument("--slow-factor", type=float, default=1.0)
    ap.add_argument("--output-tokens", type=int, default=64)
    ap.add_argument("--kv-tokens", type=int, default=400_000)
    ap.add_argument("--answer", default=DEFAULT_ANSWER)
    ap.add_argument("--model", default=SIM_MODEL)
    a = ap.parse_args(argv)
    if a.host not in ("127.0.0.1", "localhost", "::1"):
        ap.error("the simulated server binds loopback only")
    params = SimParams(
        a.max_num_seqs, a.startup_delay, a.ttft_base, a.ttft_per_seq, a.tokens_per_s,
        a.decode_slowdown, a.slow_factor, a.output_tokens, a.kv_tokens, a.answer, a.model,
    )  # fmt: skip
    return params, a.host, a.port


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s simulated-vllm %(message)s")
    params, host, port = parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(params, host, port))


def parse_metrics(text: str) -> dict[str, float]:
    """``name -> value`` for every sample line (labels dropped)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        out[name.split("{", 1)[0]] = float(value)
    return out


class SimVLLMProcess:
    """``python -m tests.support.sim_vllm`` in its own process group; ``kill()`` is a crash."""

    def __init__(self, port: int, *args: str, log_path: Path | None = None) -> None:
        self.port = port
        self.args = list(args)
        self.log_path = log_path or Path(f"/tmp/sim-vllm-{port}-{uuid.uuid4().hex[:6]}.log")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return self.origin + "/v1"

    def start(self) -> SimVLLMProcess:
        cmd = [sys.executable, "-m", "tests.support.sim_vllm", "--port", str(self.port), *self.args]
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        return self

    def wait_listening(self, timeout: float = 20.0) -> SimVLLMProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                self.metrics()
                return self
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"simulated vLLM exited: {self.log_path.read_text()[-2000:]}")
            time.sleep(0.05)
        raise RuntimeError(f"simulated vLLM on {self.port} not listening after {timeout}s")

    def wait_healthy(self, timeout: float = 60.0) -> SimVLLMProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError, urllib.error.HTTPError),
                urllib.request.urlopen(self.origin + "/health", timeout=2),
            ):
                return self
            time.sleep(0.05)
        raise RuntimeError(f"simulated vLLM on {self.port} not healthy after {timeout}s")

    def metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(self.origin + "/metrics", timeout=5) as resp:
            return parse_metrics(resp.read().decode())

    def reset(self) -> None:
        req = urllib.request.Request(self.origin + "/sim/reset", data=b"{}", method="POST")
        with urllib.request.urlopen(req, timeout=5):
            pass

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> SimVLLMProcess:
        return self.start().wait_listening()

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    main()
