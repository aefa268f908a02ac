"""The quality gate: the first seed's confidence score.

``confidence = 0.3·format + 0.2·completeness + 0.3·coherence + 0.2·self_critique``, each component
in [0, 1]; an answer passes when ``confidence >= routing.quality_threshold``.

- **format**: JSON for actions that expect it (validated against the action's ``json_schema`` when
  configured), a code block for actions that expect code;
- **completeness**: minimum length and the action's required JSON fields (an answer that should
  be JSON and does not parse has none of its content, so it scores 0 here too);
- **coherence**: refusals, self-contradiction markers, truncation, and degenerate repetition (the
  way a small base model fails);
- **self_critique**: a fast model asked "is this a valid answer?". It is asked only when its verdict
  can change the outcome: the seed asks below 0.7, but with the default threshold of 0.7 an answer
  below 0.7 has already failed, so we ask when ``threshold <= confidence < critique_below``
  (default 0.9). When not asked, the component counts as 1.0 and ``critique`` says "not asked".
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jsonschema

from tierflow.config import ActionRule

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
_FENCE = re.compile(r"```[\w+-]*\n(.*?)```", re.S)

Critic = Callable[[str, str], str]
"""``critic(question, answer) -> verdict text``; a verdict starting with NO fails the answer."""


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
    candidates += [m.strip() for m in _FENCE.findall(text)]
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


def score_answer(
    text: str, rule: ActionRule, finish_reason: str | None = None
) -> tuple[dict[str, float], list[str]]:
    """Format, completeness and coherence components with the issues found."""
    issues: list[str] = []
    stripped = text.strip()
    fmt, complete, coherent = 1.0, 1.0, 1.0
    parsed: Any = None

    if rule.expects_json:
        try:
            parsed = extract_json(stripped)
        except ValueError:
            # Nothing can be read from an unparsable answer: its content is missing too.
            fmt = complete = 0.0
            issues.append("format: invalid JSON")
        else:
            if rule.json_schema is not None:
                try:
                    jsonschema.validate(parsed, rule.json_schema)
                except jsonschema.ValidationError as exc:
                    fmt = 0.0
                    issues.append(f"format: JSON does not match the action's schema: {exc.message}")
    elif rule.expects_code and not _FENCE.search(stripped + "\n"):
        fmt = 0.0
        issues.append("format: no code block")

    min_length = rule.min_length if rule.min_length is not None else DEFAULT_MIN_LENGTH
    if not stripped:
        complete = 0.0
        issues.append("completeness: empty answer")
    elif len(stripped) < min_length:
        complete = 0.0
        issues.append(f"completeness: too short ({len(stripped)} < {min_length} characters)")
    if rule.required_fields and parsed is not None:
        missing = [
            f for f in rule.required_fields if not isinstance(parsed, dict) or f not in parsed
        ]
        if missing:
            complete = min(complete, 0.0 if len(missing) == len(rule.required_fields) else 0.5)
            issues.append(f"completeness: missing fields {missing}")

    lowered = stripped.lower()
    if not stripped:
        coherent = 0.0
    elif any(marker in lowered for marker in REFUSAL_MARKERS):
        coherent = 0.0
        issues.append("coherence: refusal")
    else:
        if any(marker in lowered for marker in CONTRADICTION_MARKERS):
            coherent -= 0.5
            issues.append("coherence: self-contradiction")
        if finish_reason == "length" or stripped.count("```") % 2 == 1:
            coherent -= 0.5
            issues.append("coherence: truncated")
        if _repetitive(stripped):
            coherent -= 0.5
            issues.append("coherence: repetitive")
        coherent = max(coherent, 0.0)
    return {"format": fmt, "completeness": complete, "coherence": coherent}, issues


def check_quality(
    text: str,
    rule: ActionRule,
    threshold: float,
    *,
    finish_reason: str | None = None,
    critic: Critic | None = None,
    critique_below: float = CRITIQUE_BELOW,
) -> QualityReport:
    """Score one answer. ``critic`` is called at most once and only when it can flip the verdict."""
    components, issues = score_answer(text, rule, finish_reason)
    components["self_critique"] = 1.0
    confidence = sum(WEIGHTS[k] * v for k, v in components.items())
    critique = "not asked"
    if critic is not None and threshold <= confidence < critique_below:
        try:
            critique = critic("Is this a valid, complete answer? Reply YES or NO.", text).strip()
        except Exception as exc:  # a failing critic must not fail the answer
            critique = f"critic unavailable: {type(exc).__name__}"
        else:
            if critique.upper().startswith("NO"):
                components["self_critique"] = 0.0
                confidence -= WEIGHTS["self_critique"]
                issues.append(f"self-critique: {critique[:200]}")
    confidence = round(max(0.0, min(1.0, confidence)), 4)
    return QualityReport(confidence >= threshold, confidence, components, issues, critique)
