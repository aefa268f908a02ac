"""``tierflow serve``: an OpenAI-compatible gateway and a jobs API in front of ``submit_job``.

Routes (every one but ``/openapi.json`` needs ``Authorization: Bearer tf_...``):

================================  ==============================================================
``POST /v1/chat/completions``     OpenAI chat completions, plain or SSE (``stream: true``)
``GET  /v1/models``               ``auto`` and ``tierflow/<action>`` for each configured action
``POST /v1/jobs``                 submit a job (the :class:`~schemas.jobs.JobRequest` fields)
``GET  /v1/jobs/{id}``            the job's :class:`~schemas.jobs.JobResult` now
``GET  /v1/jobs/{id}/wait``       the same once finished, waiting at most ``timeout`` seconds
``POST /v1/jobs/{id}/feedback``   ``{"correct": bool, "note": str}``: a label for the gate
``GET  /openapi.json``            the OpenAPI 3.1 document of all this (:mod:`.gateway_openapi`)
================================  ==============================================================

**Which action.** The model names it: ``tierflow/<action>``, any action ``submit_job`` accepts
(configured or not; ``/v1/models`` lists the configured ones); ``auto`` (or any model with an
``x-tierflow-action`` header) leaves it to the header, else ``unknown``. The answer's route
(the tiers tried, in order), tier, model, cost and quality come back in ``x-tierflow-*``
headers, with the job's id (``x-tierflow-cached``: ``exact`` or ``semantic`` for an answer
served from the cache; ``x-tierflow-overhead-ms``: the time that was not the model's, as
TensorZero and LiteLLM report it). ``"cache": false`` in a chat or job body skips the cache.

**Streaming never breaks.** A job can fall back after its first tier wrote half an answer (the
gate rejects it), so nothing is streamed until the job has *succeeded*: the gateway waits, then
writes the stored answer as chunks (OpenAI's format; usage in a last chunk when
``stream_options.include_usage``). A failed job is an OpenAI-style ``error`` event, then
``[DONE]``. The client sees one answer, the passed one, or an error, never a retracted one.

**Keys.** Each key belongs to a daemon (:mod:`tierflow.store.keys`, stored hashed); the daemon
goes into every job it submits (``metadata.daemon``, set here, never taken from the body), its
idempotency keys are its own (scoped by daemon), and it sees only its own jobs. No key, a wrong
one or a revoked one: 401. Keys are never logged (uvicorn's access log is off; nothing here
logs a header).

Blocking work (``submit_job``, waits, PostgreSQL) runs in threads under one limiter
(:data:`MAX_THREADS`), so hundreds of waiting requests never block the event loop; waiters
share the process's one Redis subscription (:mod:`router.waiter`).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from router.client import JobHandle, submit_job
from router.feedback import record_feedback
from schemas.jobs import ACTION_PATTERN, JobResult
from tierflow import store
from tierflow.app.dashboard import hosts_for
from tierflow.app.gateway_openapi import openapi_document
from tierflow.core.constants import TERMINAL_STATUSES
from tierflow.core.errors import (
    IdempotencyConflict,
    JobNotFound,
    JobValidationError,
    JobWaitTimeout,
)
from tierflow.core.settings import get_settings

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_PORT = 8788
MAX_THREADS = 256
AUTO_MODEL = "auto"
MODEL_PREFIX = "tierflow/"
ACTION_HEADER = "x-tierflow-action"
MAX_WAIT_S = 60.0  # the most one GET /v1/jobs/{id}/wait blocks
CHAT_WAIT_S = 300.0  # how long a chat completion waits for its job
ROLES = ("system", "developer", "user", "assistant", "tool")
# A daemon's idempotency key is stored as "<daemon>/<key>" (200 characters at most).
MAX_KEY_CHARS = 135
CHUNK_CHARS = 24  # characters per streamed chunk of a finished answer
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    409: "conflict_error",
    502: "job_failed",
    503: "service_unavailable",
    504: "timeout",
}


class BadRequest(Exception):
    """A request the gateway refuses: its status, message and the field it names."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code or ERROR_TYPES.get(status, "error")


