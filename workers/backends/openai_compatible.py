"""OpenAI Chat Completions through the official ``openai`` SDK: vLLM, OpenAI and any such server.

Provider names: ``openai`` (the API; key from ``OPENAI_API_KEY`` or ``api_key_env``; base URL from
``base_url`` or the SDK's own ``OPENAI_BASE_URL``), ``vllm`` (default http://127.0.0.1:8000/v1)
and ``openai_compatible`` (any such server at ``base_url``). Local servers need no key unless
``api_key_env`` names one. Ollama has its own backend (:mod:`workers.backends.ollama`, its native
API), since its ``/v1`` cannot set the context size; an Ollama ``/v1`` URL still works here under
``openai_compatible``, without that.

A model whose ``base_url`` is ``TIERFLOW_LOCAL_ENGINE_URL`` is served by the embedded engine
under ``tierflow up``; when it cannot connect, its error carries what the supervisor recorded
("cannot connect to the server (local engine exited with SIGSEGV at 20:31:02; restarting)"),
read only on that error path (:mod:`tierflow.core.engine_state`).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx2
import openai

from tierflow.core import errors
from tierflow.core.config import ModelConfig
from tierflow.core.engine_state import engine_state_note
from tierflow.core.settings import get_settings
from workers.backends.base import (
    Availability,
    Completion,
    CompletionRequest,
    StreamChunk,
    register_backend,
)
from workers.backends.sdk_errors import map_sdk_error, scrub

_DEFAULT_URLS = {"vllm": "http://127.0.0.1:8000/v1"}
# Options of a model served by the embedded engine (base_url = TIERFLOW_LOCAL_ENGINE_URL): read
# by the engine when it starts (workers/engine/server.py, tierflow up), refused on other models.
ENGINE_OPTIONS = ("extra_buffers", "slots")
_PLACEHOLDER_KEY = "not-needed"  # local servers ignore it, but the SDK wants a non-empty key
_SDK_ERRORS = (openai.OpenAIError, httpx2.HTTPError, ValueError)
# A GPU worker keeps hundreds of requests in flight to its vLLM server, so the connection pool
# must not be the bound (the SDK's default keeps only 100 idle connections: the rest would
# reconnect on every call).
HTTP_LIMITS = httpx2.Limits(
    max_connections=4096, max_keepalive_connections=2048, keepalive_expiry=30.0
)
# The threads of a worker's pool share a model's clients in shards, each thread keeping to one:
# an httpx pool hands out connections under one lock and walks all of its connections for each
# request, so one client for 640 threads spent most of the worker's CPU there. bench_gpu.py, one
# worker x640 threads against a direct asyncio client, same run each: 1 client 76% (30.6 ms of
# CPU a job), 16 shards 89% (18.3 ms), 64 shards 95-96% (20-22 ms). A shard is made at its first
# use, so a worker with few threads makes few.
CLIENT_SHARDS = 64
_thread_shard = threading.local()
_next_shard = itertools.count()


def thread_shard() -> int:
    """This thread's shard of every backend's clients (0 .. CLIENT_SHARDS-1), fixed at its first
    call: threads are spread over the shards in the order they first call."""
    shard: int | None = getattr(_thread_shard, "index", None)
    if shard is None:
        shard = _thread_shard.index = next(_next_shard) % CLIENT_SHARDS
    return shard


def availability_ttl() -> float:
    """Seconds an availability probe's answer is reused (``TIERFLOW_AVAILABILITY_TTL_S``, read
    through :class:`~tierflow.core.settings.Settings`: a bad value stops the start)."""
    return get_settings().availability_ttl_s


class OpenAICompatibleBackend:
    def __init__(self, model: ModelConfig) -> None:
        self.model = model
        self.provider = model.provider
        self.is_api = model.provider == "openai"
        self.key_env = model.key_variable
        # None lets the SDK honour OPENAI_BASE_URL (then https://api.openai.com/v1).
        self.base_url = model.base_url or _DEFAULT_URLS.get(model.provider)
        self._clients: dict[int, openai.OpenAI] = {}  # by shard, for the key of the digest
        self._client_key_digest = ""
        self._clients_lock = threading.Lock()
        self._probe: tuple[float, Availability] | None = None
        engine_options = sorted(set(model.options) & set(ENGINE_OPTIONS))
        if engine_options and not self._is_local_engine():
            raise errors.ConfigError(
                f"{model.name}: options {', '.join(engine_options)} are read by the embedded "
                f"engine, so only on a model whose base_url is TIERFLOW_LOCAL_ENGINE_URL"
            )

    def _api_key(self) -> str | None:
        if self.key_env is None:
            return _PLACEHOLDER_KEY
        return os.environ.get(self.key_env) or None

    def _sdk(self) -> openai.OpenAI:
        key = self._api_key()
        if key is None:
            raise errors.AuthError(f"{self.provider}: {self.key_env} not set")
        digest = hashlib.sha256(key.encode()).hexdigest()  # rebuild when the key rotates
        shard = thread_shard()
        client = self._clients.get(shard) if digest == self._client_key_digest else None
        if client is not None:
            return client
        with self._clients_lock:
            if digest != self._client_key_digest:
                self._clients, self._client_key_digest = {}, digest
            client = self._clients.get(shard)
            if client is None:
                # max_retries=0: the fleet retries (cooldown, next model, next tier); SDK retries
                # on top would multiply calls against a provider that is already throttling us.
                client = self._clients[shard] = openai.OpenAI(
                    api_key=key,
                    base_url=self.base_url,
                    max_retries=0,
                    timeout=self.model.timeout_s,
                    http_client=openai.DefaultHttpxClient(limits=HTTP_LIMITS),
                )
        return client

    def request_params(self, request: CompletionRequest) -> dict[str, Any]:
        """The SDK arguments of ``request`` (``chat.completions.create``): body fields plus the
        ``timeout`` option (seconds); a provider batch line sends the same body."""
        messages = [{"role": "system", "content": request.system}] if request.system else []
        messages.append({"role": "user", "content": request.prompt})
        params: dict[str, Any] = {
            "model": self.model.model_id,
            "messages": messages,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "timeout": min(request.timeout_s, self.model.timeout_s),
        }
        if request.stop:
            params["stop"] = list(request.stop)
        if request.json_output and self.model.supports_json:
            params["response_format"] = {"type": "json_object"}
        return params

    def _usage(self, usage: Any) -> tuple[int, int]:
        prompt = getattr(usage, "prompt_tokens", None)
        completion = getattr(usage, "completion_tokens", None)
        if (
            not (isinstance(prompt, int) and isinstance(completion, int))
            or min(prompt, completion) < 0
        ):
            raise errors.MalformedResponse(f"{self.provider}: response carries no token usage")
        return prompt, completion

    def _completion(self, text: str, usage: Any, finish: str | None) -> Completion:
        input_tokens, output_tokens = self._usage(usage)
        return Completion(
            text, input_tokens, output_tokens, self.model.model_id, self.provider, finish
        )

    def complete(self, request: CompletionRequest) -> Completion:
        try:
            response = self._sdk().chat.completions.create(**self.request_params(request))
        except _SDK_ERRORS as exc:
            raise self._failed(exc) from None
        choices = getattr(response, "choices", None)
        choice = choices[0] if isinstance(choices, list) and choices else None
        message = getattr(choice, "message", None)
        if message is None:
            raise errors.MalformedResponse(f"{self.provider}: response has no choices")
        finish = getattr(choice, "finish_reason", None)
        text = getattr(message, "content", None)
        if getattr(message, "refusal", None) or (finish == "content_filter" and not text):
            raise errors.ContentRefused(f"{self.provider}: the model refused the request")
        if not isinstance(text, str):
            raise errors.MalformedResponse(f"{self.provider}: response message has no content")
        return self._completion(text, getattr(response, "usage", None), finish)

    def stream(self, request: CompletionRequest) -> Iterator[StreamChunk]:
        params = self.request_params(request) | {
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        text, usage, finish, refused = "", None, None, False
        try:
            with self._sdk().chat.completions.create(**params) as chunks:
                for chunk in chunks:
                    usage = getattr(chunk, "usage", None) or usage
                    for choice in getattr(chunk, "choices", None) or []:
                        finish = choice.finish_reason or finish
                        delta = getattr(choice.delta, "content", None) if choice.delta else None
                        refused = refused or bool(getattr(choice.delta, "refusal", None))
                        if delta:
                            text += delta
                            yield StreamChunk(delta, text, False, self.provider)
        except _SDK_ERRORS as exc:
            raise self._failed(exc) from None
        if refused and not text:
            raise errors.ContentRefused(f"{self.provider}: the model refused the request")
        yield StreamChunk("", text, True, self.provider, self._completion(text, usage, finish))

    def availability(self) -> Availability:
        if self._api_key() is None:
            return Availability(False, f"{self.key_env} not set")
        if self.is_api:
            return Availability(True)
        cached = self._probe
        if cached is not None and time.monotonic() - cached[0] < availability_ttl():
            return cached[1]
        answer = self._check_server()
        self._probe = (time.monotonic(), answer)
        return answer

    def _failed(self, exc: Exception) -> errors.BackendError:
        """The error for a failed call. A server that cannot be reached (a vLLM node that died)
        is taken as down at once, for one availability TTL, so the retries of this process's
        other calls to it go to the tier's other nodes instead of failing on it again."""
        err = self._explained(map_sdk_error(exc, self.provider))
        if isinstance(err, errors.BackendUnavailable) and not self.is_api:
            self._probe = (time.monotonic(), Availability(False, str(err)))
        return err

    def _explained(self, err: errors.BackendError) -> errors.BackendError:
        """``err``, plus the supervisor's note when this is the embedded engine and it is down."""
        if not isinstance(err, errors.BackendUnavailable) or not self._is_local_engine():
            return err
        note = engine_state_note()
        if note is None:
            return err
        return errors.BackendUnavailable(f"{err} ({note})", retry_after=err.retry_after)

    def _is_local_engine(self) -> bool:
        try:
            engine_url = get_settings().local_engine_url
        except errors.TierflowError:
            return False
        return (self.base_url or "").rstrip("/") == engine_url.rstrip("/")

    def _check_server(self) -> Availability:
        """GET {base_url}/models with a short timeout; any HTTP answer but 5xx/auth means up."""
        try:
            self._sdk().models.list(timeout=min(1.0, self.model.timeout_s))
        except _SDK_ERRORS as exc:
            err = self._explained(map_sdk_error(exc, self.provider))
            if not isinstance(err, errors.InvalidRequest):  # e.g. 404: up, just no /models
                where = scrub(self.base_url or "OPENAI_BASE_URL")
                return Availability(False, f"{where} not usable: {err}")
        return Availability(True)


@register_backend("openai_compatible", "openai", "vllm", options=ENGINE_OPTIONS)
def make_openai_compatible(model: ModelConfig) -> OpenAICompatibleBackend:
    return OpenAICompatibleBackend(model)
