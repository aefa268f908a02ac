"""Settings the engine and the local pools read: a bad value stops the start, naming it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tierflow.core.config import load_config
from tierflow.core.errors import ConfigError
from tierflow.core.settings import get_settings, reset_settings
from workers.backends import registry
from workers.backends.openai_compatible import OpenAICompatibleBackend, availability_ttl
from workers.engine.slots import configured_slots, default_slots
from workers.pools import POOLS, pool_concurrency


def test_local_quality_concurrency_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TIERFLOW_LOCAL_QUALITY_CONCURRENCY", raising=False)
    reset_settings()
    assert pool_concurrency("local_quality") == POOLS["local_quality"].concurrency
    fast = pool_concurrency("local_fast")
    monkeypatch.setenv("TIERFLOW_LOCAL_QUALITY_CONCURRENCY", "12")
    reset_settings()
    assert pool_concurrency("local_quality") == 12
    assert pool_concurrency("local_fast") == fast  # only its own tier
    for bad in ("0", "-3", "many", "1.5"):
        monkeypatch.setenv("TIERFLOW_LOCAL_QUALITY_CONCURRENCY", bad)
        reset_settings()
        with pytest.raises(ConfigError, match="TIERFLOW_LOCAL_QUALITY_CONCURRENCY"):
            pool_concurrency("local_quality")


def test_availability_ttl_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIERFLOW_AVAILABILITY_TTL_S", "7.5")
    reset_settings()
    assert availability_ttl() == 7.5 == get_settings().availability_ttl_s
    for bad in ("soon", "-1"):
        monkeypatch.setenv("TIERFLOW_AVAILABILITY_TTL_S", bad)
        reset_settings()
        with pytest.raises(ConfigError, match="TIERFLOW_AVAILABILITY_TTL_S"):
            availability_ttl()


def _engine_config(tmp_path: Path, *slots: object, base_url: str | None = None) -> Path:
    url = base_url or get_settings().local_engine_url
    models = [
        {
            "name": f"gemma-{i}",
            "provider": "openai_compatible",
            "model_id": "gemma-3-270m",
            "base_url": url,
            "options": {"extra_buffers": "off", "slots": n},
        }
        for i, n in enumerate(slots)
    ]
    path = tmp_path / "llm_config.yaml"
    path.write_text(json.dumps({"tiers": {"local_fast": {"models": models}}}))  # JSON is YAML
    return path


def test_engine_options_are_accepted_on_engine_served_models(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TIERFLOW_CONFIG", str(_engine_config(tmp_path, 6)))
    reset_settings()
    config = get_settings().llm
    registry.check(config)  # refused before: openai_compatible read no options
    assert configured_slots() == 6  # what `tierflow local-engine` (and so `tierflow up`) sizes
    model = config.tier_models("local_fast")[0]
    OpenAICompatibleBackend(model)
    elsewhere = model.model_copy(update={"base_url": "http://127.0.0.1:11434/v1"})
    with pytest.raises(ConfigError, match="TIERFLOW_LOCAL_ENGINE_URL"):
        OpenAICompatibleBackend(elsewhere)  # an Ollama model would ignore them: refused


def test_engine_served_models_must_agree_on_slots(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TIERFLOW_CONFIG", str(_engine_config(tmp_path, 4, 8)))
    reset_settings()
    with pytest.raises(ConfigError, match=r"options\.slots"):
        configured_slots()


def test_default_slots_follow_the_cores() -> None:
    assert [default_slots(c) for c in (1, 2, 3, 8)] == [4, 8, 12, 16]


def test_engine_models_concurrency_follows_the_slots(monkeypatch: pytest.MonkeyPatch) -> None:
    def engine_limits() -> list[int | None]:
        config = load_config(None)
        url = get_settings().local_engine_url
        return [
            m.limits.max_concurrency
            for tier in ("local_fast", "local_quality")
            for m in config.tier_models(tier)
            if m.base_url == url
        ]

    monkeypatch.delenv("TIERFLOW_ENGINE_SLOTS", raising=False)
    assert engine_limits() == [8, 8] == [default_slots(2)] * 2  # the 2-core default
    monkeypatch.setenv("TIERFLOW_ENGINE_SLOTS", "6")
    reset_settings()
    assert engine_limits() == [6, 6]


def test_local_fast_pool_follows_the_engine_slots(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A local_fast worker gets a thread per slot of the engine that serves its models, never
    fewer than its own size; a tier the engine does not serve keeps its size."""
    monkeypatch.delenv("TIERFLOW_ENGINE_SLOTS", raising=False)
    monkeypatch.setenv("TIERFLOW_CONFIG", str(_engine_config(tmp_path, 6)))
    reset_settings()
    assert pool_concurrency("local_fast") == 6
    monkeypatch.setenv("TIERFLOW_CONFIG", str(_engine_config(tmp_path, 1)))
    reset_settings()
    assert pool_concurrency("local_fast") == POOLS["local_fast"].concurrency  # 1 slot: own size
    ollama = _engine_config(tmp_path, 6, base_url="http://127.0.0.1:11434/v1")
    monkeypatch.setenv("TIERFLOW_CONFIG", str(ollama))
    reset_settings()
    assert pool_concurrency("local_fast") == POOLS["local_fast"].concurrency
    monkeypatch.delenv("TIERFLOW_CONFIG")
    monkeypatch.setenv("TIERFLOW_ENGINE_SLOTS", "12")
    reset_settings()
    assert pool_concurrency("local_fast") == 12  # the packaged config: the engine serves it
