"""Local fake LLM providers that speak the providers' documented wire formats over real HTTP.

Two servers, each a stdlib ``ThreadingHTTPServer`` on ``127.0.0.1`` (port 0) in a background
thread, so the official SDKs can be driven end to end without a network:

- :class:`OpenAIServer`: ``POST /v1/chat/completions`` (JSON or SSE ``data: {...}`` chunks, a final
  usage chunk when ``stream_options.include_usage`` is set, then ``data: [DONE]``) and
  ``GET /v1/models``. ``srv.url`` ends in ``/v1`` (what vLLM, Ollama and OpenAI clients expect).
- :class:`AnthropicServer`: ``POST /v1/messages`` (JSON or SSE events ``message_start``,
  ``content_block_start``, ``ping``, ``content_block_delta``, ``content_block_stop``,
  ``message_delta``, ``message_stop``) and ``GET /v1/models``. ``srv.url`` is the bare origin.

Each completion request consumes one behaviour of the server's script (``srv.script([...])``);
an empty script answers ``ok``. Behaviours:

=====================  ===========================================================================
``ok``                 200, the answer (``srv.answer``), usage computed from text lengths
``429`` / ``429:N``    429 with ``retry-after: N`` (default 1)
``429ms:N``            429 with only ``retry-after-ms: N``
``429date:N``          429 with ``retry-after`` as an HTTP-date N seconds ahead
``500`` / ``503``      server error
``529`` / ``overloaded``  529 with an ``overloaded_error`` body (Anthropic's documented shape)
``timeout[:S]``        sleeps S seconds (default ``srv.timeout_sleep``) before answering
``malformed``          200, ``application/json`` content type, a body that is not JSON
``schema``             200, valid JSON that does not follow the schema (no content, no usage)
``auth`` / ``forbidden``  401 / 403 (the auth error echoes the presented key, unmasked)
``context``            400 "context too long" in the provider's words
``refusal``            OpenAI: ``message.refusal`` set; Anthropic: ``stop_reason: "refusal"``
``stream_overloaded``  streams, then an SSE ``error`` event with ``overloaded_error`` (Anthropic)
``malformed_stream``   streams, then a ``data:`` line that is not JSON (OpenAI)
``drop``               closes the connection without any answer
=====================  ===========================================================================

Every request is recorded (:class:`RecordedRequest`: method, path, lower-cased headers, parsed
JSON body, monotonic time, tokens) so tests can assert on wire fields and on rates:
``srv.max_requests_in_window(60)`` is the most completion requests seen in any rolling window.

    with OpenAIServer() as srv:
        srv.script(["429:2", "ok"])
        model = openai_model_config(srv)
        ...
        assert srv.calls[0].body["max_tokens"] == 64
"""

from __future__ import annotations

import email.utils
import json
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from tests.support.http_fake import HTTPFake, QuietHandler, QuietServer
from tierflow.core.config import ModelConfig

Answer = str | Callable[[str], str] | None


