"""Local servers that speak the providers' documented *batch* wire formats over real HTTP.

Each is a stdlib ``ThreadingHTTPServer`` on ``127.0.0.1`` (port 0) in a background thread, so the
official SDKs (``client.files.create``, ``client.batches.create``,
``client.messages.batches.create``, ``.results``) are driven end to end, never patched:

- :class:`OpenAIBatchServer` (``srv.url`` ends in ``/v1``): ``POST /v1/files`` (multipart form
  data, ``purpose=batch``), ``GET /v1/files/{id}``, ``GET /v1/files/{id}/content``,
  ``POST /v1/batches``, ``GET /v1/batches/{id}``, ``POST /v1/batches/{id}/cancel``. A batch goes
  ``validating`` → ``in_progress`` → ``completed`` (or ``expired``, or ``cancelling`` →
  ``cancelled``, or ``failed`` when its input file does not validate), with ``request_counts``
  (total, completed, failed); answers go to its output file and per-request errors to its error
  file, JSONL lines ``{id, custom_id, response: {status_code, request_id, body}, error}``
  (a request never run has ``response: null`` and ``error.code`` ``batch_expired`` or
  ``batch_cancelled``).
- :class:`AnthropicBatchServer` (``srv.url`` is the bare origin): ``POST /v1/messages/batches``,
  ``GET /v1/messages/batches/{id}`` (``processing_status`` ``in_progress`` → ``canceling`` →
  ``ended``, ``request_counts`` processing / succeeded / errored / canceled / expired,
  ``results_url`` once ended), ``GET /v1/messages/batches/{id}/results`` (JSONL, one line per
  request in no particular order: ``succeeded`` with the message, ``errored`` with the error,
  ``canceled``, ``expired``) and ``POST /v1/messages/batches/{id}/cancel``.

Per test: ``srv.answer`` (prompt → the model's text), ``srv.fail`` (``custom_id`` → ``(HTTP
status, error type, message)``: that request errors), ``srv.delay_s`` (a batch ends that many
seconds after it was created, seen at the next poll), ``srv.expire`` (it ends *expired* instead
of completed) with ``srv.run_before_end`` (how many of its requests, in input order, ran before
it expired or was cancelled: partial results; None runs none). The knobs are read when a batch
is created, except ``srv.leak_key``: while set, every request is answered with a 500 whose
message echoes the key presented, bare (the secrets tests). ``srv.created`` lists every batch
created, with its requests as the server received them.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

from tests.support.fake_providers import count_tokens
from tests.support.http_fake import HTTPFake, QuietHandler, QuietServer

Answer = Callable[[str], str]
Failure = tuple[int, str, str]  # HTTP status, the provider's error type, its message
CUSTOM_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass
class Response:
    status: int = 200
    body: Any = None
    raw: bytes | None = None
    content_type: str = "application/json"


@dataclass
class Seen:
    """One HTTP request as the server received it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class BatchState:
    """One batch as the server holds it."""

    id: str
    requests: list[dict[str, Any]]  # each: custom_id and the request's params (body)
    created: float
    delay_s: float
    expire: bool
    run_before_end: int | None
    fail: dict[str, Failure]
    extra: dict[str, Any] = field(default_factory=dict)
    cancel_at: float | None = None
    ended_at: float | None = None
    outcomes: dict[str, tuple[str, Any]] = field(default_factory=dict)
    invalid: list[str] = field(default_factory=list)

    @property
    def custom_ids(self) -> list[str]:
        return [r["custom_id"] for r in self.requests]


