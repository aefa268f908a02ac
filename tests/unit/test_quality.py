"""The quality gate: each component fails a crafted answer; self-critique only where it decides."""

from __future__ import annotations

import json

import pytest

from router.quality import WEIGHTS, check_quality, extract_json, score_answer
from tierflow.core.config import ActionRule

THRESHOLD = 0.7
JSON_RULE = ActionRule(expects_json=True, required_fields=["category", "reason"])
CODE_RULE = ActionRule(expects_code=True, min_length=20)
PROSE_RULE = ActionRule(min_length=20)
GOOD_JSON = json.dumps({"category": "decision", "reason": "a choice between two options"})
GOOD_CODE = "Here it is:\n```python\ndef f(x):\n    return x + 1\n```\n"
GOOD_PROSE = "The five decisions agree: we keep React and drop Vue for the new dashboard."


class Critic:
    """A recorded stand-in for the fast model; answers ``verdict``."""

    def __init__(self, verdict: str = "YES") -> None:
        self.verdict = verdict
        self.calls: list[tuple[str, str]] = []

    def __call__(self, question: str, answer: str) -> str:
        self.calls.append((question, answer))
        return self.verdict


def test_weights_are_the_seeds() -> None:
    assert WEIGHTS == {"format": 0.3, "completeness": 0.2, "coherence": 0.3, "self_critique": 0.2}


@pytest.mark.parametrize(
    ("text", "rule"), [(GOOD_JSON, JSON_RULE), (GOOD_CODE, CODE_RULE), (GOOD_PROSE, PROSE_RULE)]
)
def test_good_answers_pass_with_full_confidence_and_no_critique(
    text: str, rule: ActionRule
) -> None:
    critic = Critic("NO")
    report = check_quality(text, rule, THRESHOLD, critic=critic)
    assert report.passed and report.confidence == 1.0 and report.issues == []
    assert report.critique == "not asked" and critic.calls == []


# --- format -------------------------------------------------------------------------------


def test_format_fails_invalid_json() -> None:
    report = check_quality("category: decision (not JSON)", JSON_RULE, THRESHOLD)
    assert not report.passed
    assert report.components["format"] == 0.0
    assert "format: invalid JSON" in report.issues


def test_format_fails_json_against_the_actions_schema() -> None:
    rule = ActionRule(
        expects_json=True,
        json_schema={
            "type": "object",
            "properties": {"category": {"enum": ["decision", "fact"]}},
            "required": ["category"],
        },
    )
    assert check_quality('{"category": "fact"}', rule, THRESHOLD).passed
    report = check_quality('{"category": "opinion"}', rule, THRESHOLD)
    assert not report.passed and report.components["format"] == 0.0
    assert any("does not match the schema" in i for i in report.issues)


def test_format_fails_an_edit_without_a_code_block() -> None:
    text = "def f(x): return x + 1  # but not in a fenced block"
    report = check_quality(text, CODE_RULE, THRESHOLD)
    # Every other component is perfect: the sum alone (0.7) would pass; the veto fails it.
    assert report.confidence == pytest.approx(0.7)
    assert not report.passed
    assert report.components["format"] == 0.0 and "format: no code block" in report.issues


def test_json_is_found_in_a_fence_or_in_prose() -> None:
    assert extract_json('```json\n{"a": 1}\n```') == {"a": 1}
    assert extract_json('Sure! {"a": [1, 2]} Hope it helps.') == {"a": [1, 2]}
    with pytest.raises(ValueError):
        extract_json("no json here")


# --- completeness ---------------------------------------------------------------------------


def test_completeness_fails_a_too_short_answer() -> None:
    report = check_quality("Use React.", PROSE_RULE, THRESHOLD)
    assert not report.passed and report.components["completeness"] == 0.0
    assert any("too short" in i for i in report.issues)


def test_completeness_fails_an_empty_answer() -> None:
    report = check_quality("   ", PROSE_RULE, THRESHOLD)
    assert not report.passed and report.confidence <= 0.5
    assert "completeness: empty answer" in report.issues


def test_completeness_fails_json_without_its_required_fields() -> None:
    report = check_quality('{"answer": "decision"}', JSON_RULE, THRESHOLD)
    assert not report.passed and report.components["completeness"] == 0.0
    assert "completeness: missing fields ['category', 'reason']" in report.issues


