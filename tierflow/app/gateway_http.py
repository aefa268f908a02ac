"""What every gateway endpoint shares: OpenAI's error shape, the key check, JSON bodies, and
blocking work in threads under the application's one limiter (``app.state.limiter``).

An endpoint is written as ``async def handler(request, daemon) -> Response`` and wrapped with
:func:`guarded`: the wrapper checks the key (401), turns :class:`BadRequest` into OpenAI's error
body, and answers 503 when the fleet's stores fail, so the gateway keeps serving.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tierflow import store

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_THREADS = 256  # blocking calls (PostgreSQL, waits) running at once per gateway process
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "invalid_request_error",
    502: "job_failed",
    503: "service_unavailable",
    504: "timeout",
}

Handler = Callable[[Request, str], Awaitable[Response]]


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
    """:func:`error_body` as a response (a 401 says ``WWW-Authenticate: Bearer``)."""
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(error_body(status, message, param, code), status, headers=headers)


def field_of(message: str) -> str | None:
    """The field a validation message starts with (``prompt: ...``), or None."""
    head, sep, _ = message.partition(":")
    if sep and head and " " not in head.strip():
        return head.strip()
    return None


def presented_key(request: Request) -> str:
    """The bearer token of the request ('' when there is none)."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


async def blocking(request: Request, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a worker thread under the application's limiter."""
    limiter: anyio.CapacityLimiter = request.app.state.limiter
    return await anyio.to_thread.run_sync(lambda: fn(*args), limiter=limiter)


async def authorized(request: Request) -> str:
    """The daemon of the request's key; BadRequest(401) for none, a wrong or a revoked one."""
    key = presented_key(request)
    if not key:
        raise BadRequest(
            401, "an API key is required: Authorization: Bearer tf_...", None, "missing_api_key"
        )
    daemon = await blocking(request, store.daemon_for_key, key)
    if daemon is None:
        raise BadRequest(
            401, "the API key is not valid (unknown or revoked)", None, "invalid_api_key"
        )
    return daemon


async def json_body(request: Request) -> Any:
    """The request's body parsed as JSON; BadRequest(400) when it is not."""
    try:
        return json.loads(await request.body())
    except ValueError:
        raise BadRequest(400, "the body must be valid JSON", None) from None


def json_object(body: Any) -> dict[str, Any]:
    """``body`` when it is a JSON object; BadRequest(400) otherwise."""
    if not isinstance(body, dict):
        raise BadRequest(400, "the body must be a JSON object", None)
    return body


def guarded(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """A Starlette endpoint running ``handler(request, daemon)`` for an authorized key (see
    the module): refusals become OpenAI's error body, a store's failure a 503."""

    async def endpoint(request: Request) -> Response:
        try:
            daemon = await authorized(request)
            return await handler(request, daemon)
        except BadRequest as exc:
            return error_response(exc.status, exc.message, exc.param, exc.code)
        except Exception as exc:  # the fleet's stores are down: say so, keep serving
            log.warning("gateway request failed: %s", type(exc).__name__, exc_info=True)
            return error_response(503, f"the fleet is unavailable: {type(exc).__name__}")

    endpoint.__name__ = handler.__name__
    endpoint.__doc__ = handler.__doc__
    return endpoint
