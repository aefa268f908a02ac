"""Map the official SDKs' exceptions (``openai``, ``anthropic``) onto :mod:`tierflow.core.errors`.

Messages are built from the provider name, the HTTP status and the provider's own error type and
message only, never from the SDK's message (which embeds the whole body) nor from request headers,
and are scrubbed (:func:`tierflow.core.secrets.scrub`: key-shaped strings, the values of key
variables, URL passwords), so no API key reaches a log or a job record.
"""

from __future__ import annotations

import email.utils
import time
from typing import Any

import anthropic
import httpx2
import openai

from tierflow.core import errors
from tierflow.core.secrets import scrub

_CONTEXT_MARKERS = (
    "context_length_exceeded",
    "prompt is too long",
    "maximum context length",
    "context window",
    "too many tokens",
)
_BY_TYPE: dict[str, type[errors.BackendError]] = {
    "overloaded_error": errors.Overloaded,
    "rate_limit_error": errors.RateLimited,
    "api_error": errors.ServerError,
    "timeout_error": errors.BackendTimeout,
    "authentication_error": errors.AuthError,
    "permission_error": errors.AuthError,
    "invalid_request_error": errors.InvalidRequest,
    "not_found_error": errors.InvalidRequest,
}


def parse_retry_after(headers: Any) -> float | None:
    """Seconds from ``retry-after-ms``, or ``retry-after`` as seconds or an HTTP-date; else None."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _provider_detail(exc: Any) -> tuple[str | None, str | None, str | None]:
    """(error type, error code, message) as the provider put them in the error body."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        body = body["error"]  # Anthropic keeps the envelope; OpenAI's SDK has already unwrapped it
    if not isinstance(body, dict):
        return getattr(exc, "type", None), None, None
    etype, code, message = body.get("type"), body.get("code"), body.get("message")
    return (
        etype if isinstance(etype, str) else None,
        str(code) if code is not None else None,
        message if isinstance(message, str) else None,
    )


def _status_error(exc: Any, provider: str) -> errors.BackendError:
    status = int(getattr(exc, "status_code", 0) or 0)
    etype, code, message = _provider_detail(exc)
    words = " ".join(filter(None, [etype, code and f"({code})"]))
    text = f"{provider}: HTTP {status}" + (f" {words}" if words else "")
    if message:
        text += f": {message[:300]}"
    text = scrub(text)
    haystack = " ".join(filter(None, [etype, code, message])).lower()
    response = getattr(exc, "response", None)
    retry_after = parse_retry_after(getattr(response, "headers", None))

    cls: type[errors.BackendError]
    if status == 529 or etype == "overloaded_error":
        cls = errors.Overloaded
    elif status == 429 and code == "insufficient_quota":
        # Out of credit is not a rate limit: waiting will not help, another model may.
        cls = errors.AuthError
    elif status == 429:
        cls = errors.RateLimited
    elif status in (401, 403):
        cls = errors.AuthError
    elif status == 408:
        cls = errors.BackendTimeout
    elif 400 <= status < 500 or etype == "invalid_request_error":
        cls = errors.InvalidRequest
        if any(marker in haystack for marker in _CONTEXT_MARKERS):
            cls = errors.ContextTooLong
    elif status >= 500:
        cls = errors.ServerError
    else:  # an error event inside a 200 stream: only the provider's type tells
        cls = _BY_TYPE.get(etype or "", errors.ServerError)
    if issubclass(cls, errors.RetryableBackendError):
        return cls(text, status_code=status or None, retry_after=retry_after)
    return cls(text, status_code=status or None)


def map_sdk_error(exc: Exception, provider: str) -> errors.BackendError:
    """The :class:`~tierflow.core.errors.BackendError` for an SDK (or transport) exception."""
    if isinstance(exc, errors.BackendError):
        return exc
    if isinstance(
        exc, openai.APITimeoutError | anthropic.APITimeoutError | httpx2.TimeoutException
    ):
        return errors.BackendTimeout(f"{provider}: no answer within the timeout")
    if isinstance(
        exc, openai.APIConnectionError | anthropic.APIConnectionError | httpx2.ConnectError
    ):
        return errors.BackendUnavailable(f"{provider}: cannot connect to the server")
    if isinstance(exc, openai.APIResponseValidationError | anthropic.APIResponseValidationError):
        return errors.MalformedResponse(
            f"{provider}: response does not follow the API schema", status_code=exc.status_code
        )
    if isinstance(exc, openai.APIStatusError | anthropic.APIStatusError):
        return _status_error(exc, provider)
    if isinstance(exc, httpx2.TransportError):  # the connection broke while reading a stream
        return errors.ServerError(f"{provider}: connection lost ({type(exc).__name__})")
    if isinstance(exc, ValueError):  # json.JSONDecodeError, pydantic.ValidationError
        return errors.MalformedResponse(
            f"{provider}: response body is not valid ({type(exc).__name__})"
        )
    return errors.BackendError(scrub(f"{provider}: unexpected {type(exc).__name__}"))
