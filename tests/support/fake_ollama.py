"""A local server that follows Ollama's documented native API (docs/api.md), for tests.

A stdlib ``ThreadingHTTPServer`` on ``127.0.0.1`` (port 0) in a background thread:

- ``GET /api/tags``: ``{"models": [{"name", "model", "modified_at", "size", "digest",
  "details"}]}`` for each pulled model (``srv.pulled``; ``llama3`` is ``llama3:latest``);
- ``POST /api/show``: ``details`` and ``model_info`` with ``<arch>.context_length`` =
  ``srv.trained_context``; 404 for a model not pulled;
- ``POST /api/chat``: ``stream`` true (the default, as Ollama's): NDJSON, one object a word, then
  the ``done`` object with ``done_reason``, ``prompt_eval_count``, ``eval_count``; false: one
  object. A model not pulled: 404 ``{"error": "model 'x' not found, try pulling it first"}``.

What Ollama does that bites, done here too: the prompt (system and user texts, one token a
whitespace-separated word) longer than ``options.num_ctx`` (default ``srv.default_num_ctx``, a
small one like Ollama's) is cut silently to its last ``num_ctx`` tokens; ``prompt_eval_count``
says how many the model read and ``srv.seen`` holds what it read. ``options.num_predict`` cuts
the answer (``done_reason: "length"``), ``options.stop`` at a stop string.

Each chat consumes one behaviour of ``srv.script([...])`` (empty: ``ok``): ``ok``, ``500``,
``503``, ``429[:N]`` (``retry-after: N``), ``timeout[:S]`` (sleeps S s first), ``drop`` (closes
the connection unanswered), ``stream_error`` (two words, then an ``{"error"}`` line),
``no_done`` (the stream ends without its ``done`` object), ``malformed`` (a body not JSON),
``schema`` (JSON that is not a chat object).
Every request is recorded (:class:`~tests.support.fake_providers.RecordedRequest`);
``srv.calls`` are the chats, whose ``body`` holds the ``keep_alive`` and ``options`` received.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from tests.support.fake_providers import RecordedRequest
from tests.support.http_fake import HTTPFake, QuietHandler, QuietServer
from tierflow.core.config import ModelConfig

NOT_FOUND = "model '{}' not found, try pulling it first"


def tagged(name: str) -> str:
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


class _Handler(QuietHandler):
    server: QuietServer[OllamaServer]

    def respond(self, method: str, headers: dict[str, str], body: Any) -> None:
        self.server.fake.serve(self, method, self.path.split("?")[0], headers, body)

    def send_json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("content-type", "application/json; charset=utf-8")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def send_lines(self, objects: Iterable[Any], delay_s: float) -> None:
        """NDJSON, one flushed line an object; the connection's end ends the body (HTTP/1.0)."""
        self.send_response(200)
        self.send_header("content-type", "application/x-ndjson")
        self.end_headers()
        for obj in objects:
            self.wfile.write(json.dumps(obj).encode() + b"\n")
            self.wfile.flush()
            if delay_s:
                time.sleep(delay_s)


