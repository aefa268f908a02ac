"""The providers' batch window is fixed (24 h): the config cannot set it, and a batch deadline
shorter than it is refused (pure: no service)."""

from __future__ import annotations

import pytest

from tests.support.services import fleet_config
from tierflow.core.config import PROVIDER_BATCH_WINDOW_HOURS, parse_config
from tierflow.core.errors import ConfigError
from workers.pipeline.defer import HOLD_MARGIN_S, hold_seconds


def config_with(**provider_batches: object) -> dict:
    config = fleet_config()
    config["provider_batches"] = provider_batches
    return config


def test_window_hours_is_refused_naming_the_fixed_window() -> None:
    for hours in (12, 24, 48):
        with pytest.raises(ConfigError, match=r"window_hours.*fixed at 24h"):
            parse_config(config_with(window_hours=hours))


def test_min_deadline_below_the_window_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"min_deadline_hours must be at least .*24h"):
        parse_config(config_with(min_deadline_hours=12))
    longer = parse_config(config_with(min_deadline_hours=36))
    assert longer.provider_batches.min_deadline_hours == 36
    assert parse_config(config_with()).provider_batches.min_deadline_hours == 24


def test_a_deferred_attempt_is_held_past_the_providers_window() -> None:
    assert PROVIDER_BATCH_WINDOW_HOURS == 24
    assert hold_seconds() == 24 * 3600 + HOLD_MARGIN_S
