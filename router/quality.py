"""The quality gate: the first seed's confidence score.

``confidence = 0.3·format + 0.2·completeness + 0.3·coherence + 0.2·self_critique``, each component
in [0, 1]. An answer passes when ``confidence >= routing.quality_threshold`` **and no component is
0**. The veto is ours: with the seed's weights and its 0.7 threshold, an answer that is wholly
refused (coherence 0) or has no code block at all (format 0) still sums to 0.7 and would pass,
which makes that component meaningless (the seed patches refusals alone with a 0.4 penalty).
A component at 0 means the answer is unusable in that respect; partial scores (0.5) go through
the weighted sum and, in the band below, the self-critique.

- **format**: JSON for actions that expect it (validated against the action's ``json_schema`` when
  configured), a code block for actions that expect code;
- **completeness**: minimum length and the action's required JSON fields (an answer that should
  be JSON and does not parse has none of its content, so it scores 0 here too);
- **coherence**: refusals, self-contradiction markers, truncation, and degenerate repetition (the
  way a small base model fails);
- **self_critique**: a fast model asked "is this a valid answer?". It is asked only when its verdict
  can change the outcome: the seed asks below 0.7, but with the default threshold of 0.7 an answer
  below 0.7 has already failed, so we ask when ``threshold <= confidence < critique_below``
  (default 0.9) and no component vetoed the answer. That band holds exactly the borderline
  answers (one partial component: a missing field, a contradiction, a truncation), so the extra
  call is spent where it decides something. When not asked, the component counts as 1.0 and
  ``critique`` says "not asked". A verdict starting with "no" fails the answer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jsonschema

from tierflow.core.config import ActionRule

WEIGHTS = {"format": 0.3, "completeness": 0.2, "coherence": 0.3, "self_critique": 0.2}
DEFAULT_MIN_LENGTH = 2
CRITIQUE_BELOW = 0.9

REFUSAL_MARKERS = (
    "i'm sorry, but i can",
    "i am sorry, but i can",
    "i cannot help",
    "i can't help",
    "i cannot assist",
    "i can't assist",
    "i'm unable to",
    "i am unable to",
    "as an ai language model",
    "as an ai model",
    "i won't be able to",
)
CONTRADICTION_MARKERS = (
    "yes and no",
    "both true and false",
    "i contradict",
    "actually, the opposite",
    "wait, that's wrong",
)
CODE_FENCE = re.compile(r"```([\w+-]*)[^\n]*\n(.*?)```", re.S)
"""A fenced block: group 1 the language (``python``), group 2 the code; text after the
language on the opening line (``python title="x.py"``) is allowed and ignored."""
_VERDICT_NO = re.compile(r"^\W*no\b", re.I)

Critic = Callable[[str, str], str]
"""``critic(question, answer) -> verdict text``; a verdict starting with "no" fails the answer."""
CRITIC_QUESTION = "Is this a valid, complete answer? Reply YES or NO."


@dataclass(frozen=True)
class QualityReport:
    passed: bool
    confidence: float
    components: dict[str, float]
    issues: list[str] = field(default_factory=list)
    critique: str = "not asked"


def extract_json(text: str) -> Any:
    """The JSON value in an answer: whole text, a fenced block, or the first {...} span.

    Raises ``ValueError`` when none parses.
    """
    candidates = [text.strip()]
    candidates += [code.strip() for _, code in CODE_FENCE.findall(text)]
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        candidates.append(text[start : end + 1])
    for candidate in candidates:
        try:
            return json.loads(candidate)
        except ValueError:
            continue
    raise ValueError("no JSON value found")


def _repetitive(text: str) -> bool:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if len(lines) >= 4 and len(set(lines)) <= len(lines) // 3:
        return True
    words = text.split()
    if len(words) >= 24:
        grams = [" ".join(words[i : i + 4]) for i in range(len(words) - 3)]
        return len(set(grams)) <= len(grams) // 3
    return False


def _format(stripped: str, rule: ActionRule) -> tuple[float, Any, bool, list[str]]:
    """Format score, the parsed JSON (when the action expects JSON), whether it parsed, issues."""
    if rule.expects_json or rule.required_fields:
        try:
            parsed = extract_json(stripped)
        except ValueError:
            return 0.0, None, False, ["format: invalid JSON"]
        if rule.json_schema is not None:
            try:
                jsonschema.validate(parsed, rule.json_schema)
            except jsonschema.ValidationError as exc:
                return 0.0, parsed, True, [f"format: JSON does not match the schema: {exc.message}"]
        return 1.0, parsed, True, []
    if rule.expects_code and not CODE_FENCE.search(stripped + "\n"):
        return 0.0, None, False, ["format: no code block"]
    return 1.0, None, False, []


def _completeness(
    stripped: str, rule: ActionRule, parsed: Any, parsed_ok: bool
) -> tuple[float, list[str]]:
    """Minimum length, then the required fields (an unparsable JSON answer has none of them)."""
    min_length = rule.min_length if rule.min_length is not None else DEFAULT_MIN_LENGTH
    if not stripped:
        return 0.0, ["completeness: empty answer"]
    if len(stripped) < min_length:
        return 0.0, [f"completeness: too short ({len(stripped)} < {min_length} characters)"]
    if (rule.expects_json or rule.required_fields) and not parsed_ok:
        return 0.0, ["completeness: no readable content"]
    missing = [f for f in rule.required_fields if not isinstance(parsed, dict) or f not in parsed]
    if missing:
        score = 0.0 if len(missing) == len(rule.required_fields) else 0.5
        return score, [f"completeness: missing fields {missing}"]
    return 1.0, []


def _coherence(stripped: str, finish_reason: str | None) -> tuple[float, list[str]]:
    """A refusal scores 0; each of contradiction, truncation and repetition costs 0.5."""
    lowered = stripped.lower()
    if not stripped:
        return 0.0, []
    if any(marker in lowered for marker in REFUSAL_MARKERS):
        return 0.0, ["coherence: refusal"]
    issues = []
    if any(marker in lowered for marker in CONTRADICTION_MARKERS):
        issues.append("coherence: self-contradiction")
    if finish_reason == "length" or stripped.count("```") % 2 == 1:
        issues.append("coherence: truncated")
    if _repetitive(stripped):
        issues.append("coherence: repetitive")
    return max(0.0, 1.0 - 0.5 * len(issues)), issues


def score_answer(
    text: str, rule: ActionRule, finish_reason: str | None = None
) -> tuple[dict[str, float], list[str]]:
    """Format, completeness and coherence components (each in [0, 1]) with the issues found."""
    stripped = text.strip()
    fmt, parsed, parsed_ok, issues = _format(stripped, rule)
    complete, found = _completeness(stripped, rule, parsed, parsed_ok)
    coherent, more = _coherence(stripped, finish_reason)
    return {"format": fmt, "completeness": complete, "coherence": coherent}, issues + found + more


def check_quality(
    text: str,
    rule: ActionRule,
    threshold: float,
    *,
    finish_reason: str | None = None,
    critic: Critic | None = None,
    critique_below: float = CRITIQUE_BELOW,
) -> QualityReport:
    """Score one answer. ``critic`` is called at most once and only when it can flip the verdict.

    ``threshold`` is ``routing.quality_threshold``; ``finish_reason`` is the backend's
    (``"length"`` marks a truncated answer). A critic that raises is recorded, never fatal.
    """
    components, issues = score_answer(text, rule, finish_reason)
    components["self_critique"] = 1.0
    confidence = sum(WEIGHTS[k] * v for k, v in components.items())
    vetoed = any(v <= 0.0 for v in components.values())
    critique = "not asked"
    if critic is not None and not vetoed and threshold <= confidence < critique_below:
        try:
            critique = critic(CRITIC_QUESTION, text).strip()
        except Exception as exc:  # a failing critic must not fail the answer
            critique = f"critic unavailable: {type(exc).__name__}"
        else:
            if _VERDICT_NO.match(critique):
                components["self_critique"] = 0.0
                confidence -= WEIGHTS["self_critique"]
                vetoed = True
                issues.append(f"self-critique: {critique[:200]}")
    confidence = round(max(0.0, min(1.0, confidence)), 4)
    passed = confidence >= threshold and not vetoed
    return QualityReport(passed, confidence, components, issues, critique)
