"""The ``ollama`` provider: Ollama's native API (``/api/chat``, ``/api/tags``, ``/api/show``).

Not Ollama's OpenAI-compatible ``/v1``: that endpoint cannot set the context size, and Ollama cuts
a prompt longer than its ``num_ctx`` (a few thousand tokens by default) silently, keeping its end.
Through ``POST /api/chat`` every call sends:

- ``options.num_ctx`` = the model's ``context_window`` (tokens), so the window the fleet checked a
  prompt against (:func:`workers.selection.pick_model`) is the window the model reads;
- ``keep_alive`` = the model's ``options.keep_alive`` (default ``"30m"``), so the model stays
  loaded between jobs instead of Ollama's five idle minutes. It takes what Ollama takes: a duration
  string (``"30m"``, ``"1h30m"``, ``"90s"``), a number of seconds, a negative value (kept loaded
  for ever) or 0 (unloaded after each call); anything else is refused at start;
- ``options.temperature``, ``options.num_predict`` (``max_tokens``), ``options.stop``, and
  ``format: "json"`` for a JSON request on a model that ``supports_json``.

Base URL: ``base_url`` (default ``http://127.0.0.1:11434``). A trailing ``/v1``, which configs
written for the OpenAI-compatible backend carry (``http://host:11434/v1``), is stripped: both
reach the same server.

Availability (probed at most once per ``TIERFLOW_AVAILABILITY_TTL_S``, as for other local
servers): ``GET /api/tags`` must list ``model_id`` (``name`` and ``name:latest`` are one model),
else the model is unavailable with "model 'X' is not pulled on the Ollama server at URL: run
`ollama pull X`"; then, once per backend, ``POST /api/show`` reads the context the model was
trained for (``<architecture>.context_length``): a ``context_window`` over it is refused the same
way, since Ollama caps ``num_ctx`` there and would cut again. A chat answered 404 "not found" (the
model removed after the probe) raises :class:`~tierflow.core.errors.BackendUnavailable` with the
same words and marks the model unavailable for one TTL, so the next attempt picks another model.

Usage: ``prompt_eval_count`` and ``eval_count`` of the final (``done``) object, in tokens. Ollama
leaves a count out when it is 0 (a prompt served wholly from its cache), so a missing count is 0;
a stream without a ``done`` object is malformed. ``done_reason`` ("stop", "length") is the
completion's ``finish_reason``.

Errors follow :mod:`tierflow.core.errors` as :mod:`workers.backends.sdk_errors` maps them for the
SDKs: 429 rate limited (``retry-after`` honoured), 5xx and an ``error`` line inside a 200 stream
server errors, a refused connection unavailable, 401/403 auth, other 4xx invalid (or context too
long, by its words). Messages carry the status and Ollama's ``error`` text, scrubbed. A key is
sent as a bearer token only when ``api_key_env`` names one (an Ollama behind an authenticating
proxy); a plain Ollama needs none.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import httpx2

from tierflow.core import errors
from tierflow.core.config import ModelConfig
from tierflow.core.settings import get_settings
from workers.backends.base import (
    Availability,
    Completion,
    CompletionRequest,
    StreamChunk,
    register_backend,
)
from workers.backends.sdk_errors import map_sdk_error, parse_retry_after, scrub

PROVIDER = "ollama"
DEFAULT_URL = "http://127.0.0.1:11434"
DEFAULT_KEEP_ALIVE = "30m"
OPTIONS = ("keep_alive",)
PROBE_TIMEOUT_S = 1.0
# Go's time.ParseDuration, which Ollama parses keep_alive strings with: signed, one or more
# number+unit parts ("1h30m", "1.5h", "-1m").
_DURATION = re.compile(r"[-+]?((\d+(\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h))+")
_NUMBER = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)")
_CONTEXT_MARKERS = ("context length", "context window", "too long", "exceeds")
_TRANSPORT_ERRORS = (httpx2.HTTPError, ValueError)


def check_keep_alive(value: Any) -> str | float:
    """``value`` as Ollama's ``keep_alive`` reads it: a Go duration string (``"30m"``,
    ``"1h30m"``, ``"90s"``) or a number of seconds (negative: kept loaded for ever; 0: unloaded
    after each call). A string holding a bare number (``"-1"``, ``"3600"``) is sent as that number,
    since Go's duration parser refuses a number without a unit. Raises ValueError saying what
    it takes."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = value.strip()
        if _NUMBER.fullmatch(text):
            return float(text) if "." in text else int(text)
        if _DURATION.fullmatch(text):
            return text
    raise ValueError(
        f"keep_alive {value!r} is not a duration Ollama reads: use a string such as '30m', "
        "'1h30m' or '90s', a number of seconds, -1 (kept loaded) or 0 (unloaded after each call)"
    )


def validate_options(model: ModelConfig) -> None:
    """The registry's start-time check of an ``ollama`` model's options."""
    if "keep_alive" in model.options:
        check_keep_alive(model.options["keep_alive"])


