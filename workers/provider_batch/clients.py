"""The official SDK clients that submit, poll and cancel provider batches, and the errors they
raise mapped onto :mod:`tierflow.core.errors` (:data:`SDK_FAILURES`, :func:`batch_error`).

Built like the backends' (the key read by the SDK's caller from the variable the model names,
never stored; the model's ``base_url``), one per model and key per process. ``max_retries=0``:
a failed submit or poll is tried again at the next beat tick, and an SDK retry of a create
could submit a batch twice.
"""

from __future__ import annotations

import hashlib
import os

import anthropic
import httpx2
import openai

from tierflow.core import errors
from tierflow.core.config import ModelConfig
from workers.backends.sdk_errors import map_sdk_error

CLIENT_TIMEOUT_S = 120.0  # an upload of a large input file, a download of its results
_clients: dict[tuple[str, str, str], object] = {}
# What a submit, poll or cancel may raise besides tierflow's own errors: the SDKs', the transport's,
# and ValueError for a body that is not valid JSON.
SDK_FAILURES = (openai.OpenAIError, anthropic.AnthropicError, httpx2.HTTPError, ValueError)


def batch_error(exc: Exception, provider: str) -> errors.BackendError:
    """The :class:`~tierflow.core.errors.BackendError` for a failed submit, poll or cancel: a
    backend error as it is, a config error (the model left the config) as an invalid request,
    anything in :data:`SDK_FAILURES` mapped like a call's error: its text built without the SDK's
    message and scrubbed of keys, safe to log or store."""
    if isinstance(exc, errors.ConfigError):
        return errors.InvalidRequest(str(exc))
    return map_sdk_error(exc, provider)


def _key(model: ModelConfig) -> tuple[str, str]:
    env = model.key_variable or ""
    key = os.environ.get(env) if env else None
    if not key:
        raise errors.AuthError(f"{model.provider}: {env or 'its API key variable'} not set")
    return env, key


def _cache_key(model: ModelConfig, key: str) -> tuple[str, str, str]:
    return (model.name, model.base_url or "", hashlib.sha256(key.encode()).hexdigest())


def openai_client(model: ModelConfig) -> openai.OpenAI:
    _, key = _key(model)
    found = _clients.get(_cache_key(model, key))
    if not isinstance(found, openai.OpenAI):
        found = openai.OpenAI(
            api_key=key, base_url=model.base_url, max_retries=0, timeout=CLIENT_TIMEOUT_S
        )
        _clients[_cache_key(model, key)] = found
    return found


def anthropic_client(model: ModelConfig) -> anthropic.Anthropic:
    _, key = _key(model)
    found = _clients.get(_cache_key(model, key))
    if not isinstance(found, anthropic.Anthropic):
        found = anthropic.Anthropic(
            api_key=key, base_url=model.base_url, max_retries=0, timeout=CLIENT_TIMEOUT_S
        )
        _clients[_cache_key(model, key)] = found
    return found
