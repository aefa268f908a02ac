"""The ``llamacpp`` provider: the embedded engine (:mod:`workers.engine`), called in-process.

A thin registered backend: the model, the batching and the extra-buffers choice live in
:mod:`workers.engine.engine`; this module maps a :class:`CompletionRequest` onto the engine and
its result onto a :class:`Completion`. Options (``options:`` of the model): ``model_path`` (a
GGUF; default: the packaged Gemma 3 270M), ``n_ctx`` (context tokens per slot, default 2048) and
``slots`` (sequences decoded together; default ``TIERFLOW_ENGINE_SLOTS``, else sized from the
cores) and ``extra_buffers`` (``auto``, ``on`` or ``off``; default ``auto``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

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
from workers.engine.engine import (
    DEFAULT_N_CTX,
    EngineResult,
    LocalEngine,
    get_engine,
)
from workers.engine.loader import import_llama_cpp, resolve_model_path
from workers.engine.slots import default_slots


class LlamaCppBackend:
    """The ``llamacpp`` provider: the embedded engine, called in-process."""

    provider = "llamacpp"

    def __init__(self, model: ModelConfig) -> None:
        self.model = model
        self.model_path: str | None = model.options.get("model_path")
        self.n_ctx = int(model.options.get("n_ctx", DEFAULT_N_CTX))
        self.extra_buffers = str(model.options.get("extra_buffers", "auto"))
        self.slots = int(
            model.options.get("slots") or get_settings().engine_slots or default_slots()
        )

    def _engine(self) -> LocalEngine:
        return get_engine(
            self.model_path, n_ctx=self.n_ctx, slots=self.slots, extra_buffers=self.extra_buffers
        )

    def availability(self) -> Availability:
        try:
            import_llama_cpp()
            resolve_model_path(self.model_path)
        except errors.BackendUnavailable as exc:
            return Availability(False, str(exc))
        return Availability(True)

    def _args(self, request: CompletionRequest) -> dict[str, Any]:
        return {
            "system": request.system,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "stop": request.stop,
            "timeout_s": min(request.timeout_s, self.model.timeout_s),
        }

    def _completion(self, result: EngineResult) -> Completion:
        return Completion(
            result.text,
            result.prompt_tokens,
            result.completion_tokens,
            self.model.model_id,
            self.provider,
            result.finish_reason,
        )

    def complete(self, request: CompletionRequest) -> Completion:
        return self._completion(self._engine().complete(request.prompt, **self._args(request)))

    def stream(self, request: CompletionRequest) -> Iterator[StreamChunk]:
        text = ""
        for chunk in self._engine().stream(request.prompt, **self._args(request)):
            if chunk.result is not None:
                yield StreamChunk("", text, True, self.provider, self._completion(chunk.result))
            else:
                text += chunk.delta
                yield StreamChunk(chunk.delta, text, False, self.provider)


@register_backend("llamacpp")
def make_llamacpp(model: ModelConfig) -> LlamaCppBackend:
    return LlamaCppBackend(model)