def test_a_missing_field_is_partial_and_left_to_the_critic() -> None:
    text = '{"category": "decision"}'
    report = check_quality(text, JSON_RULE, THRESHOLD)
    assert report.components["completeness"] == 0.5 and report.confidence == 0.9
    assert report.passed
    critic = Critic("NO, the reason is missing")
    judged = check_quality(text, JSON_RULE, THRESHOLD, critic=critic, critique_below=0.95)
    assert len(critic.calls) == 1 and not judged.passed
    assert judged.components["self_critique"] == 0.0


def test_an_unparsable_json_answer_has_no_content_either() -> None:
    components, _ = score_answer("{category: decision", JSON_RULE)
    assert components["format"] == 0.0 and components["completeness"] == 0.0


# --- coherence ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "I'm sorry, but I can't help with refactoring this file today.",
        "As an AI language model, I do not have opinions about React or Vue.",
    ],
)
def test_coherence_fails_a_refusal(text: str) -> None:
    report = check_quality(text, PROSE_RULE, THRESHOLD)
    assert report.confidence == pytest.approx(0.7)  # the sum alone would pass
    assert not report.passed
    assert report.components["coherence"] == 0.0 and "coherence: refusal" in report.issues


def test_coherence_marks_self_contradiction() -> None:
    text = "The answer is yes and no: it is both true and false that we chose React."
    report = check_quality(text, PROSE_RULE, THRESHOLD)
    assert report.components["coherence"] == 0.5
    assert "coherence: self-contradiction" in report.issues


def test_coherence_marks_truncation_by_finish_reason_or_open_fence() -> None:
    cut = check_quality(GOOD_PROSE, PROSE_RULE, THRESHOLD, finish_reason="length")
    assert cut.components["coherence"] == 0.5 and "coherence: truncated" in cut.issues
    open_fence = check_quality(
        "```python\ndef f(x):\n    return x +\n", ActionRule(min_length=5), THRESHOLD
    )
    assert "coherence: truncated" in open_fence.issues


def test_coherence_marks_degenerate_repetition() -> None:
    text = "the cat sat on the mat " * 12
    report = check_quality(text, PROSE_RULE, THRESHOLD)
    assert "coherence: repetitive" in report.issues and report.components["coherence"] == 0.5


def test_two_coherence_problems_fail_the_answer() -> None:
    text = "It is yes and no, I think we should keep both and also drop both of them"
    report = check_quality(text, PROSE_RULE, THRESHOLD, finish_reason="length")
    assert report.components["coherence"] == 0.0 and not report.passed


# --- self-critique --------------------------------------------------------------------------


BORDERLINE = "Yes and no: we chose React, and the dashboard keeps Vue for now."  # coherence 0.5


def test_self_critique_fails_a_borderline_answer() -> None:
    critic = Critic(" No. It contradicts itself.")
    report = check_quality(BORDERLINE, PROSE_RULE, THRESHOLD, critic=critic)
    assert len(critic.calls) == 1 and critic.calls[0][1] == BORDERLINE
    assert not report.passed
    assert report.confidence == pytest.approx(0.65)
    assert report.components["self_critique"] == 0.0
    assert any(i.startswith("self-critique: No.") for i in report.issues)


def test_self_critique_yes_keeps_a_borderline_answer() -> None:
    report = check_quality(BORDERLINE, PROSE_RULE, THRESHOLD, critic=Critic("YES"))
    assert report.passed and report.confidence == 0.85 and report.critique == "YES"


def test_self_critique_is_not_asked_when_the_answer_already_failed() -> None:
    critic = Critic("YES")
    report = check_quality(
        "I cannot help with that request at all.", PROSE_RULE, 0.7, critic=critic
    )
    assert not report.passed and critic.calls == []


def test_a_failing_critic_never_fails_the_answer() -> None:
    def broken(question: str, answer: str) -> str:
        raise TimeoutError("fast model down")

    report = check_quality(BORDERLINE, PROSE_RULE, THRESHOLD, critic=broken)
    assert report.passed and report.critique == "critic unavailable: TimeoutError"


def test_the_threshold_comes_from_the_caller() -> None:
    assert check_quality(BORDERLINE, PROSE_RULE, 0.8).passed
    assert not check_quality(BORDERLINE, PROSE_RULE, 0.9).passed
