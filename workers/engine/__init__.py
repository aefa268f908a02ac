"""The embedded engine: Gemma 3 270M (Q4_K_M GGUF) run in-process by llama.cpp.

- :mod:`workers.engine.engine`: :class:`LocalEngine` and :func:`get_engine` (one per process);
- :mod:`workers.engine.server`: the OpenAI-compatible HTTP server over it (``tierflow
  local-engine``), which the default local tiers reach through the ``openai`` SDK;
- :mod:`workers.engine.loader`: the GGUF file and the ``Llama`` class (extra buffer types);
- :mod:`workers.engine.probe`: the child process that tries the extra-buffer path once per CPU.

The ``llamacpp`` backend (:mod:`workers.backends.llamacpp`) calls the engine without HTTP. The
engine imports no backend, task or pipeline module (an import-linter contract). Importing this
package imports nothing heavy: ``llama_cpp`` is loaded when an engine is made.
"""
