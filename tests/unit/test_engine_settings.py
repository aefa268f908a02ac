"""Settings the engine and the local pools read: a bad value stops the start, naming it."""

from __future__ import annotations

import pytest

from tierflow.core.errors import ConfigError
from tierflow.core.settings import get_settings, reset_settings
from workers.backends.openai_compatible import availability_ttl
from workers.pools import POOLS, pool_concurrency


def test_local_quality_concurrency_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TIERFLOW_LOCAL_QUALITY_CONCURRENCY", raising=False)
    reset_settings()
    assert pool_concurrency("local_quality") == POOLS["local_quality"].concurrency
    monkeypatch.setenv("TIERFLOW_LOCAL_QUALITY_CONCURRENCY", "12")
    reset_settings()
    assert pool_concurrency("local_quality") == 12
    assert pool_concurrency("local_fast") == POOLS["local_fast"].concurrency  # only its own tier
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
