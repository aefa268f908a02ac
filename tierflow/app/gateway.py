"""``tierflow serve``: an OpenAI-compatible gateway and a jobs API in front of ``submit_job``.

Routes (every one but ``/openapi.json`` needs ``Authorization: Bearer tf_...``):

================================  ==============================================================
``POST /v1/chat/completions``     OpenAI chat completions, plain or SSE (``stream: true``)
``GET  /v1/models``               ``auto`` and ``tierflow/<action>`` for each configured action
``POST /v1/jobs``                 submit a job (the :class:`~schemas.jobs.JobRequest` fields)
``GET  /v1/jobs/{id}``            the job's :class:`~schemas.jobs.JobResult` now
``GET  /v1/jobs/{id}/wait``       the same once finished, waiting at most ``timeout`` seconds
``POST /v1/jobs/{id}/feedback``   ``{"correct": bool, "note": str}``: a label for the gate
``POST /v1/files``                upload a batch input file (multipart, ``purpose=batch``)
``GET  /v1/files/{id}``           the file object (:mod:`.gateway_files`)
``GET  /v1/files/{id}/content``   an input, output or error file's bytes
``DELETE /v1/files/{id}``         delete a file (409 while an open batch reads it)
``POST /v1/batches``              OpenAI's Batch API: a file's lines as a tierflow batch
``GET  /v1/batches``              the daemon's batches, newest first (``limit``, ``after``)
``GET  /v1/batches/{id}``         the batch object: status, ``request_counts``, result files
``POST /v1/batches/{id}/cancel``  cancel its unfinished lines (:mod:`.gateway_batches`)
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
(:data:`~tierflow.app.gateway_http.MAX_THREADS`, on ``app.state``), so hundreds of waiting
requests never block the event loop; waiters share the process's one Redis subscription
(:mod:`router.waiter`).

**Where the code is.** The endpoints below are module-level Starlette endpoints, each wrapped by
:func:`~tierflow.app.gateway_http.guarded` (the key check, the errors); what they share lives on
``app.state`` (``limiter``, ``chat_wait_s``). Chat parsing and answers are
:mod:`.gateway_chat`; errors, keys and threads :mod:`.gateway_http`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

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
from schemas.jobs import JobResult
from tierflow import store
from tierflow.app.dashboard import hosts_for
from tierflow.app.gateway_batches import BATCH_ROUTES
from tierflow.app.gateway_chat import (
    ACTION_HEADER,
    AUTO_MODEL,
    MODEL_PREFIX,
    action_for,
    completion_body,
    configured_actions,
    parse_chat,
    result_headers,
    stream_events,
)
from tierflow.app.gateway_files import FILE_ROUTES
from tierflow.app.gateway_http import (
    MAX_THREADS,
    BadRequest,
    blocking,
    error_body,
    field_of,
    guarded,
    json_body,
    json_object,
)
from tierflow.app.gateway_openapi import openapi_document
from tierflow.core.constants import TERMINAL_STATUSES
from tierflow.core.errors import (
    IdempotencyConflict,
    JobNotFound,
    JobValidationError,
    JobWaitTimeout,
)

# Re-exported: what callers and tests import from the gateway.
__all__ = [
    "BadRequest",
    "action_for",
    "create_app",
    "parse_chat",
    "result_headers",
    "serve",
]

DEFAULT_PORT = 8788
MAX_WAIT_S = 60.0  # the most one GET /v1/jobs/{id}/wait blocks
CHAT_WAIT_S = 300.0  # how long a chat completion waits for its job
# A daemon's idempotency key is stored as "<daemon>/<key>" (200 characters at most).
MAX_KEY_CHARS = 135
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


# --- blocking work (run in threads) -------------------------------------------------------------


def own_job(job_id: str, daemon: str) -> None:
    """JobNotFound unless the job exists and was submitted by ``daemon``."""
    job = store.load_job(job_id)
    if job is None or (job.job_metadata or {}).get("daemon") != daemon:
        raise JobNotFound(job_id)


def submit(daemon: str, fields: dict[str, Any]) -> JobHandle:
    """``submit_job`` for ``daemon``: its name in the metadata, its idempotency key scoped."""
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


def run_chat(daemon: str, action: str, chat: dict[str, Any], wait_s: float) -> JobResult:
    """Submit a parsed chat request as a job and wait at most ``wait_s`` seconds for it."""
    fields = {"prompt": chat["prompt"], "action_type": action, "context": chat["context"]}
    handle = submit(daemon, {**fields, "cache": chat["cache"]})
    return handle.wait(timeout=wait_s)


def read_job(job_id: str, daemon: str) -> JobResult:
    """The daemon's job now (JobNotFound for another daemon's)."""
    own_job(job_id, daemon)
    found = store.job_result(job_id)
    if found is None:
        raise JobNotFound(job_id)
    return found


def wait_job(job_id: str, daemon: str, timeout: float) -> JobResult:
    """The daemon's job once finished, or as it is after ``timeout`` seconds."""
    own_job(job_id, daemon)
    try:
        return JobHandle(job_id, created=False).wait(timeout=timeout)
    except JobWaitTimeout:
        return read_job(job_id, daemon)


def record_own_feedback(job_id: str, daemon: str, correct: bool, note: str | None) -> int:
    """A label for the daemon's job; returns its id."""
    own_job(job_id, daemon)
    return record_feedback(job_id, correct, note)


# --- endpoints ----------------------------------------------------------------------------------


