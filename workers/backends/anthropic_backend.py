"""Anthropic's Messages API through the official ``anthropic`` SDK.

Key from the variable named by ``api_key_env`` (default ``ANTHROPIC_API_KEY``); base URL from
``base_url``, else the SDK's own ``ANTHROPIC_BASE_URL``, else api.anthropic.com. JSON output asks
for it in the system prompt and prefills the assistant turn with ``{`` (returned text includes it);
``options: {prefill: false}`` keeps only the instruction, for models that refuse a prefill.
The SDK (2.x) has no typed ``temperature`` argument: it is sent as a body field unless
``options: {send_temperature: false}`` (for models that reject sampling parameters).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx2

from tierflow.core import errors
from tierflow.core.config import DEFAULT_KEY_VARIABLES, ModelConfig
from workers.backends.base import (
    Availability,
    Completion,
    CompletionRequest,
    StreamChunk,
    register_backend,
)
from workers.backends.sdk_errors import map_sdk_error

_JSON_INSTRUCTION = "Answer with one JSON object only: no prose, no code fences."
_SDK_ERRORS = (anthropic.AnthropicError, httpx2.HTTPError, ValueError)


class AnthropicBackend:
    provider = "anthropic"

    def __init__(self, model: ModelConfig) -> None:
        self.model = model
        self.key_env = model.api_key_env or DEFAULT_KEY_VARIABLES["anthropic"]
        self._client: anthropic.Anthropic | None = None
        self._client_key_digest = ""

    def _api_key(self) -> str | None:
        return os.environ.get(self.key_env) or None

    def _sdk(self) -> anthropic.Anthropic:
        key = self._api_key()
        if key is None:
            raise errors.AuthError(f"anthropic: {self.key_env} not set")
        digest = hashlib.sha256(key.encode()).hexdigest()  # rebuild when the key rotates
        if self._client is None or digest != self._client_key_digest:
            # max_retries=0: the fleet retries (cooldown, next model, next tier); SDK retries on
            # top would multiply calls against a provider that is already overloaded.
            self._client = anthropic.Anthropic(
                api_key=key,
                base_url=self.model.base_url,
                max_retries=0,
                timeout=self.model.timeout_s,
            )
            self._client_key_digest = digest
        return self._client

    def request_params(self, request: CompletionRequest) -> tuple[dict[str, Any], str]:
        """The SDK arguments of ``request`` (``messages.create``: body fields plus the
        ``timeout`` option, seconds) and the prefill the returned text must be prefixed with; a
        provider batch line sends the same body."""
        system = request.system or ""
        messages: list[dict[str, str]] = [{"role": "user", "content": request.prompt}]
        prefill = ""
        if request.json_output:
            system = f"{system}\n\n{_JSON_INSTRUCTION}".strip()
            if self.model.options.get("prefill", True):
                prefill = "{"
                messages.append({"role": "assistant", "content": prefill})
        params: dict[str, Any] = {
            "model": self.model.model_id,
            "messages": messages,
            "max_tokens": request.max_tokens,
            "timeout": min(request.timeout_s, self.model.timeout_s),
        }
        if self.model.options.get("send_temperature", True):
            # anthropic 2.x dropped the typed `temperature` argument; the wire field remains.
            params["extra_body"] = {"temperature": request.temperature}
        if system:
            params["system"] = system
        if request.stop:
            params["stop_sequences"] = list(request.stop)
        return params, prefill

    def _completion(self, text: str, usage: tuple[Any, Any], stop_reason: Any) -> Completion:
        if stop_reason == "refusal":
            raise errors.ContentRefused(
                "anthropic: the model refused the request (stop_reason refusal)"
            )
        if not all(isinstance(t, int) and t >= 0 for t in usage):
            raise errors.MalformedResponse("anthropic: response carries no token usage")
        return Completion(text, usage[0], usage[1], self.model.model_id, self.provider, stop_reason)

    def complete(self, request: CompletionRequest) -> Completion:
        params, prefill = self.request_params(request)
        try:
            message = self._sdk().messages.create(**params)
        except _SDK_ERRORS as exc:
            raise map_sdk_error(exc, self.provider) from None
        content = getattr(message, "content", None)
        if not isinstance(content, list):
            raise errors.MalformedResponse("anthropic: response has no content")
        text = "".join(b.text for b in content if getattr(b, "type", None) == "text")
        usage = getattr(message, "usage", None)
        tokens = (getattr(usage, "input_tokens", None), getattr(usage, "output_tokens", None))
        return self._completion(prefill + text, tokens, getattr(message, "stop_reason", None))

    def stream(self, request: CompletionRequest) -> Iterator[StreamChunk]:
        params, prefill = self.request_params(request)
        text, input_tokens, output_tokens, stop_reason = "", None, None, None
        try:
            with self._sdk().messages.create(**params, stream=True) as events:
                for event in events:
                    kind = getattr(event, "type", None)
                    if kind == "message_start":
                        usage = getattr(event.message, "usage", None)
                        input_tokens = getattr(usage, "input_tokens", None)
                        output_tokens = getattr(usage, "output_tokens", None)
                        if prefill:
                            text = prefill
                            yield StreamChunk(prefill, text, False, self.provider)
                    elif kind == "content_block_delta" and event.delta.type == "text_delta":
                        text += event.delta.text
                        yield StreamChunk(event.delta.text, text, False, self.provider)
                    elif kind == "message_delta":
                        stop_reason = event.delta.stop_reason or stop_reason
                        usage = getattr(event, "usage", None)
                        output_tokens = getattr(usage, "output_tokens", None) or output_tokens
                        input_tokens = getattr(usage, "input_tokens", None) or input_tokens
        except _SDK_ERRORS as exc:
            raise map_sdk_error(exc, self.provider) from None
        completion = self._completion(text, (input_tokens, output_tokens), stop_reason)
        yield StreamChunk("", text, True, self.provider, completion)

    def availability(self) -> Availability:
        if self._api_key() is None:
            return Availability(False, f"{self.key_env} not set")
        return Availability(True)


@register_backend("anthropic", options=("prefill", "send_temperature"))
def make_anthropic(model: ModelConfig) -> AnthropicBackend:
    return AnthropicBackend(model)
