"""The config is checked whole at start: each bad cross-reference fails naming its field, a file
in the seed's own schema loads as it is, and no setting is accepted and ignored."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
import yaml

from tests.support.services import REPO, fake_model, fleet_config
from tierflow.core.config import parse_config
from tierflow.core.errors import ConfigError
from workers.backends import registry

SEED_YAML = """
tiers:
  local_fast:
    models:
      - name: "phi3-mini"
        provider: "fake"
        model_id: "phi3:mini"
        cost_per_1k_tokens: 0.0
        enabled: true
  local_quality:
    models:
      - name: "mixtral"
        provider: "fake"
        model_id: "mixtral:8x7b"
        cost_per_1k_tokens: 0.0
        enabled: true
  api_fallback:
    models:
      - name: "claude-haiku"
        provider: "fake"
        model_id: "claude-haiku-4-5"
        cost_per_1k_tokens: 0.001
        enabled: false
      - name: "gpt-4o"
        provider: "fake"
        model_id: "gpt-4o"
        cost_per_1k_tokens: 0.0025
        enabled: true
routing:
  prefer_local: true
  quality_threshold: 0.7
  max_fallback_attempts: 2
  action_tier_overrides:
    spawn_daemon: "api_fallback"
    orch_status: "local_fast"
"""


def refused(raw: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as caught:
        registry.check(parse_config(raw))
    return str(caught.value)


def test_a_seed_schema_file_loads_and_its_baseline_is_the_first_enabled_api_model() -> None:
    config = parse_config(yaml.safe_load(SEED_YAML))
    registry.check(config)
    baseline = config.baseline()
    assert baseline is not None and baseline.name == "gpt-4o"  # haiku is disabled
    assert baseline.price(1000, 0) == pytest.approx(0.0025)  # the seed's per-1k price


def test_a_local_only_fleet_has_no_baseline_and_loads() -> None:
    raw = fleet_config()
    raw["tiers"]["api_fallback"]["models"] = []
    raw["routing"].pop("baseline_model")
    assert parse_config(raw).baseline() is None


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda r: r["routing"].update(baseline_model="claude-opus-9"), "routing.baseline_model"),
        (
            lambda r: (
                r["routing"].update(action_tier_overrides={"x": "local_quality"})
                or r["tiers"]["local_quality"].update(models=[])
            ),
            "routing.action_tier_overrides.x",
        ),
        (
            lambda r: r["routing"].update(action_tier_overrides={"x": "gpu"}),
            "action_tier_overrides",
        ),
        (lambda r: r.update(caching={"semantic_threshold": 2}), "caching.semantic_threshold"),
        (
            lambda r: r["tiers"]["local_fast"].update(models=[fake_model("m", provider="olama")]),
            "tiers.local_fast.models.0.provider",
        ),
        (
            lambda r: r["tiers"]["api_fallback"].update(
                models=[fake_model("fake-api", latncy_ms=5)]
            ),
            "tiers.api_fallback.models.0.options",
        ),
        (lambda r: r["routing"].update(quality_treshold=0.5), "quality_treshold"),
    ],
)
def test_each_bad_cross_reference_fails_naming_its_field(change: Any, field: str) -> None:
    raw = fleet_config()
    change(raw)
    assert field in refused(raw)


def test_every_command_refuses_a_bad_file_at_start(tmp_path: Any) -> None:
    raw = fleet_config(local_fast=[fake_model("m", provider="olama")])
    path = tmp_path / "llm_config.yaml"
    path.write_text(yaml.safe_dump(raw))
    env = {"TIERFLOW_CONFIG": str(path), "PATH": "/usr/bin:/bin"}
    for args in (["route", "--explain", "--action", "extract_topic", "x"], ["mode"]):
        done = subprocess.run(
            [sys.executable, "-m", "tierflow.cli", *args],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert "tiers.local_fast.models.0.provider" in done.stderr
        assert "Traceback" not in done.stderr