@guarded
async def chat_completions(request: Request, daemon: str) -> Response:
    """``POST /v1/chat/completions``: the job's answer, plain or as SSE once it succeeded."""
    chat = parse_chat(await json_body(request))
    action = action_for(chat["model"], request.headers.get(ACTION_HEADER))
    created = int(time.time())
    try:
        wait_s = request.app.state.chat_wait_s
        result = await blocking(request, run_chat, daemon, action, chat, wait_s)
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
            body(), media_type="text/event-stream", headers={**headers, "Cache-Control": "no-cache"}
        )
    if not result.ok:
        message = f"job {result.job_id} {result.status}: {result.error or 'no answer'}"
        return JSONResponse(error_body(502, message, None, "job_failed"), 502, headers=headers)
    return JSONResponse(completion_body(result, chat["model"], created), headers=headers)


@guarded
async def list_models(request: Request, daemon: str) -> Response:
    """``GET /v1/models``: ``auto`` and ``tierflow/<action>`` for each configured action."""
    names = [AUTO_MODEL] + [MODEL_PREFIX + a for a in await blocking(request, configured_actions)]
    data = [{"id": n, "object": "model", "created": 0, "owned_by": "tierflow"} for n in names]
    return JSONResponse({"object": "list", "data": data})


@guarded
async def create_job(request: Request, daemon: str) -> Response:
    """``POST /v1/jobs``: 201 stored and sent, 200 the idempotency key's earlier job."""
    body = json_object(await json_body(request))
    unknown = sorted(set(body) - JOB_FIELDS)
    if unknown:
        raise BadRequest(400, f"{unknown[0]}: unknown field", unknown[0])
    if "prompt" not in body:
        raise BadRequest(400, "prompt: field required", "prompt")
    try:
        handle = await blocking(request, submit, daemon, body)
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
    status = await blocking(request, store.job_status, handle.job_id)
    payload = {
        "job_id": handle.job_id,
        "created": handle.created,
        "sent": handle.sent,
        "note": handle.note,
        "status": status,
    }
    return JSONResponse(payload, 201 if handle.created else 200)


@guarded
async def get_job(request: Request, daemon: str) -> Response:
    """``GET /v1/jobs/{job_id}``: the daemon's job now."""
    job_id = request.path_params["job_id"]
    try:
        result = await blocking(request, read_job, job_id, daemon)
    except JobNotFound:
        raise BadRequest(404, f"no job {job_id}", "job_id") from None
    return JSONResponse(result.model_dump(mode="json"))


@guarded
async def wait_for_job(request: Request, daemon: str) -> Response:
    """``GET /v1/jobs/{job_id}/wait``: 200 finished, 202 not yet after ``timeout`` seconds."""
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
        result = await blocking(request, wait_job, job_id, daemon, timeout)
    except JobNotFound:
        raise BadRequest(404, f"no job {job_id}", "job_id") from None
    finished = result.status in TERMINAL_STATUSES
    return JSONResponse(result.model_dump(mode="json"), 200 if finished else 202)


@guarded
async def job_feedback(request: Request, daemon: str) -> Response:
    """``POST /v1/jobs/{job_id}/feedback``: a label for the gate (201)."""
    job_id = request.path_params["job_id"]
    body = json_object(await json_body(request))
    unknown = sorted(set(body) - {"correct", "note"})
    if unknown:
        raise BadRequest(400, f"{unknown[0]}: unknown field", unknown[0])
    correct, note = body.get("correct"), body.get("note")
    if not isinstance(correct, bool):
        raise BadRequest(400, "correct: must be a boolean", "correct")
    if note is not None and (not isinstance(note, str) or len(note) > 2000 or "\x00" in note):
        raise BadRequest(400, "note: a string of at most 2000 characters", "note")
    try:
        label = await blocking(request, record_own_feedback, job_id, daemon, correct, note)
    except JobNotFound:
        raise BadRequest(404, f"no job {job_id}", "job_id") from None
    except JobValidationError as exc:
        raise BadRequest(409, str(exc), "job_id", "no_answer") from None
    return JSONResponse({"label_id": label, "job_id": job_id}, 201)


async def openapi(request: Request) -> Response:
    """``GET /openapi.json``: the document (no key needed)."""
    return JSONResponse(openapi_document())


ROUTES = [
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/v1/jobs", create_job, methods=["POST"]),
    Route("/v1/jobs/{job_id}", get_job, methods=["GET"]),
    Route("/v1/jobs/{job_id}/wait", wait_for_job, methods=["GET"]),
    Route("/v1/jobs/{job_id}/feedback", job_feedback, methods=["POST"]),
    *FILE_ROUTES,
    *BATCH_ROUTES,
    Route("/openapi.json", openapi, methods=["GET"]),
]


# --- the application ----------------------------------------------------------------------------


def create_app(
    *, allowed_hosts: list[str] | None = None, chat_wait_s: float = CHAT_WAIT_S
) -> Starlette:
    """The gateway application (see the module's docstring): :data:`ROUTES` behind the trusted
    hosts, with the thread limiter and the chat wait (seconds) on ``app.state``."""
    hosts = allowed_hosts or hosts_for("127.0.0.1")
    app = Starlette(
        routes=ROUTES, middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=hosts)]
    )
    app.state.limiter = anyio.CapacityLimiter(MAX_THREADS)
    app.state.chat_wait_s = chat_wait_s
    return app


def serve(host: str, port: int) -> None:
    """Run the gateway until interrupted (uvicorn, one process, no access log: keys stay out)."""
    app = create_app(allowed_hosts=hosts_for(host))
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