def error_body(status: int, message: str, param: str | None = None, code: str = "") -> dict:
    """OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}``."""
    kind = ERROR_TYPES.get(status, "error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code or kind}}


def error_response(status: int, message: str, param: str | None = None, code: str = "") -> Response:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(error_body(status, message, param, code), status, headers=headers)


def field_of(message: str) -> str | None:
    """The field a validation message starts with (``prompt: ...``), or None."""
    head, sep, _ = message.partition(":")
    if sep and head and " " not in head.strip():
        return head.strip()
    return None


def presented_key(request: Request) -> str:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


# --- request bodies -----------------------------------------------------------------------------


def _content_text(content: Any, where: str) -> str:
    """A message's content as text: a string, or OpenAI's list of ``{"type": "text"}`` parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for i, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text":
                raise BadRequest(400, "only text content parts are supported", f"{where}[{i}]")
            text = part.get("text")
            if not isinstance(text, str):
                raise BadRequest(400, "a text part needs a string text", f"{where}[{i}].text")
            parts.append(text)
        return "".join(parts)
    raise BadRequest(400, "content must be a string or a list of text parts", where)


def parse_chat(body: Any) -> dict[str, Any]:
    """The parts of a chat request the gateway uses, validated (BadRequest names the field)."""
    if not isinstance(body, dict):
        raise BadRequest(400, "the body must be a JSON object", None)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest(400, "model is required (auto or tierflow/<action>)", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest(400, "messages must be a non-empty array", "messages")
    turns = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise BadRequest(400, "each message must be an object", f"messages[{i}]")
        role = message.get("role")
        if role not in ROLES:
            raise BadRequest(400, f"role must be one of {', '.join(ROLES)}", f"messages[{i}].role")
        turns.append(
            {
                "role": role,
                "content": _content_text(message.get("content"), f"messages[{i}].content"),
            }
        )
    users = [i for i, t in enumerate(turns) if t["role"] == "user"]
    if not users or not turns[users[-1]]["content"].strip():
        raise BadRequest(400, "messages need a user message with text", "messages")
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise BadRequest(400, "stream must be a boolean", "stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise BadRequest(400, "stream_options must be an object", "stream_options")
    include_usage = (options or {}).get("include_usage", False)
    if not isinstance(include_usage, bool):
        raise BadRequest(400, "include_usage must be a boolean", "stream_options.include_usage")
    cache = body.get("cache", True)
    if not isinstance(cache, bool):
        raise BadRequest(400, "cache must be a boolean", "cache")
    last = users[-1]
    context: dict[str, Any] = {}
    earlier = [t for i, t in enumerate(turns) if i != last]
    if earlier:
        context["conversation"] = earlier
    return {
        "model": model,
        "prompt": turns[last]["content"],
        "context": context,
        "stream": bool(stream),
        "include_usage": include_usage,
        "cache": cache,
    }


def action_for(model: str, header: str | None) -> str:
    """The job's action from the model name (``tierflow/<action>``) or the header.

    Any action name ``submit_job`` accepts (:data:`~schemas.jobs.ACTION_PATTERN`) is served,
    listed under ``routing.actions`` or not, as with ``submit_job`` (an unlisted action is
    planned by the default rules); a name it would refuse is a model that does not exist (404).
    """
    if model.startswith(MODEL_PREFIX):
        action = model[len(MODEL_PREFIX) :]
        if not re.fullmatch(ACTION_PATTERN, action):
            raise BadRequest(
                404,
                f"model {model!r} does not exist: tierflow/<action>, the action as submit_job "
                "takes it (lower case, digits, _); see GET /v1/models",
                "model",
                "model_not_found",
            )
        if header and header != action:
            raise BadRequest(
                400, f"{ACTION_HEADER} {header!r} contradicts model {model!r}", ACTION_HEADER
            )
        return action
    if model != AUTO_MODEL:
        raise BadRequest(
            404, f"model {model!r} does not exist; see GET /v1/models", "model", "model_not_found"
        )
    return header or "unknown"


def configured_actions() -> list[str]:
    routing = get_settings().llm.routing
    return sorted(set(routing.actions) | set(routing.action_tier_overrides))


# --- results ------------------------------------------------------------------------------------


def result_headers(result: JobResult, action: str) -> dict[str, str]:
    """The ``x-tierflow-*`` headers of a job's answer."""
    headers = {
        "x-tierflow-job-id": result.job_id,
        "x-tierflow-action": action,
        "x-tierflow-status": result.status,
        "x-tierflow-route": ",".join(a.tier for a in result.attempts) or "-",
        "x-tierflow-tier": result.tier or "-",
        "x-tierflow-model": result.model or "-",
        "x-tierflow-cost-usd": f"{result.cost_usd:.8f}",
        "x-tierflow-quality": "-" if result.quality is None else f"{result.quality:.4f}",
        "x-tierflow-cached": result.cached or "-",
        # submit to finish less the model calls (tierflow/store/timing.py)
        "x-tierflow-overhead-ms": "-"
        if result.overhead_ms is None
        else f"{result.overhead_ms:.1f}",
    }
    return headers


def completion_body(result: JobResult, model: str, created: int) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{result.job_id}",
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result.text or ""},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": usage_of(result),
        "system_fingerprint": None,
    }


