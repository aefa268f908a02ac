"""The gate judges content: for every action of the packaged config, a well-formed but wrong
answer is rejected, where the seed's shape score alone passes it, and a right one passes."""

from __future__ import annotations

import pytest

from router.gate import Answer, extract, judge_answer
from router.gate.kinds import final_number, wrong_arithmetic
from router.quality import check_quality
from tierflow.core.config import ActionRule, load_config

CONFIG = load_config(None)
THRESHOLD = CONFIG.routing.quality_threshold

# action -> (a right answer, a wrong answer that looks right)
CASES = {
    "classify_memory": ("This is a decision.", "This is an opinion, clearly stated."),
    "yes_no_decision": ("yes", "maybe, it depends on the error"),
    "extract_topic": ('{"topic": "authentication"}', '{"subject": "authentication"}'),
    "spawn_daemon": (
        '{"plan": ["write tests", "implement login"]}',
        '{"plan": "write tests, then implement login"}',
    ),
    "edit_file": (
        "```python\ndef load(path):\n    try:\n        return open(path).read()\n"
        "    except OSError:\n        return None\n```",
        "```python\ndef load(path):\n    try:\n        return open(path).read(\n"
        "    except OSError:\n        return None\n```",
    ),
    "multi_file_refactor": (
        "```python\nclass Header:\n    def render(self) -> str:\n        return '<h1/>'\n```",
        "```python\nclass Header:\n    def render(self) -> str\n        return '<h1/>'\n```",
    ),
    "calculate": (
        "17 + 25 = 42, so the answer is 42.",
        "17 + 25 = 43, so the answer is 43.",
    ),
}


def rule(action: str) -> ActionRule:
    return CONFIG.routing.actions[action]


def gate(action: str, text: str) -> bool:
    answer = Answer(prompt="(prompt)", text=text, rule=rule(action), threshold=THRESHOLD)
    return judge_answer(answer, THRESHOLD).passed


@pytest.mark.parametrize("action", sorted(CASES))
def test_right_passes_and_wrong_is_rejected(action: str) -> None:
    right, wrong = CASES[action]
    assert gate(action, right), action
    assert not gate(action, wrong), action


@pytest.mark.parametrize("action", ["classify_memory", "yes_no_decision", "calculate"])
def test_the_seeds_shape_score_alone_passes_the_wrong_ones(action: str) -> None:
    """What the first round's gate did: well-formed wrong answers went through."""
    seed_rule = ActionRule(min_length=2)  # the shape checks these actions had
    assert check_quality(CASES[action][1], seed_rule, THRESHOLD).passed


def test_every_seed_action_has_a_kind_and_verifiers() -> None:
    for action in (
        "classify_memory",
        "extract_topic",
        "yes_no_decision",
        "edit_file",
        "multi_file_refactor",
        "spawn_daemon",
        "write_memory",
        "consolidate",
    ):
        assert rule(action).answer is not None and rule(action).verifiers


def test_label_extraction() -> None:
    labels = ActionRule(answer="label", labels=["decision", "fact"])
    assert extract("It is a Decision.", labels).value == "decision"
    assert extract('{"category": "fact"}', labels).value == "fact"
    assert extract("a decision and a fact", labels).value is None  # two labels
    assert extract("factual", labels).value is None  # whole words only


def test_number_extraction_and_arithmetic_recomputed() -> None:
    assert final_number("so 3 * 4 = 12. #### 12") == 12
    assert final_number("The answer is 1,234.50 dollars") == pytest.approx(1234.5)
    assert final_number("I think it's 7") == 7
    assert final_number("no digits here") is None
    assert wrong_arithmetic("12 * 3 = 36 and 36 - 5 = 30") == ["36 - 5 = 30 (is 31)"]
    assert wrong_arithmetic("10 / 3 = 3.33") == []
    assert wrong_arithmetic("10 / 3 = 3.5") != []


def test_code_kinds_parse() -> None:
    code = ActionRule(answer="code")
    assert extract('```json\n{"a": 1}\n```', code).ok
    assert not extract('```json\n{"a": 1\n```', code).ok
    assert extract("```go\nfunc f() { return }\n```", code).ok
    assert not extract("```go\nfunc f() { return \n```", code).ok


def test_json_labels_on_fields() -> None:
    typed = ActionRule(answer="json", required_fields=["category"], labels=["decision", "fact"])
    assert extract('{"category": "fact"}', typed).ok
    assert not extract('{"category": "opinion"}', typed).ok
