"""An OpenAI-compatible HTTP server over the embedded engine (stdlib only).

The default local tiers reach Gemma 3 270M through this server with the official ``openai`` SDK
(``base_url=http://127.0.0.1:PORT/v1``), the very path they take to Ollama or vLLM in production.

Endpoints:

- ``GET /v1/models`` lists ``gemma-3-270m``; ``GET /health`` answers ``{"status": "ok"}`` with
  the engine's ``slots``, the sequences ``running`` and ``waiting`` for a slot, and the
  ``prompt_tokens_reused`` from kept KV cells (prefix cache) since the start.
- ``POST /v1/chat/completions``: system messages become the system text, the other messages'
  contents (joined by blank lines) the prompt, formatted by
  :func:`workers.engine.engine.build_prompt`. Answers a ``chat.completion``, or with
  ``stream: true`` SSE ``chat.completion.chunk`` lines, a usage chunk when
  ``stream_options.include_usage`` is true, then ``data: [DONE]``.
- ``POST /v1/completions``: ``prompt`` (a string) continued as is; same streaming rules.

Parameters: ``max_tokens`` (or ``max_completion_tokens``; default 256), ``temperature``
(default 1.0, as OpenAI), ``stop`` (a string or a list). ``response_format`` and ``model`` are
accepted and ignored: one base model is served and it cannot be forced into JSON. A body that is
not a JSON object, or bad parameters, get 400 with an OpenAI-style ``invalid_request_error``; a
prompt over the context window gets 400 with code ``context_length_exceeded``.

Requests are decoded together, up to the engine's slots (continuous batching,
:mod:`workers.engine.batcher`; more wait for a slot); each is logged on one line with its status,
latency (ms) and generation speed (completion tokens/s). The start-up line says the slots and the
context per slot (``TIERFLOW_ENGINE_SLOTS``, ``TIERFLOW_ENGINE_SLOT_CTX``), and whether
llama.cpp's extra buffer types are in use and why (``--extra-buffers auto|on|off``; see
:mod:`workers.engine.engine`).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tierflow.core import errors
from tierflow.core.config import EXTRA_BUFFERS_CHOICES
from tierflow.core.settings import get_settings
from workers.engine.engine import (
    MODEL_ID,
    EngineChunk,
    EngineResult,
    LocalEngine,
    get_engine,
)
from workers.engine.slots import engine_slots

log = logging.getLogger("workers.engine.server")  # same name under python -m

DEFAULT_PORT = 8765
DEFAULT_MAX_TOKENS = 256
MAX_BODY_BYTES = 4 * 1024 * 1024


class ApiError(Exception):
    """An OpenAI-style error answer: HTTP ``status``, error ``type`` and optional ``code``."""

    def __init__(
        self,
        status: int,
        message: str,
        etype: str = "invalid_request_error",
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.etype, self.code = status, message, etype, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.etype, "code": self.code}}


@dataclass(frozen=True)
class GenerationRequest:
    """What one completion request asks of the engine."""

    prompt: str
    system: str | None
    max_tokens: int
    temperature: float
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool


def _text_of(content: Any, where: str) -> str:
    """A message content: a string, or a list of ``{"type": "text", "text": ...}`` parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        if all(isinstance(t, str) for t in texts):
            return "".join(texts)  # type: ignore[arg-type]
    if content is None:
        return ""
    raise ApiError(400, f"{where}: content must be a string or a list of text parts")


def _common(body: dict[str, Any], prompt: str, system: str | None) -> GenerationRequest:
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        max_tokens = body.get("max_completion_tokens")
    if max_tokens is None:
        max_tokens = DEFAULT_MAX_TOKENS
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise ApiError(400, "max_tokens must be a positive integer")
    temperature = body.get("temperature", 1.0)
    if temperature is None:
        temperature = 1.0
    if not isinstance(temperature, int | float) or not 0 <= temperature <= 2:
        raise ApiError(400, "temperature must be a number from 0 to 2")
    stop = body.get("stop") or ()
    stop = (stop,) if isinstance(stop, str) else stop
    if not isinstance(stop, list | tuple) or not all(isinstance(s, str) and s for s in stop):
        raise ApiError(400, "stop must be a string or a list of non-empty strings")
    if body.get("n", 1) not in (1, None):
        raise ApiError(400, "only n=1 is supported")
    options = body.get("stream_options") or {}
    return GenerationRequest(
        prompt=prompt,
        system=system,
        max_tokens=max_tokens,
        temperature=float(temperature),
        stop=tuple(stop),
        stream=body.get("stream") is True,
        include_usage=isinstance(options, dict) and options.get("include_usage") is True,
    )


