"""Settings and llm_config.yaml: invalid input fails at start, naming the bad field."""

from __future__ import annotations

from pathlib import Path

import pytest

from tierflow.core.config import load_config, parse_config
from tierflow.core.errors import ConfigError
from tierflow.core.settings import Settings, get_settings, redact_url, reset_settings


def test_packaged_default_config_is_valid() -> None:
    config = load_config(None)
    assert [m.name for m in config.tier_models("local_fast")] == ["gemma3-270m"]
    assert config.baseline().name == "claude-sonnet-4-5"
    assert config.baseline().price(1_000_000, 0) == pytest.approx(3.0)


def test_bad_provider_field_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "c.yaml"
    bad.write_text(
        "tiers:\n  local_fast:\n    models:\n      - name: x\n        provider: fake\n"
        "        model_id: m\n        input_cost_per_million: -1\n"
    )
    with pytest.raises(ConfigError, match=r"tiers\.local_fast\.models\.0\.input_cost_per_million"):
        load_config(bad)


def test_unknown_tier_and_unknown_field_rejected() -> None:
    with pytest.raises(ConfigError, match=r"tiers\.gpu_giant"):
        parse_config({"tiers": {"gpu_giant": {"models": []}}})
    with pytest.raises(ConfigError, match=r"routing\.prefer_lcoal"):
        parse_config({"tiers": {}, "routing": {"prefer_lcoal": True}})


def test_env_expansion_and_missing_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = {
        "tiers": {
            "local_fast": {
                "models": [
                    {
                        "name": "a",
                        "provider": "vllm",
                        "model_id": "m",
                        "base_url": "${VLLM_X:-http://d/v1}",
                    }
                ]
            }
        }
    }
    assert parse_config(raw).tier_models("local_fast")[0].base_url == "http://d/v1"
    monkeypatch.setenv("VLLM_X", "http://gpu-1:8000/v1")
    assert parse_config(raw).tier_models("local_fast")[0].base_url == "http://gpu-1:8000/v1"
    raw["tiers"]["local_fast"]["models"][0]["base_url"] = "${NOT_SET_ANYWHERE_42}"
    with pytest.raises(ConfigError, match="NOT_SET_ANYWHERE_42"):
        parse_config(raw)


def test_seed_single_price_is_accepted() -> None:
    config = parse_config(
        {
            "tiers": {
                "api_fallback": {
                    "models": [
                        {
                            "name": "s",
                            "provider": "anthropic",
                            "model_id": "m",
                            "cost_per_1k_tokens": 0.003,
                        }
                    ]
                }
            }
        }
    )
    assert config.model("s").price(1000, 1000) == pytest.approx(0.006)


def test_time_limit_must_stay_below_visibility_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIERFLOW_TASK_TIME_LIMIT", "1000")
    monkeypatch.setenv("TIERFLOW_VISIBILITY_TIMEOUT", "900")
    reset_settings()
    try:
        with pytest.raises(ConfigError, match="VISIBILITY_TIMEOUT"):
            get_settings()
    finally:
        monkeypatch.undo()
        reset_settings()


def test_non_redis_broker_rejected() -> None:
    with pytest.raises(ValueError, match="redis"):
        Settings(broker_url="amqp://guest@localhost//")


def test_redact_url_hides_passwords() -> None:
    assert redact_url("rediss://:s3cret@cache:6380/0") == "rediss://:***@cache:6380/0"
    assert redact_url("postgresql://u:pw@db/x") == "postgresql://u:***@db/x"
    assert "s3cret" not in redact_url("redis://user:s3cret@h/0")
    assert redact_url("redis://h:6379/0") == "redis://h:6379/0"


def test_missing_config_file_is_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.yaml")


def test_the_lease_is_a_validated_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().lease_s == 15.0  # a heartbeat, not the 300 s time limit
    monkeypatch.setenv("TIERFLOW_LEASE_S", "0.5")
    with pytest.raises(ValueError, match="lease_s"):
        Settings()
    monkeypatch.setenv("TIERFLOW_LEASE_S", "900")
    with pytest.raises(ValueError):
        Settings()
    monkeypatch.setenv("TIERFLOW_LEASE_S", "5")
    assert Settings().lease_s == 5.0
