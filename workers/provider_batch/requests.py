"""The body of a deferred request: exactly what the synchronous call would send.

The backends build their SDK arguments (messages, the JSON instruction and prefill, stop
sequences, temperature as a body field); the batch line carries the same fields, minus what is
an SDK option rather than a body field (``timeout``, ``extra_body`` merged in). So a batch
answer is asked for in the same words as a direct one, and the gate judges it alike.
"""

from __future__ import annotations

from typing import Any, Literal

from tierflow.core import errors
from workers.backends.anthropic_backend import AnthropicBackend
from workers.backends.base import Backend, CompletionRequest
from workers.backends.openai_compatible import OpenAICompatibleBackend

# The one endpoint deferred OpenAI requests use (each line's ``url``, the batch's ``endpoint``).
OPENAI_ENDPOINT: Literal["/v1/chat/completions"] = "/v1/chat/completions"
SDK_OPTIONS = ("timeout", "extra_headers", "extra_query")


def batch_body(backend: Backend, request: CompletionRequest) -> tuple[dict[str, Any], str]:
    """``(body, prefill)`` of ``request`` for ``backend``'s provider: the body of one batch
    line, and the text the answer continues (Anthropic's JSON prefill; else empty).

    Raises :class:`~tierflow.core.errors.InvalidRequest` for a backend with no Batch API.
    """
    prefill = ""
    if isinstance(backend, AnthropicBackend):
        params, prefill = backend.request_params(request)
    elif isinstance(backend, OpenAICompatibleBackend) and backend.provider == "openai":
        params = backend.request_params(request)
    else:
        raise errors.InvalidRequest(f"{backend.provider}: no Batch API")
    body = {k: v for k, v in params.items() if k not in SDK_OPTIONS and k != "extra_body"}
    body.update(params.get("extra_body") or {})
    return body, prefill
