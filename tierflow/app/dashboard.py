"""``tierflow dashboard``: the second seed's widget as a web page, with JSON and Prometheus.

Routes:

=======================  ====================================================================
``GET /``                the page (server-rendered; ``static/dashboard.js`` refreshes it)
``GET /fragment``        the page's panel alone, for the refresh every 5 s
``GET /api/status``      the seed's ``getStatus()``: state, primaryMetric, secondaryMetric,
                         lastActivity, message
``GET /api/overview``    everything the page shows (:func:`tierflow.app.overview.build_overview`),
                         ``fairness`` included (:mod:`tierflow.app.fairness`)
``POST /api/mode``       ``{"mode": "auto"|"local"|"cloud", "reason": "..."}`` with the token
``GET /metrics``         Prometheus text format (:mod:`tierflow.app.metrics`)
=======================  ====================================================================

**Safe by default.** It binds to 127.0.0.1 and answers only requests whose ``Host`` is that
address (no DNS rebinding) unless told to bind elsewhere. Reading needs nothing; switching the
mode needs the token (``TIERFLOW_DASHBOARD_TOKEN``, or one generated and printed at start) in
``Authorization: Bearer <token>``, compared in constant time. A missing or wrong token is a 403,
a bad body a 400 naming the field, a mode no tier can serve a 409; each a JSON
``{"error": ..., "field": ...}``. A cross-site form cannot send that header, so a page
elsewhere cannot switch the fleet. Every response forbids inline scripts and framing.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from router.mode import set_mode
from tierflow.app.dashboard_html import render_page, render_panel
from tierflow.app.embedded import free_port
from tierflow.app.metrics import metrics_registry, render_metrics
from tierflow.app.overview import build_overview, status_fields
from tierflow.core.constants import Mode
from tierflow.core.errors import ModeError
from tierflow.core.settings import get_settings

log = logging.getLogger(__name__)
STATIC = Path(__file__).with_name("static")
TOKEN_ENV = "TIERFLOW_DASHBOARD_TOKEN"
DEFAULT_PORT = 8787
LOOPBACK = ("127.0.0.1", "localhost", "::1")
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def new_token() -> str:
    """A token for one dashboard run (URL-safe, 32 random bytes)."""
    return secrets.token_urlsafe(32)


def configured_token() -> str | None:
    """``TIERFLOW_DASHBOARD_TOKEN`` from the settings (checked when they are read: a bad one
    stops the start with a ConfigError naming it); None when unset or blank."""
    token = get_settings().dashboard_token
    return token.get_secret_value() if token is not None else None


def _error(status: int, message: str, field: str) -> JSONResponse:
    return JSONResponse({"error": message, "field": field}, status_code=status)


def _presented_token(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer":
        return value.strip()
    return request.headers.get("x-tierflow-token", "").strip()


def token_matches(presented: str, expected: str) -> bool:
    """Constant-time comparison; an empty token never matches."""
    if not presented or not expected:
        return False
    return hmac.compare_digest(presented.encode(), expected.encode())


def _overview_and_status() -> tuple[dict[str, Any], dict[str, Any]]:
    overview = build_overview()
    return overview, status_fields(overview)


async def _read(render: Callable[[dict[str, Any], dict[str, Any]], Response]) -> Response:
    """``render(overview, status)`` of the fleet read now, or a 503 saying it cannot be read."""
    try:
        overview, status = await run_in_threadpool(_overview_and_status)
    except Exception as exc:  # the fleet's stores are down: say so, keep serving
        log.warning("dashboard could not read the fleet", exc_info=True)
        return _error(503, f"could not read the fleet: {type(exc).__name__}", "fleet")
    return render(overview, status)


async def page(request: Request) -> Response:
    """``GET /``: the whole page."""
    return await _read(lambda o, s: HTMLResponse(render_page(o, s)))


async def fragment(request: Request) -> Response:
    """``GET /fragment``: the panel alone, for the page's refresh."""
    return await _read(lambda o, s: HTMLResponse(render_panel(o, s)))


async def api_status(request: Request) -> Response:
    """``GET /api/status``: the seed's status fields."""
    return await _read(lambda o, s: JSONResponse(s))


