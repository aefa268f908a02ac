"""Backends: one registry, one narrow interface (see :mod:`workers.backends.base`)."""

from workers.backends.base import (
    Availability,
    Backend,
    Completion,
    CompletionRequest,
    StreamChunk,
    register_backend,
    registry,
)

__all__ = [
    "Availability",
    "Backend",
    "Completion",
    "CompletionRequest",
    "StreamChunk",
    "register_backend",
    "registry",
]