class OllamaServer(HTTPFake):
    """The fake Ollama server (see the module); ``with OllamaServer() as srv: srv.url``.

    ``srv.url`` is the server's origin, as Ollama users write it (no ``/v1``).
    """

    handler = _Handler

    def __init__(self, answer: str | Callable[[str], str] | None = None) -> None:
        super().__init__()
        self.answer = answer
        self.pulled: list[str] = ["fake-llama:latest"]
        self.trained_context = 8192
        self.default_num_ctx = 2048
        self.chunk_delay_s = 0.0
        self.requests: list[RecordedRequest] = []
        self.seen: list[str] = []  # per chat, the prompt text the model read after any cut
        self._script: deque[str] = deque()
        self._lock = threading.Lock()

    # script and records
    def script(self, behaviours: Iterable[str]) -> None:
        with self._lock:
            self._script.extend(behaviours)

    @property
    def calls(self) -> list[RecordedRequest]:
        """The ``/api/chat`` requests (probes are in ``requests`` too)."""
        with self._lock:
            return [r for r in self.requests if r.path == "/api/chat"]

    def paths(self) -> list[str]:
        with self._lock:
            return [r.path for r in self.requests]

    # serving
    def serve(
        self, out: _Handler, method: str, path: str, headers: dict[str, str], body: Any
    ) -> None:
        record = RecordedRequest(method, path, headers, body, time.monotonic())
        with self._lock:
            self.requests.append(record)
        if (method, path) == ("GET", "/api/tags"):
            out.send_json(200, {"models": [self._tag(name) for name in self.pulled]})
        elif (method, path) == ("POST", "/api/show"):
            self._show(out, body)
        elif (method, path) == ("POST", "/api/chat"):
            self._chat(out, body, record)
        else:
            out.send_json(404, {"error": f"no route {method} {path}"})

    def _is_pulled(self, name: Any) -> bool:
        return isinstance(name, str) and tagged(name) in {tagged(p) for p in self.pulled}

    @staticmethod
    def _tag(name: str) -> dict[str, Any]:
        return {
            "name": tagged(name), "model": tagged(name),
            "modified_at": "2026-01-01T00:00:00Z", "size": 1_000_000, "digest": "0" * 64,
            "details": {"format": "gguf", "family": "llama", "parameter_size": "1B",
                        "quantization_level": "Q4_K_M"},
        }  # fmt: skip

    def _show(self, out: _Handler, body: Any) -> None:
        name = body.get("model") if isinstance(body, dict) else None
        if not self._is_pulled(name):
            out.send_json(404, {"error": NOT_FOUND.format(name)})
            return
        info = {"general.architecture": "llama", "llama.context_length": self.trained_context}
        out.send_json(200, {"details": {"family": "llama"}, "model_info": info})

    def _chat(self, out: _Handler, body: Any, record: RecordedRequest) -> None:
        with self._lock:
            behaviour = record.behaviour = self._script.popleft() if self._script else "ok"
        name, _, arg = behaviour.partition(":")
        if name == "timeout":
            self._stop.wait(float(arg) if arg else 5.0)
        if name == "drop":
            out.close_connection = True
            return
        if name.startswith(("500", "503")):
            out.send_json(int(name), {"error": f"fake ollama: {name}"})
            return
        if name == "429":
            out.send_json(429, {"error": "too many requests"}, {"retry-after": arg or "1"})
            return
        if name == "schema":  # valid JSON, not Ollama's shape
            out.send_json(200, {"model": "x", "message": "not an object", "done": True})
            return
        if name == "malformed":
            out.send_response(200)
            out.send_header("content-type", "application/json")
            out.end_headers()
            out.wfile.write(b'this is not {"json"')
            return
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            out.send_json(400, {"error": "invalid request: messages required"})
            return
        if not self._is_pulled(body.get("model")):
            out.send_json(404, {"error": NOT_FOUND.format(body.get("model"))})
            return
        self._answer(out, body, name, record)

    def _answer(self, out: _Handler, body: dict[str, Any], name: str, record: Any) -> None:
        options = body.get("options") or {}
        prompt = " ".join(str(m.get("content", "")) for m in body["messages"])
        words = prompt.split()
        num_ctx = int(options.get("num_ctx") or self.default_num_ctx)
        read = words[-num_ctx:]  # silently cut, as Ollama does: the start is lost
        with self._lock:
            self.seen.append(" ".join(read))
        text, reason = self._limit(self._answer_for(" ".join(read)), options)
        record.input_tokens, record.output_tokens = len(read), len(text.split())
        final = {
            "model": body["model"], "created_at": "2026-01-01T00:00:00Z",
            "message": {"role": "assistant", "content": "" if body.get("stream", True) else text},
            "done": True, "done_reason": reason, "total_duration": 1000,
            "load_duration": 10, "prompt_eval_count": len(read), "prompt_eval_duration": 100,
            "eval_count": record.output_tokens, "eval_duration": 500,
        }  # fmt: skip
        if not body.get("stream", True):
            out.send_json(200, final)
            return
        pieces = [w + " " for w in text.split(" ")[:-1]] + [text.split(" ")[-1]]
        lines: list[Any] = [
            {"model": body["model"], "created_at": "2026-01-01T00:00:00Z",
             "message": {"role": "assistant", "content": piece}, "done": False}
            for piece in pieces if piece
        ]  # fmt: skip
        if name == "stream_error":
            lines = [*lines[:2], {"error": "an error was encountered while running the model"}]
        elif name != "no_done":
            lines.append(final)
        out.send_lines(lines, self.chunk_delay_s)

    def _answer_for(self, prompt: str) -> str:
        if callable(self.answer):
            return self.answer(prompt)
        if self.answer is not None:
            return self.answer
        return f"Read {len(prompt.split())} tokens starting with {prompt.split()[:1]}."

    @staticmethod
    def _limit(text: str, options: dict[str, Any]) -> tuple[str, str]:
        for stop in options.get("stop") or []:
            if stop and stop in text:
                return text[: text.index(stop)], "stop"
        limit = options.get("num_predict")
        if isinstance(limit, int) and 0 <= limit < len(text.split()):
            return " ".join(text.split()[:limit]), "length"
        return text, "stop"


def ollama_model_config(srv: OllamaServer | None = None, **overrides: Any) -> ModelConfig:
    """A ModelConfig for the ``ollama`` backend pointing at ``srv`` (model ``fake-llama``)."""
    fields: dict[str, Any] = {
        "name": "fake-ollama",
        "provider": "ollama",
        "model_id": "fake-llama",
        "base_url": srv.url if srv is not None else None,
        "timeout_s": 5.0,
        "max_tokens": 128,
    }
    fields.update(overrides)
    return ModelConfig(**fields)