def rfc3339(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def default_answer(prompt: str) -> str:
    return f"Here is what I found about the question: {prompt[:80]}"


class _Handler(QuietHandler):
    server: QuietServer[_BatchServer]

    def read_body(self, raw: bytes) -> bytes:
        return raw  # the fake parses it per route (JSON, multipart form data)

    def respond(self, method: str, headers: dict[str, str], body: Any) -> None:
        reply = self.server.fake.handle(method, self.path.split("?")[0], headers, body)
        payload = reply.raw if reply.raw is not None else json.dumps(reply.body).encode()
        self.send_response(reply.status)
        self.send_header("content-type", reply.content_type)
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class _BatchServer(HTTPFake):
    """Knobs and records shared by both servers (lifecycle: HTTPFake)."""

    handler = _Handler

    def __init__(self, answer: Answer | None = None, *, delay_s: float = 0.0) -> None:
        super().__init__()
        self.answer: Answer = answer or default_answer
        self.delay_s = delay_s
        self.expire = False
        self.run_before_end: int | None = None
        self.fail: dict[str, Failure] = {}
        self.leak_key = False
        self.seen: list[Seen] = []
        self.batches: dict[str, BatchState] = {}
        self.created: list[BatchState] = []
        self.lock = threading.RLock()

    def requests_to(self, method: str, pattern: str) -> list[Seen]:
        """The requests received whose path matches ``pattern`` (a regular expression)."""
        with self.lock:
            return [s for s in self.seen if s.method == method and re.fullmatch(pattern, s.path)]

    def handle(self, method: str, path: str, headers: dict[str, str], raw: bytes) -> Response:
        with self.lock:
            self.seen.append(Seen(method, path, headers, raw, time.monotonic()))
            if not self.authorized(headers):
                return self.error(401, "authentication_error", "invalid x-api-key")
            if self.leak_key:  # the worst a provider can do: echo the key in an error body
                bearer = headers.get("authorization", "").removeprefix("Bearer ")
                presented = headers.get("x-api-key") or bearer
                return self.error(500, "api_error", f"internal error for key {presented}")
            return self.route(method, path, headers, raw)

    def new_batch(self, batch_id: str, requests: list[dict[str, Any]]) -> BatchState:
        state = BatchState(
            batch_id,
            requests,
            time.time(),
            self.delay_s,
            self.expire,
            self.run_before_end,
            dict(self.fail),
        )
        self.batches[batch_id] = state
        self.created.append(state)
        return state

    def advance(self, state: BatchState) -> None:
        """End the batch once its time came (or a cancel was asked): decide every request."""
        if state.ended_at is not None or state.invalid:
            return
        now = time.time()
        due = now - state.created >= state.delay_s
        if state.cancel_at is None and not due:
            return
        cut = state.cancel_at is not None or state.expire
        run = (
            len(state.requests) if not cut else min(state.run_before_end or 0, len(state.requests))
        )
        for i, request in enumerate(state.requests):
            custom_id = request["custom_id"]
            if i >= run:
                state.outcomes[custom_id] = ("cancelled" if state.cancel_at else "expired", None)
            elif custom_id in state.fail:
                state.outcomes[custom_id] = ("errored", state.fail[custom_id])
            else:
                state.outcomes[custom_id] = ("succeeded", self.complete(request["params"]))
        state.ended_at = now
        self.ended(state)

    # provider specifics
    def authorized(self, headers: dict[str, str]) -> bool:
        raise NotImplementedError

    def route(self, method: str, path: str, headers: dict[str, str], raw: bytes) -> Response:
        raise NotImplementedError

    def error(self, status: int, etype: str, message: str) -> Response:
        raise NotImplementedError

    def complete(self, params: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def ended(self, state: BatchState) -> None:
        pass


class OpenAIBatchServer(_BatchServer):
    """OpenAI's Files and Batch APIs (``/v1/chat/completions`` requests)."""

    url_suffix = "/v1"
    endpoints = ("/v1/chat/completions",)

    def __init__(self, answer: Answer | None = None, *, delay_s: float = 0.0) -> None:
        super().__init__(answer, delay_s=delay_s)
        self.files: dict[str, dict[str, Any]] = {}

    def authorized(self, headers: dict[str, str]) -> bool:
        return headers.get("authorization", "").startswith("Bearer ") and len(
            headers["authorization"]
        ) > len("Bearer ")

    def error(self, status: int, etype: str, message: str, code: str | None = None) -> Response:
        return Response(
            status, {"error": {"message": message, "type": etype, "param": None, "code": code}}
        )

    def route(self, method: str, path: str, headers: dict[str, str], raw: bytes) -> Response:
        if method == "POST" and path == "/v1/files":
            return self.upload(headers, raw)
        found = re.fullmatch(r"/v1/files/([^/]+)(/content)?", path)
        if method == "GET" and found:
            file = self.files.get(found.group(1))
            if file is None:
                return self.error(404, "invalid_request_error", f"No such File object: {path}")
            if found.group(2):
                return Response(raw=file["content"], content_type="application/octet-stream")
            return Response(body=file["object"])
        if method == "POST" and path == "/v1/batches":
            return self.create(raw)
        found = re.fullmatch(r"/v1/batches/([^/]+)(/cancel)?", path)
        if found:
            state = self.batches.get(found.group(1))
            if state is None:
                return self.error(404, "invalid_request_error", f"No batch found: {path}")
            if method == "POST" and found.group(2):
                return self.cancel(state)
            if method == "GET" and not found.group(2):
                self.advance(state)
                return Response(body=self.batch_object(state))
        return self.error(404, "invalid_request_error", f"Unknown request URL: {method} {path}")

    def upload(self, headers: dict[str, str], raw: bytes) -> Response:
        kind = headers.get("content-type", "")
        if not kind.startswith("multipart/form-data"):
            return self.error(400, "invalid_request_error", "expected multipart/form-data")
        message = BytesParser(policy=HTTP).parsebytes(
            f"content-type: {kind}\r\n\r\n".encode() + raw
        )
        fields: dict[str, Any] = {}
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            fields[str(name)] = (part.get_filename(), part.get_payload(decode=True))
        purpose = (fields.get("purpose") or (None, b""))[1].decode()
        if "file" not in fields or purpose != "batch":
            return self.error(400, "invalid_request_error", "a file with purpose 'batch' is needed")
        filename, content = fields["file"]
        return Response(body=self.store_file(filename or "upload.jsonl", content, "batch"))

    def store_file(self, filename: str, content: bytes, purpose: str) -> dict[str, Any]:
        file_id = f"file-{uuid.uuid4().hex[:24]}"
        obj = {
            "id": file_id,
            "object": "file",
            "bytes": len(content),
            "created_at": int(time.time()),
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
            "status_details": None,
        }
        self.files[file_id] = {"object": obj, "content": content}
        return obj

    def create(self, raw: bytes) -> Response:
        try:
            body = json.loads(raw)
        except ValueError:
            return self.error(400, "invalid_request_error", "body is not JSON")
        file = self.files.get(body.get("input_file_id", ""))
        if file is None or file["object"]["purpose"] != "batch":
            return self.error(400, "invalid_request_error", "input_file_id: no batch file")
        endpoint = body.get("endpoint")
        if endpoint not in self.endpoints:
            return self.error(400, "invalid_request_error", f"endpoint {endpoint!r} unsupported")
        if body.get("completion_window") != "24h":
            return self.error(400, "invalid_request_error", "completion_window must be 24h")
        requests, invalid = [], []
        ids: set[str] = set()
        for number, line in enumerate(file["content"].decode().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                invalid.append(f"line {number}: not JSON")
                continue
            custom_id = entry.get("custom_id")
            if not isinstance(custom_id, str) or custom_id in ids:
                invalid.append(f"line {number}: custom_id missing or repeated")
            elif entry.get("method") != "POST" or entry.get("url") != endpoint:
                invalid.append(f"line {number}: method/url must be POST {endpoint}")
            elif not isinstance(entry.get("body"), dict) or "model" not in entry["body"]:
                invalid.append(f"line {number}: body.model is required")
            else:
                ids.add(custom_id)
                requests.append({"custom_id": custom_id, "params": entry["body"]})
        state = self.new_batch(f"batch_{uuid.uuid4().hex[:24]}", requests)
        state.invalid = invalid
        state.extra = {
            "endpoint": endpoint,
            "input_file_id": body["input_file_id"],
            "metadata": body.get("metadata"),
        }
        return Response(body=self.batch_object(state, first=True))

    def cancel(self, state: BatchState) -> Response:
        if state.ended_at is not None or state.invalid:
            return self.error(409, "invalid_request_error", "the batch has ended; cannot cancel")
        state.cancel_at = time.time()
        return Response(body=self.batch_object(state))

    def complete(self, params: dict[str, Any]) -> dict[str, Any]:
        messages = params.get("messages") or []
        users = [m for m in messages if m.get("role") == "user"]
        text = self.answer(_text(users[-1].get("content")) if users else "")
        prompt_tokens = count_tokens("".join(_text(m.get("content")) for m in messages))
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": count_tokens(text)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:20]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": params.get("model", ""),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": usage,
        }

    def ended(self, state: BatchState) -> None:
        out, err = [], []
        for custom_id in state.custom_ids:
            kind, value = state.outcomes[custom_id]
            line: dict[str, Any] = {
                "id": f"batch_req_{uuid.uuid4().hex[:20]}",
                "custom_id": custom_id,
                "response": None,
                "error": None,
            }
            if kind == "succeeded":
                line["response"] = {
                    "status_code": 200,
                    "request_id": uuid.uuid4().hex,
                    "body": value,
                }
                out.append(line)
            elif kind == "errored":
                status, etype, message = value
                line["response"] = {
                    "status_code": status,
                    "request_id": uuid.uuid4().hex,
                    "body": {"error": {"message": message, "type": etype, "param": None,
                                       "code": None}},
                }  # fmt: skip
                err.append(line)
            else:
                code = "batch_cancelled" if kind == "cancelled" else "batch_expired"
                line["error"] = {
                    "code": code,
                    "message": (
                        "This request was not executed because the batch was cancelled."
                        if kind == "cancelled"
                        else "This request could not be executed before the completion window "
                        "expired."
                    ),
                }
                err.append(line)
        for name, lines in (("output_file_id", out), ("error_file_id", err)):
            if lines:
                content = "".join(json.dumps(line) + "\n" for line in lines).encode()
                state.extra[name] = self.store_file(f"{state.id}_{name}.jsonl", content,
                                                    "batch_output")["id"]  # fmt: skip

    def batch_object(self, state: BatchState, first: bool = False) -> dict[str, Any]:
        created = int(state.created)
        status = "validating" if first else "in_progress"
        counts = {"total": len(state.requests), "completed": 0, "failed": 0}
        stamps: dict[str, int | None] = dict.fromkeys(
            ("in_progress_at", "finalizing_at", "completed_at", "failed_at", "expired_at",
             "cancelling_at", "cancelled_at"))  # fmt: skip
        if state.invalid and not first:
            status, stamps["failed_at"] = "failed", created
        elif not first:
            stamps["in_progress_at"] = created
        if state.cancel_at is not None:
            stamps["cancelling_at"] = int(state.cancel_at)
            status = "cancelling"
        if state.ended_at is not None and not state.invalid:
            kinds = [k for k, _ in state.outcomes.values()]
            counts["completed"] = kinds.count("succeeded")
            counts["failed"] = len(kinds) - counts["completed"]
            ended = int(state.ended_at)
            stamps["finalizing_at"] = ended
            if state.cancel_at is not None:
                status, stamps["cancelled_at"] = "cancelled", ended
            elif state.expire:
                status, stamps["expired_at"] = "expired", ended
            else:
                status, stamps["completed_at"] = "completed", ended
        errors = None
        if state.invalid and not first:
            errors = {
                "object": "list",
                "data": [{"code": "invalid_request", "message": m, "param": None, "line": None}
                         for m in state.invalid],
            }  # fmt: skip
        return {
            "id": state.id,
            "object": "batch",
            "endpoint": state.extra.get("endpoint"),
            "errors": errors,
            "input_file_id": state.extra.get("input_file_id"),
            "completion_window": "24h",
            "status": status,
            "output_file_id": state.extra.get("output_file_id"),
            "error_file_id": state.extra.get("error_file_id"),
            "created_at": created,
            "expires_at": created + 86400,
            **stamps,
            "request_counts": counts,
            "metadata": state.extra.get("metadata"),
        }


class AnthropicBatchServer(_BatchServer):
    """Anthropic's Message Batches API."""

    def authorized(self, headers: dict[str, str]) -> bool:
        bearer = headers.get("authorization", "").removeprefix("Bearer ").strip()
        return bool(headers.get("x-api-key") or bearer)

    def error(self, status: int, etype: str, message: str) -> Response:
        return Response(
            status,
            {"type": "error", "error": {"type": etype, "message": message},
             "request_id": f"req_{uuid.uuid4().hex[:16]}"},
        )  # fmt: skip

    def route(self, method: str, path: str, headers: dict[str, str], raw: bytes) -> Response:
        if method == "POST" and path == "/v1/messages/batches":
            return self.create(raw)
        found = re.fullmatch(r"/v1/messages/batches/([^/]+)(/results|/cancel)?", path)
        if found:
            state = self.batches.get(found.group(1))
            if state is None:
                return self.error(404, "not_found_error", f"no message batch {found.group(1)}")
            tail = found.group(2)
            if method == "GET" and tail is None:
                self.advance(state)
                return Response(body=self.batch_object(state))
            if method == "GET" and tail == "/results":
                self.advance(state)
                if state.ended_at is None:
                    return self.error(404, "not_found_error", "results are not available yet")
                return Response(raw=self.results(state), content_type="application/binary")
            if method == "POST" and tail == "/cancel":
                if state.ended_at is None:
                    state.cancel_at = time.time()
                return Response(body=self.batch_object(state))
        return self.error(404, "not_found_error", f"no route {method} {path}")

    def create(self, raw: bytes) -> Response:
        try:
            body = json.loads(raw)
        except ValueError:
            return self.error(400, "invalid_request_error", "body is not JSON")
        requests = body.get("requests")
        if not isinstance(requests, list) or not requests:
            return self.error(400, "invalid_request_error", "requests: a non-empty list")
        ids: set[str] = set()
        for i, request in enumerate(requests):
            custom_id = request.get("custom_id") if isinstance(request, dict) else None
            if not isinstance(custom_id, str) or not CUSTOM_ID.match(custom_id):
                return self.error(400, "invalid_request_error", f"requests.{i}.custom_id: invalid")
            if custom_id in ids:
                return self.error(400, "invalid_request_error", f"duplicate custom_id {custom_id}")
            ids.add(custom_id)
            params = request.get("params")
            if not isinstance(params, dict) or not all(
                k in params for k in ("model", "max_tokens", "messages")
            ):
                return self.error(
                    400, "invalid_request_error",
                    f"requests.{i}.params: model, max_tokens and messages are required",
                )  # fmt: skip
        state = self.new_batch(f"msgbatch_{uuid.uuid4().hex[:24]}", requests)
        return Response(body=self.batch_object(state))

    def complete(self, params: dict[str, Any]) -> dict[str, Any]:
        messages = params.get("messages") or []
        users = [m for m in messages if m.get("role") == "user"]
        answer = self.answer(_text(users[-1].get("content")) if users else "")
        if messages and messages[-1].get("role") == "assistant":  # prefill: continue after it
            prefill = _text(messages[-1].get("content"))
            answer = answer[len(prefill) :] if answer.startswith(prefill) else answer
        prompt = _text(params.get("system")) + "".join(_text(m.get("content")) for m in messages)
        return {
            "id": f"msg_{uuid.uuid4().hex[:24]}",
            "type": "message",
            "role": "assistant",
            "model": params.get("model", ""),
            "content": [{"type": "text", "text": answer}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": count_tokens(prompt), "output_tokens": count_tokens(answer)},
        }

    def results(self, state: BatchState) -> bytes:
        lines = []
        for custom_id in reversed(state.custom_ids):  # the documented order: none
            kind, value = state.outcomes[custom_id]
            if kind == "succeeded":
                result: dict[str, Any] = {"type": "succeeded", "message": value}
            elif kind == "errored":
                _, etype, message = value
                result = {
                    "type": "errored",
                    "error": {"type": "error", "error": {"type": etype, "message": message}},
                }
            else:
                result = {"type": "canceled" if kind == "cancelled" else "expired"}  # fmt: skip
            lines.append(json.dumps({"custom_id": custom_id, "result": result}))
        return ("\n".join(lines) + "\n").encode()

    def batch_object(self, state: BatchState) -> dict[str, Any]:
        counts = dict.fromkeys(("processing", "succeeded", "errored", "canceled", "expired"), 0)
        status = "in_progress"
        if state.ended_at is None:
            counts["processing"] = len(state.requests)
            if state.cancel_at is not None:
                status = "canceling"
        else:
            status = "ended"
            for kind, _ in state.outcomes.values():
                counts[{"cancelled": "canceled"}.get(kind, kind)] += 1
        return {
            "id": state.id,
            "type": "message_batch",
            "processing_status": status,
            "request_counts": counts,
            "ended_at": rfc3339(state.ended_at) if state.ended_at else None,
            "created_at": rfc3339(state.created),
            "expires_at": rfc3339(state.created + 86400),
            "archived_at": None,
            "cancel_initiated_at": rfc3339(state.cancel_at) if state.cancel_at else None,
            "results_url": (
                f"{self.origin}/v1/messages/batches/{state.id}/results"
                if state.ended_at is not None
                else None
            ),
        }