async def api_overview(request: Request) -> Response:
    """``GET /api/overview``: everything the page shows, the status fields included."""
    return await _read(lambda o, s: JSONResponse({**o, "status": s}))


async def metrics(request: Request) -> Response:
    """``GET /metrics``: Prometheus text format."""
    body = await run_in_threadpool(lambda: render_metrics(metrics_registry()))
    return Response(body, media_type=CONTENT_TYPE_LATEST)


async def switch_mode(request: Request) -> Response:
    """``POST /api/mode``: 403 without the app's token (``app.state.token``), 400 for a bad
    body (naming the field), 409 for a mode no tier can serve, else the change as JSON."""
    if not token_matches(_presented_token(request), request.app.state.token):
        return _error(
            403,
            "switching the mode needs the dashboard's token (Authorization: Bearer <token>);"
            " without it the dashboard is read-only",
            "token",
        )
    try:
        body = await request.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return _error(400, 'the body must be a JSON object, e.g. {"mode": "cloud"}', "body")
    mode = body.get("mode")
    if mode not in {m.value for m in Mode}:
        return _error(400, "mode must be one of auto, local, cloud", "mode")
    reason = body.get("reason")
    if reason is not None and (not isinstance(reason, str) or len(reason) > 500):
        return _error(400, "reason must be a string of at most 500 characters", "reason")
    try:
        change = await run_in_threadpool(
            set_mode, mode, source="manual", reason=reason or "dashboard"
        )
    except ModeError as exc:
        return _error(409, str(exc), "mode")
    return JSONResponse(change.as_dict())


ROUTES = [
    Route("/", page),
    Route("/fragment", fragment),
    Route("/api/status", api_status),
    Route("/api/overview", api_overview),
    Route("/api/mode", switch_mode, methods=["POST"]),
    Route("/metrics", metrics),
    Mount("/static", StaticFiles(directory=STATIC), name="static"),
]


def create_app(token: str, *, allowed_hosts: list[str] | None = None) -> Starlette:
    """The dashboard application; ``token`` guards ``POST /api/mode`` (kept on
    ``app.state.token``). ``allowed_hosts``: the ``Host`` names it answers (default: the
    loopback names)."""
    app = Starlette(
        routes=ROUTES,
        middleware=[
            Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts or list(LOOPBACK)),
            Middleware(SecurityHeaders),
        ],
    )
    app.state.token = token
    return app


class SecurityHeaders:
    """ASGI middleware adding :data:`HEADERS` to every HTTP response."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {k.lower() for k, _ in headers}
                for name, value in HEADERS.items():
                    if name.lower().encode() not in present:
                        headers.append((name.lower().encode(), value.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)


def hosts_for(bind: str) -> list[str]:
    """The ``Host`` names to answer when bound to ``bind``: loopback ones on loopback, any
    otherwise (a deliberate bind to another address is behind a proxy or a firewall)."""
    if bind in LOOPBACK:
        return list(LOOPBACK)
    return ["*"]


def serve(host: str, port: int, token: str) -> None:
    """Run the dashboard until interrupted (uvicorn, one process)."""
    app = create_app(token, allowed_hosts=hosts_for(host))
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def dashboard_child(port: int) -> tuple[list[str], str, dict[str, str]]:
    """What ``tierflow up`` runs for its dashboard: the child's arguments (after the Python
    executable), the line to print, and the environment only that child gets on top of the
    fleet's (the token, which the supervisor withholds from every other child). ``port`` is taken
    when free, else any free port. The token is ``TIERFLOW_DASHBOARD_TOKEN`` when set (not
    printed), else a new one, printed in the link."""
    if not _port_free(port):
        port = free_port()
    argv = ["-m", "tierflow.cli", "dashboard", "--port", str(port)]
    token = configured_token()
    if token is not None:
        note = f"dashboard http://127.0.0.1:{port}/ (token: ${TOKEN_ENV})"
    else:
        token = new_token()
        note = f"dashboard http://127.0.0.1:{port}/#token={token}"
    return argv, note, {TOKEN_ENV: token}
