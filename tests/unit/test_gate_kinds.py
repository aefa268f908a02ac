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
    # Two labels: the first named is the answer; a soft issue, not a veto (a right answer may
    # name another label to rule it out: "a decision, not a fact").
    both = extract("a decision and not a fact", labels)
    assert (both.value, both.codes, both.ok) == ("decision", ["several_labels"], True)
    assert both.score == 0.5
    assert extract("factual", labels).value is None  # whole words only
    assert extract("factual", labels).vetoes == ["no_value"]


def test_number_extraction_and_arithmetic_recomputed() -> None:
    assert final_number("so 3 * 4 = 12. #### 12") == 12
    assert final_number("The answer is 1,234.50 dollars") == pytest.approx(1234.5)
    assert final_number("I think it's 7") == 7
    assert final_number("no digits here") is None
    assert wrong_arithmetic("12 * 3 = 36 and 36 - 5 = 30") == ["36 - 5 = 30 (is 31)"]
    assert wrong_arithmetic("10 / 3 = 3.33") == []
    assert wrong_arithmetic("10 / 3 = 3.5") != []


@pytest.mark.parametrize(
    "right",
    [
        "3 * 12 / 9 = 4 boxes",  # chained operators: the whole expression, not 12 / 9
        "60 / 100 * 40 = 24",  # a percentage written out
        "25% * 40 = 10",  # percent as a hundredth
        "(30/70)*100 = 42.86%",  # rounded, with a percent naming the unit
        "94 / 8 = 11 full boxes",  # floored to a whole number
        "$76 - $25 = $51.",  # currency, and a full stop after the value
        "1,200 + 300 = 1,500",  # thousands separators
        "2^4 * 3 = 16 * 3 = 48",  # powers and a chain of equals
        "2 hours * 60 = 120 minutes",  # runs on into words: not read
        "20 - 12 = 2W",  # algebra: a side touches a letter
        "19x - 17 = 78",  # a variable x is no multiplication sign
        "half of 10 + 4 = 9",  # scaled by a word: not read
    ],
)
def test_arithmetic_reads_whole_expressions_and_never_rejects_right_working(right: str) -> None:
    assert wrong_arithmetic(right) == []


@pytest.mark.parametrize(
    ("wrong", "found"),
    [
        ("3 * 12 / 9 = 5", "3 * 12 / 9 = 5 (is 4)"),
        ("so 23 * 107 = 2451 items", "23 * 107 = 2451 (is 2461)"),
        ("4 x 3 = 13", "4 x 3 = 13 (is 12)"),
        ("then 5 + 3 = 8. 8 * 2 = 15", "8 * 2 = 15 (is 16)"),
    ],
)
def test_arithmetic_finds_wrong_working(wrong: str, found: str) -> None:
    assert wrong_arithmetic(wrong) == [found]


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
