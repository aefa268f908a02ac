"""What a provider batch's result line means for its attempt: an answer, or an error.

A result is stored on its item as ``(kind, fields)``: ``succeeded`` with the answer's text,
token usage and stop reason; or an error kind with the error's message, which
:func:`error_of` turns back into the :mod:`tierflow.core.errors` class the attempt stores, so
Decide treats a request that failed inside a batch as it treats the same failure of a direct
call (a 5xx or 429 is retried in the tier, a 400 falls back). Three kinds exist only here:

- ``expired``: the provider's batch ended (its 24 h window) before it ran the request;
- ``cancelled``: the batch was cancelled before it ran the request;
- ``batch_failed``: the provider refused the whole batch (its input did not validate).

All three are permanent for this attempt: the job falls back to its next tier, or fails.
"""

from __future__ import annotations

from typing import Any

from tierflow.core import errors
from workers.backends.base import Completion

SUCCEEDED = "succeeded"
_CONTEXT_MARKERS = ("context_length_exceeded", "prompt is too long", "maximum context length")


class BatchRequestExpired(errors.PermanentBackendError):
    kind = "expired"


class BatchRequestCancelled(errors.PermanentBackendError):
    kind = "cancelled"


class ProviderBatchFailed(errors.PermanentBackendError):
    kind = "batch_failed"


_CLASSES: dict[str, type[errors.BackendError]] = {
    cls.kind: cls
    for cls in (
        errors.RateLimited,
        errors.Overloaded,
        errors.ServerError,
        errors.BackendTimeout,
        errors.BackendUnavailable,
        errors.AuthError,
        errors.InvalidRequest,
        errors.ContextTooLong,
        errors.ContentRefused,
        errors.MalformedResponse,
        BatchRequestExpired,
        BatchRequestCancelled,
        ProviderBatchFailed,
    )
}
_BY_TYPE: dict[str, type[errors.BackendError]] = {
    "invalid_request_error": errors.InvalidRequest,
    "not_found_error": errors.InvalidRequest,
    "request_too_large": errors.InvalidRequest,
    "authentication_error": errors.AuthError,
    "permission_error": errors.AuthError,
    "rate_limit_error": errors.RateLimited,
    "overloaded_error": errors.Overloaded,
    "api_error": errors.ServerError,
    "server_error": errors.ServerError,
    "timeout_error": errors.BackendTimeout,
}


def failure(cls: type[errors.BackendError], message: str) -> tuple[str, dict[str, Any]]:
    """The stored result of a request that failed with ``cls``."""
    return cls.kind, {"error_kind": cls.kind, "message": message[:2000]}


def answer(
    text: str, input_tokens: Any, output_tokens: Any, finish_reason: str | None, model_id: str
) -> tuple[str, dict[str, Any]]:
    """The stored result of an answer; one without usage is a malformed response."""
    if not all(isinstance(t, int) and t >= 0 for t in (input_tokens, output_tokens)):
        return failure(errors.MalformedResponse, "batch result carries no token usage")
    return SUCCEEDED, {
        "text": text,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "finish_reason": finish_reason,
        "model_id": model_id,
    }


def http_failure(
    provider: str, status: int, etype: str | None, message: str | None
) -> tuple[str, dict[str, Any]]:
    """A request the provider answered with an error (its HTTP status and error type)."""
    cls = _BY_TYPE.get(etype or "")
    if status == 429:
        cls = errors.RateLimited
    elif status == 529:
        cls = errors.Overloaded
    elif status in (401, 403):
        cls = errors.AuthError
    elif status >= 500 and cls is None:
        cls = errors.ServerError
    elif cls is None:
        cls = errors.InvalidRequest if 400 <= status < 500 else errors.ServerError
    if cls is errors.InvalidRequest and any(m in (message or "").lower() for m in _CONTEXT_MARKERS):
        cls = errors.ContextTooLong
    head = f"{provider} batch: HTTP {status}" if status else f"{provider} batch"
    words = f" {etype}" if etype else ""
    return failure(cls, f"{head}{words}: {message or 'no message'}"[:2000])


def completion_of(fields: dict[str, Any], provider: str, prefill: str = "") -> Completion:
    """The answer of a ``succeeded`` result (``prefill``, what the request put in the
    assistant's mouth, comes first, as in a direct call)."""
    return Completion(
        prefill + str(fields.get("text") or ""),
        int(fields["input_tokens"]),
        int(fields["output_tokens"]),
        str(fields.get("model_id") or ""),
        provider,
        fields.get("finish_reason"),
    )


def error_of(kind: str, fields: dict[str, Any] | None) -> errors.BackendError:
    """The error an unsuccessful result stands for (an unknown kind: a server error)."""
    cls = _CLASSES.get(kind) or _CLASSES.get(str((fields or {}).get("error_kind")))
    message = str((fields or {}).get("message") or kind)
    return (cls or errors.ServerError)(message)