def base_url_of(model: ModelConfig) -> str:
    """The server's origin for ``model``: ``base_url`` without a trailing ``/`` or ``/v1``."""
    url = (model.base_url or DEFAULT_URL).rstrip("/")
    return url.removesuffix("/v1").rstrip("/")


def _tagged(name: str) -> str:
    """Ollama's full name of a model: ``llama3`` is ``llama3:latest``."""
    last = name.rsplit("/", 1)[-1]
    return name if ":" in last else f"{name}:latest"


def _content(obj: Mapping[str, Any]) -> str | None:
    """``message.content`` of a chat object, or None when it has none."""
    message = obj.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    return content if isinstance(content, str) else None


class OllamaBackend:
    """One model on one Ollama server, driven through its native API (see the module)."""

    provider = PROVIDER

    def __init__(self, model: ModelConfig) -> None:
        self.model = model
        self.base_url = base_url_of(model)
        self.keep_alive = check_keep_alive(model.options.get("keep_alive", DEFAULT_KEEP_ALIVE))
        self.key_env = model.api_key_env
        self._client: httpx2.Client | None = None
        self._client_lock = threading.Lock()
        self._probe: tuple[float, Availability] | None = None
        self._trained_context: int | None = None

    # the wire
    def _http(self) -> httpx2.Client:
        # One client for all threads: an Ollama server runs a few requests at once
        # (OLLAMA_NUM_PARALLEL), far from the pool sizes that made openai_compatible shard.
        if self._client is None:
            with self._client_lock:
                if self._client is None:
                    self._client = httpx2.Client(base_url=self.base_url)
        return self._client

    def _headers(self) -> dict[str, str]:
        if self.key_env is None:
            return {}
        key = os.environ.get(self.key_env)
        if not key:
            raise errors.AuthError(f"{PROVIDER}: {self.key_env} not set")
        return {"authorization": f"Bearer {key}"}

    def _timeout(self, request: CompletionRequest) -> float:
        return min(request.timeout_s, self.model.timeout_s)

    def request_body(self, request: CompletionRequest, *, stream: bool) -> dict[str, Any]:
        """The ``POST /api/chat`` body of ``request``."""
        messages = [{"role": "system", "content": request.system}] if request.system else []
        messages.append({"role": "user", "content": request.prompt})
        options: dict[str, Any] = {
            "num_ctx": self.model.context_window,
            "num_predict": request.max_tokens,
            "temperature": request.temperature,
        }
        if request.stop:
            options["stop"] = list(request.stop)
        body: dict[str, Any] = {
            "model": self.model.model_id,
            "messages": messages,
            "stream": stream,
            "keep_alive": self.keep_alive,
            "options": options,
        }
        if request.json_output and self.model.supports_json:
            body["format"] = "json"
        return body

    # calls
    def complete(self, request: CompletionRequest) -> Completion:
        body = self.request_body(request, stream=False)
        try:
            response = self._http().post(
                "/api/chat", json=body, headers=self._headers(), timeout=self._timeout(request)
            )
            if response.status_code >= 400:
                raise self._status_error(response.status_code, response.text, response.headers)
            answer = response.json()
        except (*_TRANSPORT_ERRORS, errors.BackendError) as exc:
            raise self._failed(exc) from None
        if not isinstance(answer, dict):
            raise errors.MalformedResponse(f"{PROVIDER}: response is not a JSON object")
        self._raise_error_object(answer)
        text = _content(answer)
        if text is None or answer.get("done") is not True:
            raise errors.MalformedResponse(f"{PROVIDER}: response has no finished message")
        return self._completion(text, answer)

    def stream(self, request: CompletionRequest) -> Iterator[StreamChunk]:
        body = self.request_body(request, stream=True)
        text, final = "", None
        try:
            with self._http().stream(
                "POST", "/api/chat", json=body, headers=self._headers(),
                timeout=self._timeout(request),
            ) as response:  # fmt: skip
                if response.status_code >= 400:
                    response.read()
                    raise self._status_error(response.status_code, response.text, response.headers)
                for line in response.iter_lines():
                    if not line.strip():
                        continue
                    obj = json.loads(line)
                    if not isinstance(obj, dict):
                        raise ValueError("stream line is not a JSON object")
                    self._raise_error_object(obj)
                    delta = _content(obj) or ""
                    if delta:
                        text += delta
                        yield StreamChunk(delta, text, False, PROVIDER)
                    if obj.get("done") is True:
                        final = obj
                        break
        except (*_TRANSPORT_ERRORS, errors.BackendError) as exc:
            raise self._failed(exc) from None
        if final is None:
            raise errors.MalformedResponse(f"{PROVIDER}: stream ended without its done object")
        yield StreamChunk("", text, True, PROVIDER, self._completion(text, final))

    def _completion(self, text: str, final: Mapping[str, Any]) -> Completion:
        counts = [final.get("prompt_eval_count", 0), final.get("eval_count", 0)]
        if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in counts):
            raise errors.MalformedResponse(f"{PROVIDER}: response carries no valid token counts")
        reason = final.get("done_reason")
        return Completion(
            text, counts[0], counts[1], self.model.model_id, PROVIDER,
            reason if isinstance(reason, str) else None,
        )  # fmt: skip

    # availability
    def availability(self) -> Availability:
        if self.key_env is not None and not os.environ.get(self.key_env):
            return Availability(False, f"{self.key_env} not set")
        cached = self._probe
        if cached is not None and time.monotonic() - cached[0] < get_settings().availability_ttl_s:
            return cached[1]
        answer = self._check_server()
        self._probe = (time.monotonic(), answer)
        return answer

    def not_pulled(self) -> str:
        """What to tell the user when the server lacks this model."""
        name = self.model.model_id
        return (
            f"model '{name}' is not pulled on the Ollama server at {scrub(self.base_url)}: "
            f"run `ollama pull {name}`"
        )

    def _check_server(self) -> Availability:
        """``GET /api/tags`` (is the model pulled?), then once ``POST /api/show`` (does
        ``context_window`` fit what the model was trained for?)."""
        try:
            tags = self._get_json("GET", "/api/tags", None)
            pulled = {
                _tagged(str(m.get(field)))
                for m in tags.get("models") or []
                if isinstance(m, dict)
                for field in ("name", "model")
                if m.get(field)
            }
            if _tagged(self.model.model_id) not in pulled:
                return Availability(False, self.not_pulled())
            if self._trained_context is None:
                self._trained_context = self._read_trained_context()
        except errors.BackendError as err:
            return Availability(False, f"{scrub(self.base_url)} not usable: {err}")
        trained = self._trained_context
        if trained and self.model.context_window > trained:
            return Availability(
                False,
                f"context_window {self.model.context_window} is over the {trained} tokens "
                f"'{self.model.model_id}' was trained for (Ollama's /api/show): Ollama would "
                f"cap num_ctx there and cut longer prompts; set context_window <= {trained}",
            )
        return Availability(True)

    def _read_trained_context(self) -> int:
        """``<architecture>.context_length`` of ``POST /api/show``; 0 when it does not say."""
        shown = self._get_json("POST", "/api/show", {"model": self.model.model_id})
        info = shown.get("model_info")
        if not isinstance(info, dict):
            return 0
        lengths = [v for k, v in info.items() if k.endswith(".context_length")]
        return int(lengths[0]) if lengths and isinstance(lengths[0], int) else 0

    def _get_json(self, method: str, path: str, body: Any) -> dict[str, Any]:
        try:
            response = self._http().request(
                method, path, json=body, headers=self._headers(),
                timeout=min(PROBE_TIMEOUT_S, self.model.timeout_s),
            )  # fmt: skip
            if response.status_code >= 400:
                raise self._status_error(response.status_code, response.text, response.headers)
            found = response.json()
        except _TRANSPORT_ERRORS as exc:
            raise map_sdk_error(exc, PROVIDER) from None
        if not isinstance(found, dict):
            raise errors.MalformedResponse(f"{PROVIDER}: {path} answered no JSON object")
        return found

    # errors
    def _failed(self, exc: Exception) -> errors.BackendError:
        """The error for a failed call. An unreachable server, or a model it no longer has, is
        taken as down for one availability TTL, so this process's next picks skip it."""
        err = map_sdk_error(exc, PROVIDER)  # a BackendError comes back as it is
        if isinstance(err, errors.BackendUnavailable):
            self._probe = (time.monotonic(), Availability(False, str(err)))
        return err

    def _raise_error_object(self, obj: Mapping[str, Any]) -> None:
        """An ``{"error": ...}`` object inside a 200 answer (Ollama's stream error): raise it."""
        message = obj.get("error")
        if message is not None:
            raise self._status_error(0, json.dumps({"error": message}), {})

    def _status_error(self, status: int, body: str, headers: Any) -> errors.BackendError:
        """The error for an HTTP ``status`` (0: an error line in a 200 stream) and its body."""
        try:
            message = json.loads(body).get("error")
        except (ValueError, AttributeError):
            message = None
        message = str(message)[:300] if message else body[:300].strip()
        text = scrub(f"{PROVIDER}: " + (f"HTTP {status}: " if status else "") + message)
        code = status or None
        lowered = message.lower()
        if status == 404 and "not found" in lowered and "model" in lowered:
            return errors.BackendUnavailable(f"{PROVIDER}: {self.not_pulled()}", status_code=404)
        if status == 429:
            return errors.RateLimited(text, status_code=429, retry_after=parse_retry_after(headers))
        if status in (401, 403):
            return errors.AuthError(text, status_code=status)
        if status == 408:
            return errors.BackendTimeout(text, status_code=408)
        if 400 <= status < 500:
            if any(marker in lowered for marker in _CONTEXT_MARKERS):
                return errors.ContextTooLong(text, status_code=status)
            return errors.InvalidRequest(text, status_code=status)
        return errors.ServerError(text, status_code=code)


@register_backend(PROVIDER, options=OPTIONS, validate=validate_options)
def make_ollama(model: ModelConfig) -> OllamaBackend:
    return OllamaBackend(model)
