"""How many sequences the embedded engine decodes together (its slots), and who reads it.

One answer for the engine (``tierflow local-engine``), the in-process ``llamacpp`` backend and
the ``local_fast`` worker's pool (:func:`workers.pools.pool_concurrency`): the engine-served
models' ``options.slots``, else ``TIERFLOW_ENGINE_SLOTS``, else :func:`default_slots` of this
machine's cores. Imports nothing heavy.
"""

from __future__ import annotations

import os

from tierflow.core import errors
from tierflow.core.config import ModelConfig
from tierflow.core.settings import get_settings


def default_slots(cores: int | None = None) -> int:
    """Slots when none are set: 4 per core, 4 to 16 (``cores`` defaults to this machine's).

    A decode step of several sequences costs little more than one on this small model, so a few
    slots per core raise throughput; past 16 the per-request latency grows faster than the gain.
    """
    cores = cores or os.cpu_count() or 1
    return max(4, min(16, 4 * cores))


def engine_models(tier: str | None = None) -> list[ModelConfig]:
    """The enabled models served by the embedded engine (``base_url`` = its URL), of ``tier``
    or of every tier."""
    settings = get_settings()
    target = settings.local_engine_url.rstrip("/")
    llm = settings.llm
    tiers = list(llm.tiers) if tier is None else [tier]
    return [
        m for t in tiers for m in llm.tier_models(t) if (m.base_url or "").rstrip("/") == target
    ]


def configured_slots() -> int | None:
    """``options.slots`` of the models served at ``TIERFLOW_LOCAL_ENGINE_URL`` (one value), or
    None; ConfigError when they disagree or one is not a whole number."""
    values = {m.options["slots"] for m in engine_models() if "slots" in m.options}
    if len(values) > 1 or any(not isinstance(v, int) or isinstance(v, bool) for v in values):
        raise errors.ConfigError(
            f"models served by the local engine need one whole options.slots: {sorted(values)}"
        )
    return values.pop() if values else None


def engine_slots() -> int:
    """The slots the engine runs with: ``options.slots``, ``TIERFLOW_ENGINE_SLOTS``, or the
    cores' default, in that order."""
    return configured_slots() or get_settings().engine_slots or default_slots()


def engine_serves(tier: str) -> bool:
    """Whether any enabled model of ``tier`` is served by the embedded engine."""
    return bool(engine_models(tier))
