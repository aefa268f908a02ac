"""Classification and tier plans: the seed's examples, its route_request, options and modes."""

from __future__ import annotations

from typing import Any

import pytest

from router.classify import ACTION_COMPLEXITY, classify_task
from router.explain import explain
from router.plan import TierPlan, plan_job
from tests.support.services import fake_model, fleet_config
from tierflow.core.config import LLMConfig, load_config, parse_config
from tierflow.core.constants import Complexity, Mode, Tier

LF, LQ, API = Tier.LOCAL_FAST, Tier.LOCAL_QUALITY, Tier.API_FALLBACK

# (action, prompt, tier) from the seed's "Task Classification" and "Test Router" sections.
SEED_EXAMPLES = [
    ("classify_memory", "Is this a decision or a fact? 'We chose React over Vue'", LF),
    ("extract_topic", "Extract topic from: 'Fixed authentication bug in login flow'", LF),
    ("yes_no_decision", "Should we retry this action? Previous attempts: 3, Error: timeout", LF),
    ("classify_memory", "Extract topic from: Implemented async caching", LF),
    ("edit_file", "Add error handling to this function: [code]", LQ),
    ("write_memory", "Summarize these 5 decisions into a coherent note", LQ),
    ("consolidate", "Merge these 3 duplicate memory entries: [entries]", LQ),
    ("edit_file", "Generate a Python function to parse JSON", LQ),
    ("spawn_daemon", "ORCHESTRATE: Implement user authentication with tests", API),
    ("debug_error", "Analyze this stack trace and suggest fixes: [trace]", API),
    ("multi_file_refactor", "Refactor component hierarchy: [10 files]", API),
]
# The seed's route_request: the chain after each starting tier.
SEED_CHAINS = {LF: [LF, LQ, API], LQ: [LQ, API], API: [API]}


@pytest.fixture(scope="module")
def default_config() -> LLMConfig:
    return load_config(None)


def config_with(**routing: Any) -> LLMConfig:
    return parse_config(fleet_config(**routing))


def plan(
    action: str,
    config: LLMConfig,
    mode: Mode = Mode.AUTO,
    prompt: str = "a short prompt",
    **context: Any,
) -> TierPlan:
    return plan_job(action, prompt, context, config, mode)


@pytest.mark.parametrize(("action", "prompt", "tier"), SEED_EXAMPLES)
def test_every_seed_example_routes_to_the_seeds_tier(
    default_config: LLMConfig, action: str, prompt: str, tier: Tier
) -> None:
    result = plan(action, default_config, prompt=prompt)
    assert result.tier is tier
    assert result.chain == SEED_CHAINS[tier]
    assert result.error is None


@pytest.mark.parametrize(
    ("action", "complexity"),
    [
        ("classify_memory", "simple"),
        ("extract_topic", "simple"),
        ("yes_no_decision", "simple"),
        ("edit_file", "moderate"),
        ("write_memory", "moderate"),
        ("consolidate", "moderate"),
        ("spawn_daemon", "complex"),
        ("debug_error", "complex"),
        ("multi_file_refactor", "complex"),
    ],
)
def test_action_table_matches_the_issue(action: str, complexity: str) -> None:
    assert ACTION_COMPLEXITY[action].value == complexity
    assert classify_task(action, "short", {}).complexity.value == complexity


def test_unknown_action_takes_the_documented_default(default_config: LLMConfig) -> None:
    found = classify_task("brand_new_action", "hi", {})
    assert found.complexity is Complexity.MODERATE
    assert "not in the table" in found.reasons[0]
    assert plan("unknown", default_config).chain == [LQ, API]
    simple = config_with(default_complexity="simple")
    assert plan("brand_new_action", simple).chain == [LF, LQ, API]


@pytest.mark.parametrize(
    ("context", "prompt", "expected"),
    [
        ({"files": ["a.py", "b.py"]}, "x", Complexity.MODERATE),
        ({"files": ["a", "b", "c", "d"]}, "x", Complexity.COMPLEX),
        ({"files": 5}, "x", Complexity.COMPLEX),
        ({"steps": ["plan", "do"]}, "x", Complexity.MODERATE),
        ({"steps": 4}, "x", Complexity.COMPLEX),
        ({}, "y" * 4_001, Complexity.MODERATE),
        ({}, "y" * 16_001, Complexity.COMPLEX),
        ({"files": ["only-one.py"], "steps": 1}, "x", Complexity.SIMPLE),
    ],
)
def test_prompt_and_context_raise_a_simple_action(
    context: dict[str, Any], prompt: str, expected: Complexity
) -> None:
    found = classify_task("classify_memory", prompt, context)
    assert found.complexity is expected
    if expected is not Complexity.SIMPLE:
        assert "raised to" in found.reasons[-1]


def test_prompt_and_context_never_lower_a_complex_action() -> None:
    assert classify_task("debug_error", "x", {"files": []}).complexity is Complexity.COMPLEX


@pytest.mark.parametrize("flag", ["affects_system_state", "user_visible_output"])
def test_quality_critical_flags_send_a_simple_job_to_the_api(
    default_config: LLMConfig, flag: str
) -> None:
    result = plan("classify_memory", default_config, **{flag: True})
    assert result.quality_critical
    assert result.chain == [API]
    assert flag in result.reasons[-1]


def test_exec_is_quality_critical(default_config: LLMConfig) -> None:
    result = plan("exec", default_config)
    assert result.quality_critical and result.chain == [API]


def test_prefer_local_false_sends_moderate_jobs_to_the_api() -> None:
    assert plan("edit_file", config_with(prefer_local=True)).chain == [LQ, API]
    cloudy = config_with(prefer_local=False)
    assert plan("edit_file", cloudy).chain == [API]
    assert plan("classify_memory", cloudy).chain == [LF, LQ, API]  # the seed: moderate only