def usage_of(result: JobResult) -> dict[str, int]:
    return {
        "prompt_tokens": result.input_tokens,
        "completion_tokens": result.output_tokens,
        "total_tokens": result.input_tokens + result.output_tokens,
    }


def sse(data: Any) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {text}\n\n".encode()


def stream_events(result: JobResult, model: str, created: int, include_usage: bool) -> list[bytes]:
    """The SSE events of a finished job: its answer as chunks, or one error; then ``[DONE]``."""
    if not result.ok:
        message = f"job {result.job_id} {result.status}: {result.error or 'no answer'}"
        return [sse(error_body(502, message, None, "job_failed")), sse("[DONE]")]
    base = {
        "id": f"chatcmpl-{result.job_id}",
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
    }

    def chunk(delta: dict[str, Any], finish: str | None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        body: dict[str, Any] = {**base, "choices": [choice]}
        if include_usage:
            body["usage"] = None
        return sse(body)

    text = result.text or ""
    events = [chunk({"role": "assistant", "content": ""}, None)]
    events += [
        chunk({"content": text[i : i + CHUNK_CHARS]}, None)
        for i in range(0, len(text), CHUNK_CHARS)
    ]
    events.append(chunk({}, "stop"))
    if include_usage:
        events.append(sse({**base, "choices": [], "usage": usage_of(result)}))
    events.append(sse("[DONE]"))
    return events


# --- the application ----------------------------------------------------------------------------


def create_app(
    *, allowed_hosts: list[str] | None = None, chat_wait_s: float = CHAT_WAIT_S
) -> Starlette:
    """The gateway application (see the module's docstring)."""
    limiter = anyio.CapacityLimiter(MAX_THREADS)

    async def blocking(fn: Callable[..., T], *args: Any) -> T:
        return await anyio.to_thread.run_sync(lambda: fn(*args), limiter=limiter)

    async def authorized(request: Request) -> str:
        key = presented_key(request)
        if not key:
            raise BadRequest(
                401, "an API key is required: Authorization: Bearer tf_...", None, "missing_api_key"
            )
        daemon = await blocking(store.daemon_for_key, key)
        if daemon is None:
            raise BadRequest(
                401, "the API key is not valid (unknown or revoked)", None, "invalid_api_key"
            )
        return daemon

    async def json_body(request: Request) -> Any:
        try:
            return json.loads(await request.body())
        except ValueError:
            raise BadRequest(400, "the body must be valid JSON", None) from None

    def guarded(handler: Callable[[Request, str], Any]) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            try:
                daemon = await authorized(request)
                response: Response = await handler(request, daemon)
                return response
            except BadRequest as exc:
                return error_response(exc.status, exc.message, exc.param, exc.code)
            except Exception as exc:  # the fleet's stores are down: say so, keep serving
                log.warning("gateway request failed: %s", type(exc).__name__, exc_info=True)
                return error_response(503, f"the fleet is unavailable: {type(exc).__name__}")

        return endpoint

    def own_job(job_id: str, daemon: str) -> None:
        """JobNotFound unless the job exists and was submitted by ``daemon``."""
        job = store.load_job(job_id)
        if job is None or (job.job_metadata or {}).get("daemon") != daemon:
            raise JobNotFound(job_id)

    def submit(daemon: str, fields: dict[str, Any]) -> JobHandle:
        metadata = fields.get("metadata")
        if metadata is not None and not isinstance(metadata, dict):
            raise JobValidationError("metadata: must be an object")
        key = fields.get("idempotency_key")
        if key is not None and not isinstance(key, str):
            raise JobValidationError("idempotency_key: must be a string")
        if key is not None and len(key) > MAX_KEY_CHARS:
            raise JobValidationError(f"idempotency_key: at most {MAX_KEY_CHARS} characters")
        return submit_job(
            **{
                **fields,
                "metadata": {**(metadata or {}), "daemon": daemon},
                "idempotency_key": None if key is None else f"{daemon}/{key}",
            }
        )

    def run_chat(daemon: str, action: str, chat: dict[str, Any]) -> JobResult:
        fields = {"prompt": chat["prompt"], "action_type": action, "context": chat["context"]}
        handle = submit(daemon, {**fields, "cache": chat["cache"]})
        return handle.wait(timeout=chat_wait_s)

    async def chat_completions(request: Request, daemon: str) -> Response:
        chat = parse_chat(await json_body(request))
        action = action_for(chat["model"], request.headers.get(ACTION_HEADER))
        created = int(time.time())
        try:
            result = await blocking(run_chat, daemon, action, chat)
        except JobValidationError as exc:
            raise BadRequest(400, str(exc), field_of(str(exc))) from None
        except JobWaitTimeout as exc:
            raise BadRequest(504, str(exc), None) from None
        headers = result_headers(result, action)
        if chat["stream"]:
            events = stream_events(result, chat["model"], created, chat["include_usage"])

            async def body() -> AsyncIterator[bytes]:
                for event in events:
                    yield event

            return StreamingResponse(
                body(),
                media_type="text/event-stream",
                headers={**headers, "Cache-Control": "no-cache"},
            )
        if not result.ok:
            message = f"job {result.job_id} {result.status}: {result.error or 'no answer'}"
            return JSONResponse(error_body(502, message, None, "job_failed"), 502, headers=headers)
        return JSONResponse(completion_body(result, chat["model"], created), headers=headers)

    async def models(request: Request, daemon: str) -> Response:
        names = [AUTO_MODEL] + [MODEL_PREFIX + a for a in await blocking(configured_actions)]
        data = [{"id": n, "object": "model", "created": 0, "owned_by": "tierflow"} for n in names]
        return JSONResponse({"object": "list", "data": data})

    async def create(request: Request, daemon: str) -> Response:
        body = await json_body(request)
        if not isinstance(body, dict):
            raise BadRequest(400, "the body must be a JSON object", None)
        unknown = sorted(set(body) - JOB_FIELDS)
        if unknown:
            raise BadRequest(400, f"{unknown[0]}: unknown field", unknown[0])
        if "prompt" not in body:
            raise BadRequest(400, "prompt: field required", "prompt")
        try:
            handle = await blocking(submit, daemon, body)
        except IdempotencyConflict as exc:
            # The stored key carries the daemon's scope; the client knows its own key.
            message = (
                f"idempotency_key: {body.get('idempotency_key')!r} is already bound to job "
                f"{exc.job_id}, which was submitted with a different request"
            )
            raise BadRequest(409, message, "idempotency_key", "idempotency_conflict") from None
        except JobValidationError as exc:
            raise BadRequest(400, str(exc), field_of(str(exc))) from None
        except TypeError as exc:
            raise BadRequest(400, f"invalid field type: {exc}", None) from None
        status = await blocking(store.job_status, handle.job_id)
        payload = {
            "job_id": handle.job_id,
            "created": handle.created,
            "sent": handle.sent,
            "note": handle.note,
            "status": status,
        }
        return JSONResponse(payload, 201 if handle.created else 200)

    def read_job(job_id: str, daemon: str) -> JobResult:
        own_job(job_id, daemon)
        found = store.job_result(job_id)
        if found is None:
            raise JobNotFound(job_id)
        return found

    def wait_job(job_id: str, daemon: str, timeout: float) -> JobResult:
        own_job(job_id, daemon)
        try:
            return JobHandle(job_id, created=False).wait(timeout=timeout)
        except JobWaitTimeout:
            return read_job(job_id, daemon)

    async def get_job(request: Request, daemon: str) -> Response:
        job_id = request.path_params["job_id"]
        try:
            result = await blocking(read_job, job_id, daemon)
        except JobNotFound:
            raise BadRequest(404, f"no job {job_id}", "job_id") from None
        return JSONResponse(result.model_dump(mode="json"))

    async def wait(request: Request, daemon: str) -> Response:
        job_id = request.path_params["job_id"]
        raw = request.query_params.get("timeout", "30")
        try:
            timeout = float(raw)
        except ValueError:
            timeout = -1.0
        if not 0 <= timeout <= MAX_WAIT_S:
            raise BadRequest(
                400, f"timeout must be a number of seconds from 0 to {MAX_WAIT_S:g}", "timeout"
            )
        try:
            result = await blocking(wait_job, job_id, daemon, timeout)
        except JobNotFound:
            raise BadRequest(404, f"no job {job_id}", "job_id") from None
        finished = result.status in TERMINAL_STATUSES
        return JSONResponse(result.model_dump(mode="json"), 200 if finished else 202)

    async def feedback(request: Request, daemon: str) -> Response:
        job_id = request.path_params["job_id"]
        body = await json_body(request)
        if not isinstance(body, dict):
            raise BadRequest(400, "the body must be a JSON object", None)
        unknown = sorted(set(body) - {"correct", "note"})
        if unknown:
            raise BadRequest(400, f"{unknown[0]}: unknown field", unknown[0])
        correct, note = body.get("correct"), body.get("note")
        if not isinstance(correct, bool):
            raise BadRequest(400, "correct: must be a boolean", "correct")
        if note is not None and (not isinstance(note, str) or len(note) > 2000 or "\x00" in note):
            raise BadRequest(400, "note: a string of at most 2000 characters", "note")

        def record() -> int:
            own_job(job_id, daemon)
            return record_feedback(job_id, correct, note)

        try:
            label = await blocking(record)
        except JobNotFound:
            raise BadRequest(404, f"no job {job_id}", "job_id") from None
        except JobValidationError as exc:
            raise BadRequest(409, str(exc), "job_id", "no_answer") from None
        return JSONResponse({"label_id": label, "job_id": job_id}, 201)

    async def openapi(request: Request) -> Response:
        return JSONResponse(openapi_document())

    hosts = allowed_hosts or hosts_for("127.0.0.1")
    return Starlette(
        routes=[
            Route("/v1/chat/completions", guarded(chat_completions), methods=["POST"]),
            Route("/v1/models", guarded(models), methods=["GET"]),
            Route("/v1/jobs", guarded(create), methods=["POST"]),
            Route("/v1/jobs/{job_id}", guarded(get_job), methods=["GET"]),
            Route("/v1/jobs/{job_id}/wait", guarded(wait), methods=["GET"]),
            Route("/v1/jobs/{job_id}/feedback", guarded(feedback), methods=["POST"]),
            Route("/openapi.json", openapi, methods=["GET"]),
        ],
        middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=hosts)],
    )


JOB_FIELDS = frozenset(
    {
        "prompt",
        "action_type",
        "context",
        "idempotency_key",
        "priority",
        "deadline",
        "metadata",
        "stream",
        "allow_degraded",
        "cache",
    }
)


def serve(host: str, port: int) -> None:
    """Run the gateway until interrupted (uvicorn, one process, no access log: keys stay out)."""
    app = create_app(allowed_hosts=hosts_for(host))
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
