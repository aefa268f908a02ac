"""The HTTP machinery the local fake providers share: a quiet handler, a quiet server, a lifecycle.

A fake (``fake_providers``, ``fake_ollama``, ``batch_providers``) subclasses :class:`HTTPFake`
(start on ``127.0.0.1``, port 0, in a daemon thread; ``close``; ``with``; ``url``) and names its
:class:`QuietHandler` subclass, which says how a request is answered (:meth:`QuietHandler.respond`)
and how a body that is not JSON is read (:meth:`QuietHandler.non_json_body`, or the whole
:meth:`QuietHandler.read_body` for a fake that wants the bytes). The handler reaches its fake as
``self.server.fake``. Nothing is logged: no request lines, no tracebacks of clients that hung up.
"""

from __future__ import annotations

import contextlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, Generic, Self, TypeVar

FakeT = TypeVar("FakeT")


class QuietServer(ThreadingHTTPServer, Generic[FakeT]):
    """A threading server with daemon handler threads that prints no tracebacks."""

    daemon_threads = True
    fake: FakeT  # set by HTTPFake.start: the object the handlers ask

    def handle_error(self, request: Any, client_address: Any) -> None:  # no tracebacks on stderr
        pass


class QuietHandler(BaseHTTPRequestHandler):
    """Reads a GET or POST (body by ``content-length``, headers lower-cased) and hands it on.

    A client that hangs up while it is answered (``BrokenPipeError``, ``ConnectionResetError``,
    e.g. its timeout fired first) is not an error here.
    """

    server: QuietServer[Any]

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        self._receive("GET")

    def do_POST(self) -> None:
        self._receive("POST")

    def _receive(self, method: str) -> None:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        body = self.read_body(raw)
        headers = {k.lower(): v for k, v in self.headers.items()}
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.respond(method, headers, body)

    def read_body(self, raw: bytes) -> Any:
        """The parsed JSON body; None when empty; :meth:`non_json_body` when not JSON."""
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            return self.non_json_body(raw)

    def non_json_body(self, raw: bytes) -> Any:
        """What a body that is not JSON reads as (here None)."""
        return None

    def respond(self, method: str, headers: dict[str, str], body: Any) -> None:
        """Answer the request (``self.path`` is the path as sent, query included)."""
        raise NotImplementedError


class HTTPFake:
    """Lifecycle of a fake served by :attr:`handler` in a background thread.

    ``start()`` binds ``127.0.0.1`` on a free port and serves (polling every 10 ms, so ``close``
    is quick); ``close()`` sets :attr:`_stop` (waking handlers that sleep on it), stops the
    server and joins its thread (5 s at most). ``with Fake() as srv:`` does both.
    """

    handler: ClassVar[type[QuietHandler]]
    url_suffix = ""  # what ``url`` adds to the origin, e.g. "/v1"

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._httpd: QuietServer[Any] | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> Self:
        self._httpd = QuietServer(("127.0.0.1", 0), self.handler)
        self._httpd.fake = self
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return int(self._httpd.server_address[1])

    @property
    def origin(self) -> str:
        """``http://127.0.0.1:<port>``, no path."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The base URL clients are given: the origin plus :attr:`url_suffix`."""
        return self.origin + self.url_suffix
