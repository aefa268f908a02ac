"""The fake errs like a model: its wrong answers pass every check of their kind and differ from
the right answer only in content, so a gate cannot be shown to catch them by its checks."""

from __future__ import annotations

import pytest

from router.gate.kinds import extract
from tierflow.core.config import ActionRule
from workers.backends.fake_answers import fake_answer, is_wrong
from workers.pipeline.call import instructions

TAG = "[FAKE m]"
RULES = {
    "number": (ActionRule(answer="number"), "What is {i} + {j}?"),
    "label": (ActionRule(answer="label", labels=["decision", "fact"]), "[truth: fact] note {i}"),
    "json": (
        ActionRule(
            answer="json",
            required_fields=["kind", "size", "done"],
            json_schema={
                "type": "object",
                "properties": {
                    "kind": {"enum": ["a", "b", "c"]},
                    "size": {"type": "integer"},
                    "done": {"type": "boolean"},
                },
                "required": ["kind", "size", "done"],
            },
        ),
        "Describe item {i} {j}",
    ),
    "code": (ActionRule(answer="code"), "Write a function for {i} and {j}"),
}


def answers(kind: str, i: int, j: int) -> tuple[ActionRule, str, str, bool | None]:
    rule, template = RULES[kind]
    prompt = template.format(i=i, j=j)
    system = instructions(rule)
    right, made_right = fake_answer(TAG, system, prompt, "d1", 0.0)
    wrong, made_wrong = fake_answer(TAG, system, prompt, "d1", 1.0)
    assert made_right is False
    return rule, right, wrong, made_wrong


@pytest.mark.parametrize("kind", sorted(RULES))
def test_wrong_answers_pass_the_checks_and_differ_in_content(kind: str) -> None:
    for i in range(1, 25):
        rule, right, wrong, made_wrong = answers(kind, i, i * 7 + 3)
        assert made_wrong is True
        assert wrong.startswith(TAG) or kind == "json"  # JSON: no string value to carry it
        good, bad = extract(right, rule), extract(wrong, rule)
        assert good.ok and not good.codes, (right, good.issues)
        assert bad.ok and not bad.codes, (wrong, bad.issues)  # no check sees the error
        if kind != "code":
            assert bad.value != good.value, (right, wrong)
        else:
            assert wrong != right


def test_both_arithmetic_errors_are_made_and_every_equation_written_holds() -> None:
    texts = [answers("number", i, 11)[2] for i in range(1, 40)]
    last_step = [t for t in texts if " + " in t]  # the operation asked, a wrong final value
    misread = [t for t in texts if " - " in t]  # the wrong operation, done right
    assert last_step and misread and len(last_step) + len(misread) == len(texts)
    assert "7 + 11 = 18" in answers("number", 7, 11)[1]


def test_the_wrong_share_follows_the_rate_and_one_label_cannot_be_wrong() -> None:
    share = sum(is_wrong(f"prompt {n}", 0.3) for n in range(2000)) / 2000
    assert share == pytest.approx(0.3, abs=0.04)
    single = instructions(ActionRule(answer="label", labels=["fact"]))
    text, wrong = fake_answer(TAG, single, "[truth: fact] x", "d", 1.0)
    assert text == f"{TAG} fact" and wrong is False