def count_tokens(text: str) -> int:
    """The servers' token count: about four characters a token, at least one."""
    return max(1, (len(text) + 3) // 4)


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    at: float
    behaviour: str = ""
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass
class Reply:
    """What a handler sends: a JSON/text body, an SSE event list, or nothing (drop)."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    raw: str | None = None
    events: list[tuple[str | None, str]] | None = None
    drop: bool = False


class _Handler(QuietHandler):
    server: QuietServer[_FakeServer]

    def non_json_body(self, raw: bytes) -> Any:
        return raw.decode("utf-8", "replace")

    def respond(self, method: str, headers: dict[str, str], body: Any) -> None:
        self._send(self.server.fake.handle(method, self.path, headers, body))

    def _send(self, reply: Reply) -> None:
        if reply.drop:
            self.close_connection = True
            return
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        if reply.events is not None:
            self.send_header("content-type", "text/event-stream")
            self.send_header("cache-control", "no-cache")
            self.end_headers()
            for event, data in reply.events:
                frame = (f"event: {event}\n" if event else "") + f"data: {data}\n\n"
                self.wfile.write(frame.encode())
                self.wfile.flush()
            return
        payload = (reply.raw if reply.raw is not None else json.dumps(reply.body)).encode()
        if not any(k.lower() == "content-type" for k in reply.headers):
            self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


_HTTPServer = QuietServer  # the name tests that bind a fixed port use (test_automode)


class _FakeServer(HTTPFake):
    """Shared machinery: script, recording and rolling-window counts (lifecycle: HTTPFake)."""

    handler = _Handler
    completion_path = ""
    models_path = "/v1/models"

    def __init__(self, answer: Answer = None, *, timeout_sleep: float = 5.0) -> None:
        super().__init__()
        self.answer: Answer = answer
        self.timeout_sleep = timeout_sleep
        self.models: list[str] = ["fake-model"]
        self.models_ok = True  # False: GET /models answers 503
        self.leak_key = False  # True: every error message echoes the presented key
        self.requests: list[RecordedRequest] = []
        self._script: deque[str] = deque()
        self._lock = threading.Lock()

    # script and records
    def script(self, behaviours: Iterable[str]) -> None:
        with self._lock:
            self._script.extend(behaviours)

    def _next(self) -> str:
        with self._lock:
            return self._script.popleft() if self._script else "ok"

    @property
    def calls(self) -> list[RecordedRequest]:
        """Completion requests only (model-list probes are recorded in ``requests`` too)."""
        with self._lock:
            return [r for r in self.requests if r.path.split("?")[0] == self.completion_path]

    @property
    def request_count(self) -> int:
        return len(self.calls)

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self._script.clear()

    def max_requests_in_window(self, window_s: float = 60.0) -> int:
        return self._max_in_window(window_s, lambda r: 1)

    def max_tokens_in_window(self, window_s: float = 60.0, kind: str = "total") -> int:
        def weight(r: RecordedRequest) -> int:
            return {"input": r.input_tokens, "output": r.output_tokens}.get(
                kind, r.input_tokens + r.output_tokens
            )

        return self._max_in_window(window_s, weight)

    def _max_in_window(self, window_s: float, weight: Callable[[RecordedRequest], int]) -> int:
        calls = sorted(self.calls, key=lambda r: r.at)
        best = total = start = 0
        for call in calls:
            total += weight(call)
            while call.at - calls[start].at >= window_s:
                total -= weight(calls[start])
                start += 1
            best = max(best, total)
        return best

    # request handling
    def answer_for(self, prompt: str) -> str:
        if callable(self.answer):
            return self.answer(prompt)
        if self.answer is not None:
            return self.answer
        return f"This is a fake answer about: {prompt[:60]}."

    def handle(self, method: str, path: str, headers: dict[str, str], body: Any) -> Reply:
        record = RecordedRequest(method, path, headers, body, time.monotonic())
        with self._lock:
            self.requests.append(record)
        bare = path.split("?")[0]
        if method == "GET" and bare == self.models_path:
            if not self.models_ok:
                return self.error(503, "server_error", "model list unavailable", headers)
            data = [
                {"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in self.models
            ]
            return Reply(body={"object": "list", "data": data})
        if method != "POST" or bare != self.completion_path:
            return self.error(404, "not_found_error", f"no route {method} {bare}", headers)
        behaviour = record.behaviour = self._next()
        name, _, arg = behaviour.partition(":")
        if name == "timeout":
            self._stop.wait(float(arg) if arg else self.timeout_sleep)
            name = "ok"
        if name == "drop":
            return Reply(drop=True)
        if name.startswith("429"):
            reply = self.error(429, "rate_limit_error", "rate limit exceeded", headers)
            seconds = float(arg) if arg else 1.0
            if name == "429ms":
                reply.headers["retry-after-ms"] = str(int(seconds))
            elif name == "429date":
                reply.headers["retry-after"] = email.utils.formatdate(
                    time.time() + seconds, usegmt=True
                )
            else:
                reply.headers["retry-after"] = arg or "1"
            return reply
        simple = {
            "500": (500, "api_error", "internal server error"),
            "503": (503, "api_error", "service unavailable"),
            "529": (529, "overloaded_error", "Overloaded"),
            "overloaded": (529, "overloaded_error", "Overloaded"),
            "auth": (401, "authentication_error", "invalid x-api-key"),
            "forbidden": (403, "permission_error", "not allowed"),
        }
        if name in simple:
            status, etype, message = simple[name]
            if name == "auth":
                message = f"Incorrect API key provided: {self.presented_key(headers)}"
            return self.error(status, etype, message, headers)
        if name == "context":
            return self.context_error(headers)
        if name == "malformed":
            return Reply(raw='this is not {"json"', headers={"content-type": "application/json"})
        if not isinstance(body, dict):
            return self.error(400, "invalid_request_error", "body must be a JSON object", headers)
        return self.complete(name, body, record)

    def error(self, status: int, etype: str, message: str, headers: dict[str, str]) -> Reply:
        if self.leak_key:
            message += f" (key {self.presented_key(headers)})"
        return Reply(status, self.error_body(etype, message))

    @staticmethod
    def _limit(text: str, stop: list[str], max_tokens: int | None) -> tuple[str, str]:
        """Cut ``text`` at the first stop sequence or at ``max_tokens``; say why it ended."""
        for s in stop:
            if s and s in text:
                return text[: text.index(s)], "stop_sequence"
        if max_tokens is not None and count_tokens(text) > max_tokens:
            return text[: max_tokens * 4], "length"
        return text, "end"

    # provider specifics
    def presented_key(self, headers: dict[str, str]) -> str:
        raise NotImplementedError

    def error_body(self, etype: str, message: str) -> Any:
        raise NotImplementedError

    def context_error(self, headers: dict[str, str]) -> Reply:
        raise NotImplementedError

    def complete(self, name: str, body: dict[str, Any], record: RecordedRequest) -> Reply:
        raise NotImplementedError


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _pieces(text: str) -> list[str]:
    """Word-sized stream deltas that concatenate back to ``text``."""
    return [p for p in re.findall(r"\S*\s*", text) if p] or [""]


class OpenAIServer(_FakeServer):
    """OpenAI Chat Completions wire format (as served by OpenAI, vLLM and Ollama's /v1)."""

    completion_path = "/v1/chat/completions"
    url_suffix = "/v1"

    def presented_key(self, headers: dict[str, str]) -> str:
        return headers.get("authorization", "").removeprefix("Bearer ").strip()

    def error_body(self, etype: str, message: str) -> Any:
        code = {
            "rate_limit_error": "rate_limit_exceeded",
            "authentication_error": "invalid_api_key",
        }
        return {
            "error": {"message": message, "type": etype, "param": None, "code": code.get(etype)}
        }

    def context_error(self, headers: dict[str, str]) -> Reply:
        message = (
            "This model's maximum context length is 8192 tokens. However, your messages "
            "resulted in 9000 tokens. Please reduce the length of the messages."
        )
        reply = self.error(400, "invalid_request_error", message, headers)
        reply.body["error"].update(param="messages", code="context_length_exceeded")
        return reply

    def complete(self, name: str, body: dict[str, Any], record: RecordedRequest) -> Reply:
        messages = body.get("messages") or []
        prompt_text = "".join(_text_of(m.get("content")) for m in messages)
        users = [m for m in messages if m.get("role") == "user"]
        prompt = _text_of(users[-1].get("content")) if users else ""
        stop = body.get("stop") or []
        stop = [stop] if isinstance(stop, str) else list(stop)
        text, why = self._limit(self.answer_for(prompt), stop, body.get("max_tokens"))
        finish = "length" if why == "length" else "stop"
        usage = {
            "prompt_tokens": count_tokens(prompt_text),
            "completion_tokens": count_tokens(text),
        }
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        record.input_tokens, record.output_tokens = (
            usage["prompt_tokens"],
            usage["completion_tokens"],
        )
        base = {"id": "chatcmpl-fake", "created": int(time.time()), "model": body.get("model", "")}
        if name == "schema":
            return Reply(body={"id": "chatcmpl-fake", "object": "chat.completion", "result": text})
        message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
        if name == "refusal":
            message.update(content=None, refusal="I can't help with that.")
        if not body.get("stream"):
            choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
            return Reply(
                body={**base, "object": "chat.completion", "choices": [choice], "usage": usage}
            )
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        chunk = {**base, "object": "chat.completion.chunk"}
        if include_usage:
            chunk["usage"] = None

        def event(delta: dict[str, Any], finish_reason: str | None = None) -> tuple[None, str]:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            return None, json.dumps({**chunk, "choices": [choice]})

        events: list[tuple[str | None, str]] = [event({"role": "assistant", "content": ""})]
        if name == "refusal":
            events.append(event({"refusal": message["refusal"]}))
        else:
            events += [event({"content": p}) for p in _pieces(text)]
        events.append(event({}, finish))
        if name == "malformed_stream":
            events.append((None, "{not json"))
        if include_usage:
            events.append((None, json.dumps({**chunk, "choices": [], "usage": usage})))
        events.append((None, "[DONE]"))
        return Reply(events=events)


class AnthropicServer(_FakeServer):
    """Anthropic Messages API wire format."""

    completion_path = "/v1/messages"

    def presented_key(self, headers: dict[str, str]) -> str:
        # The documented header is x-api-key; anthropic SDK 2.x sends Authorization: Bearer.
        bearer = headers.get("authorization", "").removeprefix("Bearer ").strip()
        return headers.get("x-api-key") or bearer

    def error_body(self, etype: str, message: str) -> Any:
        return {
            "type": "error",
            "error": {"type": etype, "message": message},
            "request_id": "req_fake",
        }

    def context_error(self, headers: dict[str, str]) -> Reply:
        return self.error(
            400,
            "invalid_request_error",
            "prompt is too long: 210000 tokens > 200000 maximum",
            headers,
        )

    def complete(self, name: str, body: dict[str, Any], record: RecordedRequest) -> Reply:
        messages = body.get("messages") or []
        system = _text_of(body.get("system"))
        prompt_text = system + "".join(_text_of(m.get("content")) for m in messages)
        users = [m for m in messages if m.get("role") == "user"]
        answer = self.answer_for(_text_of(users[-1].get("content")) if users else "")
        if messages and messages[-1].get("role") == "assistant":  # prefill: continue after it
            prefill = _text_of(messages[-1].get("content"))
            answer = answer[len(prefill) :] if answer.startswith(prefill) else answer
        text, why = self._limit(
            answer, list(body.get("stop_sequences") or []), body.get("max_tokens")
        )
        stop_reason = {"stop_sequence": "stop_sequence", "length": "max_tokens"}.get(
            why, "end_turn"
        )
        stop_sequence = next((s for s in body.get("stop_sequences") or [] if s in answer), None)
        if name == "refusal":
            text, stop_reason, stop_sequence = "", "refusal", None
        usage = {"input_tokens": count_tokens(prompt_text), "output_tokens": count_tokens(text)}
        record.input_tokens, record.output_tokens = usage["input_tokens"], usage["output_tokens"]
        message: dict[str, Any] = {
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "model": body.get("model", ""),
            "content": [{"type": "text", "text": text}] if text else [],
            "stop_reason": stop_reason if why != "stop_sequence" else "stop_sequence",
            "stop_sequence": stop_sequence if why == "stop_sequence" else None,
            "usage": usage,
        }
        headers = {"request-id": "req_fake"}
        if name == "schema":
            return Reply(
                body={"id": "msg_fake", "type": "message", "completion": text}, headers=headers
            )
        if not body.get("stream"):
            return Reply(body=message, headers=headers)
        start = {**message, "content": [], "stop_reason": None, "stop_sequence": None}
        start["usage"] = {"input_tokens": usage["input_tokens"], "output_tokens": 1}
        events: list[tuple[str | None, str]] = [
            ("message_start", json.dumps({"type": "message_start", "message": start})),
            (
                "content_block_start",
                json.dumps(
                    {
                        "type": "content_block_start",
                        "index": 0,
                        "content_block": {"type": "text", "text": ""},
                    }
                ),
            ),
            ("ping", json.dumps({"type": "ping"})),
        ]
        for piece in _pieces(text) if text else []:
            delta = {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": piece},
            }
            events.append(("content_block_delta", json.dumps(delta)))
        if name == "stream_overloaded":
            events.append(("error", json.dumps(self.error_body("overloaded_error", "Overloaded"))))
            return Reply(events=events, headers=headers)
        events.append(
            ("content_block_stop", json.dumps({"type": "content_block_stop", "index": 0}))
        )
        end = {"stop_reason": message["stop_reason"], "stop_sequence": message["stop_sequence"]}
        events.append(
            (
                "message_delta",
                json.dumps(
                    {
                        "type": "message_delta",
                        "delta": end,
                        "usage": {"output_tokens": usage["output_tokens"]},
                    }
                ),
            )
        )
        events.append(("message_stop", json.dumps({"type": "message_stop"})))
        return Reply(events=events, headers=headers)


def openai_model_config(srv: OpenAIServer | None = None, **overrides: Any) -> ModelConfig:
    """A ModelConfig for the OpenAI-compatible backend pointing at ``srv`` (provider ``vllm``)."""
    fields: dict[str, Any] = {
        "name": "fake-openai",
        "provider": "vllm",
        "model_id": "fake-model",
        "base_url": srv.url if srv is not None else None,
        "timeout_s": 5.0,
        "max_tokens": 128,
    }
    fields.update(overrides)
    return ModelConfig(**fields)


def anthropic_model_config(srv: AnthropicServer | None = None, **overrides: Any) -> ModelConfig:
    """A ModelConfig for the Anthropic backend pointing at ``srv``."""
    fields: dict[str, Any] = {
        "name": "fake-claude",
        "provider": "anthropic",
        "model_id": "claude-fake-1",
        "base_url": srv.url if srv is not None else None,
        "timeout_s": 5.0,
        "max_tokens": 128,
    }
    fields.update(overrides)
    return ModelConfig(**fields)
