"""The chat side of the gateway: OpenAI chat requests parsed and checked, the action a model
names, and a finished job written back as a ``chat.completion``, its SSE chunks and the
``x-tierflow-*`` headers (:mod:`tierflow.app.gateway` serves them; the Batch API's lines are
chat requests too, :mod:`tierflow.app.gateway_batches`)."""

from __future__ import annotations

import json
import re
from typing import Any

from schemas.jobs import ACTION_PATTERN, JobResult
from tierflow.app.gateway_http import BadRequest, error_body
from tierflow.core.settings import get_settings

AUTO_MODEL = "auto"
MODEL_PREFIX = "tierflow/"
ACTION_HEADER = "x-tierflow-action"
ROLES = ("system", "developer", "user", "assistant", "tool")
CHUNK_CHARS = 24  # characters per streamed chunk of a finished answer


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
    """The actions configured under ``routing`` (``actions`` and ``action_tier_overrides``)."""
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
    """A finished job's answer as OpenAI's ``chat.completion`` object (``created``: epoch s)."""
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
    """OpenAI's ``usage`` of a job: its tokens in and out."""
    return {
        "prompt_tokens": result.input_tokens,
        "completion_tokens": result.output_tokens,
        "total_tokens": result.input_tokens + result.output_tokens,
    }


def sse(data: Any) -> bytes:
    """One server-sent event carrying ``data`` (JSON, or a string as it is)."""
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
