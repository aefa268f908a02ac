"""The providers' batch window is fixed (24 h): the config cannot set it, and a batch deadline
shorter than it is refused; a batch attempt reads its deferral only where one can be (pure: no
service)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tests.support.services import fleet_config
from tierflow.core.config import PROVIDER_BATCH_WINDOW_HOURS, parse_config
from tierflow.core.constants import Tier
from tierflow.core.errors import ConfigError
from tierflow.store import provider_batches
from workers.pipeline.defer import HOLD_MARGIN_S, HeldByProviderBatch, hold_seconds, tier_can_defer


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


def test_a_fresh_claim_on_a_tier_with_no_batch_api_model_reads_no_deferral(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """HeldByProviderBatch reads the batch's flag and the attempt's item only where a deferral
    can be (a Batch-API model on the tier) or the claim found the attempt held."""
    config = parse_config(fleet_config())  # fake models only
    api = fleet_config()
    api["tiers"]["api_fallback"]["models"][0].update(provider="openai", model_id="gpt-x")
    with_api = parse_config(api)
    assert not tier_can_defer(config, Tier.API_FALLBACK)
    assert tier_can_defer(with_api, Tier.API_FALLBACK)
    assert not tier_can_defer(with_api, Tier.LOCAL_FAST)

    reads: list[str] = []

    def deferral_of(batch_id: str, job_id: str, attempt_no: int) -> provider_batches.Deferral:
        reads.append(job_id)
        return provider_batches.Deferral(True, None)

    monkeypatch.setattr(provider_batches, "deferral_of", deferral_of)
    job = SimpleNamespace(batch_id="b1")
    fresh = SimpleNamespace(job=job, job_id="j1", attempt_no=0, busy=None, config=with_api,
                            tier=Tier.LOCAL_FAST, provider_batch=False, stopped=False)  # fmt: skip
    HeldByProviderBatch().run(fresh)  # type: ignore[arg-type]
    assert reads == [] and fresh.provider_batch is False
    fresh.tier = Tier.API_FALLBACK
    HeldByProviderBatch().run(fresh)  # type: ignore[arg-type]
    assert reads == ["j1"] and fresh.provider_batch is True