def chat_request(body: dict[str, Any]) -> GenerationRequest:
    """System messages → system text; every other message's content → the prompt."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list")
    system: list[str] = []
    prompt: list[str] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ApiError(400, f"messages.{i} must be an object with a role")
        text = _text_of(message.get("content"), f"messages.{i}")
        (system if message["role"] in ("system", "developer") else prompt).append(text)
    return _common(body, "\n\n".join(prompt), "\n\n".join(system) or None)


def text_request(body: dict[str, Any]) -> GenerationRequest:
    """``prompt`` (a string, or a list holding one) continued as is."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise ApiError(400, "prompt must be a string")
    return _common(body, prompt, None)


def _usage(result: EngineResult) -> dict[str, int]:
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
    }


class LocalServer(ThreadingHTTPServer):
    """The HTTP server; one handler thread per connection, all sharing one engine."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], engine: LocalEngine) -> None:
        super().__init__(address, _Handler)
        self.engine = engine

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client dropping a keep-alive connection is routine; anything else is logged."""
        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            log.debug("connection from %s dropped", client_address)
        else:
            log.exception("error while serving %s", client_address)

    @property
    def url(self) -> str:
        """The OpenAI base URL, ending in ``/v1``."""
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}/v1"


class _Handler(BaseHTTPRequestHandler):
    disable_nagle_algorithm = True  # one small write per SSE event: no 40 ms ACK stalls
    protocol_version = "HTTP/1.1"  # keep-alive for the SDK's pool; streams use chunked encoding
    server_version = "tierflow-local/1"
    timeout = 300  # seconds an idle keep-alive connection or a slow body may take
    server: LocalServer
    _streaming = False  # True once a stream's headers are out: errors then go in-band

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)  # our own line is _log_request

    # ---- plumbing -------------------------------------------------------------------------

    def _log_request(self, status: int, started: float, result: EngineResult | None = None) -> None:
        ms = (time.perf_counter() - started) * 1000
        if result is None:
            log.info("%s %s %d %.1fms", self.command, self.path, status, ms)
        else:
            log.info(
                "%s %s %d %.1fms prompt=%d completion=%d %.1f tok/s",
                self.command,
                self.path,
                status,
                ms,
                result.prompt_tokens,
                result.completion_tokens,
                result.tokens_per_s,
            )

    def _send_json(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _read_json(self) -> dict[str, Any]:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY_BYTES:
            self.close_connection = True
            raise ApiError(400 if length < 0 else 413, "bad or too large Content-Length")
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ApiError(400, "request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise ApiError(400, "request body must be a JSON object")
        return body

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%X\r\n%s\r\n" % (len(data), data))

    def _sse(self, payload: dict[str, Any] | str) -> None:
        text = payload if isinstance(payload, str) else json.dumps(payload)
        self._chunk(f"data: {text}\n\n".encode())

    # ---- routes ---------------------------------------------------------------------------

    def do_GET(self) -> None:
        started = time.perf_counter()
        path = self.path.split("?", 1)[0].rstrip("/")
        model = {"id": MODEL_ID, "object": "model", "created": 0, "owned_by": "tierflow"}
        payload: dict[str, Any]
        if path == "/v1/models":
            status, payload = 200, {"object": "list", "data": [model]}
        elif path == f"/v1/models/{MODEL_ID}":
            status, payload = 200, model
        elif path == "/health":
            running, waiting = self.server.engine.busy()
            status, payload = 200, {"status": "ok", "model": MODEL_ID}
            payload |= {"slots": self.server.engine.slots, "running": running, "waiting": waiting}
            payload["prompt_tokens_reused"] = self.server.engine.reused_tokens
        else:
            status, payload = 404, ApiError(404, f"no route GET {path}").body()
        self._send_json(status, payload)
        self._log_request(status, started)

    def do_POST(self) -> None:
        started = time.perf_counter()
        self._streaming = False
        path = self.path.split("?", 1)[0].rstrip("/")
        try:
            body = self._read_json()
            if path == "/v1/chat/completions":
                request, chat = chat_request(body), True
            elif path == "/v1/completions":
                request, chat = text_request(body), False
            else:
                raise ApiError(404, f"no route POST {path}")
            if request.stream:
                self._stream(request, chat, started)
            else:
                self._complete(request, chat, started)
        except ApiError as exc:
            self._send_json(exc.status, exc.body())
            self._log_request(exc.status, started)
        except Exception:
            log.exception("%s %s failed", self.command, path)
            self.close_connection = True
            if not self._streaming:
                self._send_json(500, ApiError(500, "internal error", "server_error").body())

    # ---- generation -----------------------------------------------------------------------

    def _generate(self, request: GenerationRequest) -> EngineResult:
        try:
            return self.server.engine.complete(
                request.prompt,
                system=request.system,
                max_tokens=request.max_tokens,
                temperature=request.temperature,
                stop=request.stop,
            )
        except errors.BackendError as exc:
            raise _api_error(exc) from None

    def _complete(self, request: GenerationRequest, chat: bool, started: float) -> None:
        result = self._generate(request)
        choice: dict[str, Any] = {"index": 0, "finish_reason": result.finish_reason}
        if chat:
            choice["message"] = {"role": "assistant", "content": result.text}
        else:
            choice["text"] = result.text
        choice["logprobs"] = None
        self._send_json(
            200,
            {
                "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
                "object": "chat.completion" if chat else "text_completion",
                "created": int(time.time()),
                "model": MODEL_ID,
                "choices": [choice],
                "usage": _usage(result),
            },
        )
        self._log_request(200, started, result)

    def _stream(self, request: GenerationRequest, chat: bool, started: float) -> None:
        chunks = self.server.engine.stream(
            request.prompt,
            system=request.system,
            max_tokens=request.max_tokens,
            temperature=request.temperature,
            stop=request.stop,
        )
        try:
            first = next(chunks)  # errors before any output still get a proper status code
        except errors.BackendError as exc:
            raise _api_error(exc) from None
        base = {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()),
            "model": MODEL_ID,
        }

        def event(delta: str | None, finish: str | None = None) -> dict[str, Any]:
            choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
            if chat:
                choice["delta"] = {} if delta is None else {"content": delta}
            else:
                choice["text"] = delta or ""
            return base | {"choices": [choice]}

        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self._streaming = True
        result: EngineResult | None = None
        try:
            if chat:
                self._sse(base | {"choices": [{"index": 0, "delta": {"role": "assistant"}}]})
            for chunk in _prepend(first, chunks):
                if chunk.result is not None:
                    result = chunk.result
                    self._sse(event(None, result.finish_reason))
                    if request.include_usage:
                        self._sse(base | {"choices": [], "usage": _usage(result)})
                else:
                    self._sse(event(chunk.delta))
            self._sse("[DONE]")
        except errors.BackendError as exc:
            self._sse(_api_error(exc).body())
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            log.info("%s %s client went away mid-stream", self.command, self.path)
            return
        finally:
            chunks.close()  # frees the engine even when the client left
        self._chunk(b"")
        self._log_request(200, started, result)


def _prepend(first: EngineChunk, rest: Iterator[EngineChunk]) -> Iterator[EngineChunk]:
    yield first
    yield from rest


def _api_error(exc: errors.BackendError) -> ApiError:
    if isinstance(exc, errors.ContextTooLong):
        return ApiError(400, str(exc), code="context_length_exceeded")
    if isinstance(exc, errors.InvalidRequest):
        return ApiError(400, str(exc))
    return ApiError(500, str(exc), etype="server_error")


def make_server(
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    model_path: str | Path | None = None,
    extra_buffers: str = "auto",
    *,
    slots: int | None = None,
    slot_ctx: int | None = None,
) -> LocalServer:
    """A bound server (port 0 picks a free one) with the engine loaded; not yet serving.

    ``slots`` defaults to :func:`~workers.engine.slots.engine_slots` (the engine-served models'
    ``options.slots``, else ``TIERFLOW_ENGINE_SLOTS``, else the cores' default); ``slot_ctx`` to
    ``TIERFLOW_ENGINE_SLOT_CTX``.
    """
    settings = get_settings()
    engine = get_engine(
        model_path,
        n_ctx=slot_ctx or settings.engine_slot_ctx,
        slots=slots or engine_slots(),
        extra_buffers=extra_buffers,
    )
    return LocalServer((host, port), engine)


def start_in_thread(
    port: int = 0,
    host: str = "127.0.0.1",
    model_path: str | Path | None = None,
    extra_buffers: str = "auto",
) -> tuple[LocalServer, str]:
    """Serve in a daemon thread; returns the server (``shutdown()`` it) and its ``/v1`` URL."""
    server = make_server(host, port, model_path, extra_buffers)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
    )
    thread.start()
    return server, server.url


def serve(
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    model_path: str | Path | None = None,
    extra_buffers: str = "auto",
) -> None:
    """Serve until SIGTERM or SIGINT (handled when called from the main thread), then close."""
    server = make_server(host, port, model_path, extra_buffers)
    engine = server.engine

    def stop(signum: int, _frame: object) -> None:
        log.info("signal %d: shutting down", signum)
        threading.Thread(target=server.shutdown, daemon=True).start()  # not from this thread

    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, stop)
    log.info(
        "serving %s (%s, loaded in %.2fs; %s; %s) on %s",
        MODEL_ID,
        engine.model_path,
        engine.load_s,
        engine.describe(),
        engine.extra_buffers.describe(),
        server.url,
    )
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        log.info("stopped")


def main(argv: list[str] | None = None) -> None:
    """``python -m workers.engine.server [--host H] [--port P] [--model-path GGUF]
    [--extra-buffers auto|on|off]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--model-path", default=None)
    parser.add_argument("--extra-buffers", choices=EXTRA_BUFFERS_CHOICES, default="auto")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    serve(args.host, args.port, args.model_path, args.extra_buffers)


if __name__ == "__main__":
    main()
