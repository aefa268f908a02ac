"""Backends: one registry, one narrow interface (see :mod:`workers.backends.base`).

Importing this package registers the built-in providers (``openai_compatible`` with its aliases,
``ollama``, ``anthropic``, ``llamacpp``, ``fake`` and ``replay``); a plug-in registers its own with
:func:`register_backend` the same way.
"""

from workers.backends import (
    anthropic_backend,
    fake,
    llamacpp,
    ollama,
    openai_compatible,
    replay,
)
from workers.backends.base import (
    Availability,
    Backend,
    Completion,
    CompletionRequest,
    StreamChunk,
    register_backend,
    registry,
)

BUILTIN_MODULES = (anthropic_backend, fake, llamacpp, ollama, openai_compatible, replay)

__all__ = [
    "BUILTIN_MODULES",
    "Availability",
    "Backend",
    "Completion",
    "CompletionRequest",
    "StreamChunk",
    "register_backend",
    "registry",
]
