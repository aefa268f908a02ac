"""The replay backend answers from a labelled file, and ``--fleet``'s pure part reads jobs back
as the offline replay's rows."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from router.gate.evaluate import EvalRow
from router.gate.fleet_eval import (
    CHEAP_MODEL,
    STRONG_MODEL,
    FleetJob,
    eval_action_name,
    eval_rule,
    fleet_eval_config,
    judged_from_fleet,
)
from schemas.jobs import ACTION_PATTERN
from tierflow.core import errors
from tierflow.core.config import ActionRule, LLMConfig, ModelConfig
from tierflow.core.errors import ConfigError
from workers.backends.base import CompletionRequest, registry
from workers.backends.replay import ReplayBackend, index_of

ROWS = [
    {"prompt": "What is 2 + 3?", "cheap_answer": "2 + 3 = 6. The answer is 6.",
     "cheap_correct": False, "strong_answer": "The answer is 5.", "strong_correct": True},
    {"prompt": "What is 4 * 5?", "cheap_answer": "The answer is 20.", "cheap_correct": True,
     "strong_answer": "4 * 5 = 20. The answer is 20.", "strong_correct": True,
     "cheap_finish_reason": "length"},
    {"prompt": "What is 4 * 5? Show it.", "cheap_answer": "20", "cheap_correct": True,
     "strong_answer": "20", "strong_correct": True},
]  # fmt: skip


def labelled(tmp_path: Path, rows: list[dict[str, object]] = ROWS) -> Path:
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def model(file: object, side: object = "cheap", name: str = "r") -> ModelConfig:
    return ModelConfig(
        name=name, provider="replay", model_id="m", options={"file": str(file), "side": side}
    )


def config_with(*models: ModelConfig) -> LLMConfig:
    return LLMConfig.model_validate(
        {"tiers": {"local_fast": {"models": [m.model_dump() for m in models]}}}
    )


def test_each_side_answers_its_recorded_answer_found_in_the_request(tmp_path: Path) -> None:
    path = labelled(tmp_path)
    cheap, strong = ReplayBackend(model(path)), ReplayBackend(model(path, "strong"))
    asked = CompletionRequest(prompt="What is 2 + 3?", system="Show the working, then end.")
    got = cheap.complete(asked)
    assert got.text == "2 + 3 = 6. The answer is 6." and got.provider == "replay"
    assert got.model == "replay:cheap:m" and got.input_tokens > 0 and got.output_tokens > 0
    assert strong.complete(asked).text == "The answer is 5."
    # the fleet appends the job's context; the longer prompt is not taken for the shorter one
    with_context = CompletionRequest(prompt='What is 4 * 5?\n\nContext:\n{"x": 1}')
    assert cheap.complete(with_context).text == "The answer is 20."
    assert cheap.complete(with_context).finish_reason == "length"
    wrapped = CompletionRequest(prompt="Question: What is 4 * 5? Show it. Thanks")
    assert cheap.complete(wrapped).text == "20"  # the longest recorded prompt it contains
    with pytest.raises(errors.InvalidRequest, match=r"no row of rows\.jsonl has the prompt"):
        cheap.complete(CompletionRequest(prompt="What is 7 - 1?"))
    assert not errors.InvalidRequest("x").retryable


def test_the_index_is_built_once_per_file_version(tmp_path: Path) -> None:
    path = labelled(tmp_path)
    assert index_of(path) is index_of(str(path))
    path.write_text(path.read_text() + json.dumps({**ROWS[0], "prompt": "new"}) + "\n")
    assert "new" in index_of(path).by_prompt


@pytest.mark.parametrize(
    ("options", "found"),
    [
        ({"side": "both"}, "side must be one of cheap, strong"),
        ({"file": ""}, "file must name a labelled"),
        ({"file": "/nowhere/rows.jsonl"}, "cannot read"),
        ({"file": "BAD"}, "row 1, column cheap_correct"),
        ({"side": "strong", "file": "NOSTRONG"}, "strong needs a strong_answer in every row"),
        ({"colour": "red"}, "replay does not read colour"),
    ],
)
def test_bad_options_stop_the_start_naming_the_field(
    tmp_path: Path, options: dict[str, str], found: str
) -> None:
    good = labelled(tmp_path)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({**ROWS[0], "cheap_correct": "maybe"}) + "\n")
    no_strong = tmp_path / "nostrong.jsonl"
    no_strong.write_text(json.dumps({k: v for k, v in ROWS[0].items() if k != "strong_answer"}))
    files = {"BAD": str(bad), "NOSTRONG": str(no_strong)}
    values: dict[str, object] = {"file": str(good), "side": "cheap", **options}
    values["file"] = files.get(str(values["file"]), values["file"])
    entry = ModelConfig(name="r", provider="replay", model_id="m", options=values)
    with pytest.raises(ConfigError, match=r"tiers\.local_fast\.models\.0\.options") as caught:
        registry.check(config_with(entry))
    assert found in str(caught.value)


def test_the_fleet_config_replays_both_sides_of_the_users_action(tmp_path: Path) -> None:
    path = labelled(tmp_path)
    rule = ActionRule(answer="number", verifiers=["checks", "learned"], audit_share=0.2)
    base = config_with(model(path, name="local"))
    name = eval_action_name("Solve-Math", "0f3a9c2e-77aa-4b1c")
    assert name == "eval_solve_math_0f3a9c2e77aa"
    assert re.match(ACTION_PATTERN, name) and re.match(
        ACTION_PATTERN, eval_action_name("x" * 80, "abc")
    )
    raw = fleet_eval_config(base, name, rule, path, 0.6)
    loaded = LLMConfig.model_validate(raw)
    registry.check(loaded)  # the replay options pass the start's checks
    assert [m.name for m in loaded.tier_models("local_fast")] == [CHEAP_MODEL]
    assert [m.name for m in loaded.tier_models("local_quality")] == [STRONG_MODEL]
    assert loaded.routing.actions[name] == rule and not loaded.routing.self_critique
    assert loaded.routing.action_tier_overrides[name].value == "local_fast"
    assert loaded.routing.quality_threshold == 0.6
    judged, notes = eval_rule(
        ActionRule(answer="number", verifiers=["checks", "judge"], judge_tier="api_fallback")
    )
    assert judged.verifiers == ["checks"] and judged.judge_tier is None and notes


def test_jobs_read_back_as_rows_escalated_by_the_tier_that_answered() -> None:
    right_cheap = EvalRow("a", "x", True, False)
    wrong_cheap = EvalRow("b", "y", False, True)
    jobs = [
        FleetJob(right_cheap, "succeeded", "local_fast", 0.9, False, 0.7),
        FleetJob(wrong_cheap, "succeeded", "local_quality", 0.0, True, 0.7),
        FleetJob(wrong_cheap, "failed", "local_quality", 0.3, False, 0.7),
    ]
    played = judged_from_fleet(jobs, 0.5)
    assert [j.escalated for j in played.judged] == [False, True, True]
    assert [j.outcome for j in played.judged] == [True, True, False]  # a failed job: no answer
    assert played.judged[1].rank < 0 < played.judged[0].rank
    assert played.threshold == 0.7 and "1 job(s) did not succeed" in played.notes[0]