def test_action_tier_overrides_replace_the_policy(default_config: LLMConfig) -> None:
    # The packaged config pins orch_status to local_fast, as the seed does.
    assert plan("orch_status", default_config, prompt="y" * 20_000).chain == [LF, LQ, API]
    overridden = config_with(
        action_tier_overrides={"classify_memory": "api_fallback", "spawn_daemon": "local_quality"}
    )
    assert plan("classify_memory", overridden).chain == [API]
    pinned = plan("spawn_daemon", overridden)
    assert pinned.chain == [LQ, API]
    assert "action_tier_overrides[spawn_daemon] = local_quality" in pinned.reasons


@pytest.mark.parametrize(
    ("fallbacks", "chain"), [(0, [LF]), (1, [LF, LQ]), (2, [LF, LQ, API]), (5, [LF, LQ, API])]
)
def test_max_fallback_attempts_cuts_the_chain(fallbacks: int, chain: list[Tier]) -> None:
    result = plan("extract_topic", config_with(max_fallback_attempts=fallbacks))
    assert result.chain == chain
    assert ("chain cut" in " ".join(result.reasons)) is (len(chain) < 3)


def test_mode_local_drops_the_api_tier_and_stands_in_for_it() -> None:
    config = config_with()
    assert plan("extract_topic", config, Mode.LOCAL).chain == [LF, LQ]
    assert plan("edit_file", config, Mode.LOCAL).chain == [LQ]
    api_job = plan("debug_error", config, Mode.LOCAL)
    assert api_job.chain == [LQ] and api_job.tier is LQ
    assert "mode local: API tier replaced by local_quality" in api_job.reasons
    assert api_job.error is None


def test_mode_local_uses_local_fast_when_local_quality_has_no_model() -> None:
    raw = fleet_config(local_quality=[fake_model("off", enabled=False)])
    assert plan("spawn_daemon", parse_config(raw), Mode.LOCAL).chain == [LF]


def test_mode_local_without_local_models_fails_clearly() -> None:
    raw = fleet_config(
        local_fast=[fake_model("f-off", enabled=False)],
        local_quality=[fake_model("q-off", enabled=False)],
    )
    result = plan("debug_error", parse_config(raw), Mode.LOCAL)
    assert result.error is not None and "mode local" in result.error


def test_mode_cloud_keeps_only_the_api_tier() -> None:
    config = config_with()
    for action in ("classify_memory", "edit_file", "debug_error"):
        result = plan(action, config, Mode.CLOUD)
        assert result.chain == [API] and result.mode is Mode.CLOUD
    assert "mode cloud: API tier only" in plan("classify_memory", config, Mode.CLOUD).reasons
    no_api = parse_config(fleet_config(api_fallback=[fake_model("api-off", enabled=False)]))
    assert plan("classify_memory", no_api, Mode.CLOUD).error is not None


def test_mode_auto_is_the_policy(default_config: LLMConfig) -> None:
    for action, prompt, tier in SEED_EXAMPLES:
        assert plan(action, default_config, Mode.AUTO, prompt).tier is tier


def test_plan_round_trips_through_json(default_config: LLMConfig) -> None:
    original = plan("consolidate", default_config, Mode.LOCAL, files=["a", "b"])
    assert TierPlan.from_json(original.to_json()) == original


def test_explain_names_the_first_enabled_model_without_calling_any(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from workers.backends.base import registry

    def no_calls(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("explain must not reach a backend")

    monkeypatch.setattr(registry, "backend_for", no_calls)
    raw = fleet_config(
        local_fast=[fake_model("fast-off", enabled=False), fake_model("fast-on")],
    )
    info = explain("classify_memory", "Is this a fact?", {}, config=parse_config(raw), mode="auto")
    assert info["tier"] == "local_fast"
    assert info["chain"] == ["local_fast", "local_quality", "api_fallback"]
    assert info["model"] == "fast-on" and info["provider"] == "fake"
    assert info["models"]["local_fast"] == ["fast-on"]
    assert info["complexity"] == "simple" and info["quality_critical"] is False
    assert info["reasons"] and info["error"] is None
    cloud = explain("classify_memory", "Is this a fact?", config=parse_config(raw), mode="cloud")
    assert cloud["tier"] == "api_fallback" and cloud["model"] == "fake-api"


def test_explain_reads_the_fleet_mode_and_survives_without_services(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import router.mode

    monkeypatch.setattr(router.mode, "get_mode", lambda: Mode.CLOUD)
    assert explain("extract_topic", "x", config=config_with())["chain"] == ["api_fallback"]

    def down() -> Mode:
        raise ConnectionError("redis down")

    monkeypatch.setattr(router.mode, "get_mode", down)
    info = explain("extract_topic", "x", config=config_with())
    assert info["mode"] == "auto" and info["tier"] == "local_fast"
    assert "fleet mode unreadable" in info["reasons"][-1]


def test_plan_json_holds_every_field_and_reads_back_as_the_same_plan() -> None:
    import dataclasses
    import json

    plan = TierPlan(
        complexity=Complexity.MODERATE,
        tier=LQ,
        chain=[LQ, API],
        mode=Mode.AUTO,
        quality_critical=True,
        reasons=["moderate action"],
        error=None,
    )
    data = plan.to_json()
    assert set(data) == {f.name for f in dataclasses.fields(TierPlan)}  # a new field is written
    assert json.loads(json.dumps(data)) == data  # plain JSON: enums as their values
    assert TierPlan.from_json(data) == plan
    data["reasons"].append("changed")
    assert plan.reasons == ["moderate action"]  # the JSON is a copy, not the plan's own list
