"""Answer kinds: what an action's answer *is*, how to extract it, and how to check its content.

Each kind turns an answer's text into an :class:`Extracted` value, comparable across samples and
tiers (the consistency verifier, escalation labels and audits compare these), and runs the kind's
own checks. Every failed check has a **code**; a check is a **veto** (:data:`VETO_CODES`) only when
it never rejects a right answer: measured on strong models' right answers (the dev sets of
``../shared/data``, ``tests/bench/bench_gate.py --checks``) at most 1% each. The others are
**soft**: evidence and a feature for the learned scorer, never a rejection on their own.

- ``json``: the JSON object (whole text, a fenced block, or the first ``{...}`` span); checked
  against the action's ``json_schema`` and ``required_fields`` (codes ``no_value``, ``schema``).
- ``label``: the allowed label (``labels``) the answer names, as a whole word, case-insensitively,
  also inside a JSON answer. None: ``no_value``. Several: the first named is the value and
  ``several_labels`` is soft (a right answer may name another to rule it out).
- ``number``: the final answer (``#### X``, "the answer is X", a trailing ``= X``, else the last
  number; none: ``no_value``); every ``expression = value`` of the working is recomputed whole
  (:mod:`router.gate.arithmetic`, silent where it cannot read); a wrong one is ``arithmetic``.
- ``code``: the fenced block (or the whole text); Python (a ``python``/``py`` fence or none) must
  parse with :mod:`ast`, ``json`` must parse; other languages need balanced brackets (``parse``).
- ``text``: the text itself, whitespace-normalised; empty is ``no_value``.

The score of the checks is 1.0 when every check passed, 0.5 with soft issues only and 0.0 with a
veto; ``issues`` say which, as evidence stored on the attempt.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

import jsonschema

from router.gate.arithmetic import wrong_equations
from router.quality import CODE_FENCE, extract_json
from tierflow.core.config import ActionRule

ANSWER_KINDS = ("json", "label", "number", "code", "text")
_NUMBER = r"[-+]?\$?\d[\d,]*(?:\.\d+)?"
FINAL_MARKERS = (
    re.compile(rf"####\s*({_NUMBER})"),
    re.compile(rf"(?i)answer\s*(?:is|:|=)\s*\**\s*({_NUMBER})"),
    re.compile(rf"=\s*({_NUMBER})\s*\.?\s*$"),
)
VETO_CODES = frozenset({"no_value", "schema", "parse", "arithmetic"})
"""Failed checks that reject an answer on their own (each measured at most 1% on right answers)."""
SOFT_CODES = frozenset({"several_labels"})
_ANY_NUMBER = re.compile(_NUMBER)


@dataclass(frozen=True)
class Extracted:
    """An answer as its kind reads it: ``value`` (None when not found), the ``issues`` found and
    the ``codes`` of the checks that failed (:data:`VETO_CODES` or :data:`SOFT_CODES`)."""

    value: Any
    issues: list[str] = field(default_factory=list)
    codes: list[str] = field(default_factory=list)

    @property
    def vetoes(self) -> list[str]:
        """The failed checks that reject the answer on their own."""
        return [code for code in self.codes if code in VETO_CODES]

    @property
    def ok(self) -> bool:
        return self.value is not None and not self.vetoes

    @property
    def score(self) -> float:
        """1.0 clean, 0.5 with soft issues only, 0.0 with a veto."""
        if not self.ok:
            return 0.0
        return 0.5 if self.codes else 1.0


def _failed(code: str, issue: str) -> Extracted:
    return Extracted(None, [issue], [code])


def kind_of(rule: ActionRule) -> str:
    """The action's answer kind: ``answer`` when set, else derived from the older flags."""
    if rule.answer is not None:
        return rule.answer
    if rule.expects_json or rule.required_fields or rule.json_schema:
        return "json"
    if rule.expects_code:
        return "code"
    return "text"


def _json(text: str, rule: ActionRule) -> Extracted:
    try:
        value = extract_json(text)
    except ValueError:
        return _failed("no_value", "checks: no JSON value")
    issues = []
    if rule.json_schema is not None:
        try:
            jsonschema.validate(value, rule.json_schema)
        except jsonschema.ValidationError as exc:
            issues.append(f"checks: JSON does not match the schema: {exc.message}"[:300])
    missing = [f for f in rule.required_fields if not isinstance(value, dict) or f not in value]
    if missing:
        issues.append(f"checks: missing fields {missing}")
    if rule.labels and isinstance(value, dict):
        issues += _label_fields(value, rule)
    return Extracted(_canonical(value), issues, ["schema"] * bool(issues))


def _label_fields(value: dict[str, Any], rule: ActionRule) -> list[str]:
    """With ``labels`` set, the required fields' string values must be allowed labels."""
    allowed = {label.lower() for label in rule.labels}
    bad = [
        f"{k}={v!r}"
        for k, v in value.items()
        if k in rule.required_fields and isinstance(v, str) and v.strip().lower() not in allowed
    ]
    return [f"checks: value not among the labels {rule.labels}: {', '.join(bad)}"] if bad else []


def _canonical(value: Any) -> Any:
    """A hashable, order-independent form of a JSON value, for comparing answers."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _label(text: str, rule: ActionRule) -> Extracted:
    if not rule.labels:
        return _failed("no_value", "checks: the action names no labels")
    haystack = text
    try:
        parsed = extract_json(text)
        if isinstance(parsed, dict):
            haystack = " ".join(str(v) for v in parsed.values())
        elif isinstance(parsed, str):
            haystack = parsed
    except ValueError:
        pass
    found = labels_named(haystack, rule.labels)
    if not found:
        return _failed("no_value", f"checks: no label of {rule.labels}")
    if len(found) > 1:
        issue = f"checks: several labels named: {[label for _, label in found]}"
        return Extracted(found[0][1].lower(), [issue], ["several_labels"])
    return Extracted(found[0][1].lower())


def labels_named(text: str, labels: list[str]) -> list[tuple[int, str]]:
    """The allowed labels ``text`` names as whole words, with where each first appears, in the
    order they appear."""
    found = []
    for label in labels:
        match = re.search(rf"(?<![\w-]){re.escape(label)}(?![\w-])", text, re.I)
        if match is not None:
            found.append((match.start(), label))
    return sorted(found)


def parse_number(raw: str) -> Decimal | None:
    """``"1,234.50"``, ``"$12"`` → Decimal; None when it is no number."""
    try:
        return Decimal(raw.replace(",", "").replace("$", ""))
    except InvalidOperation:
        return None


def wrong_arithmetic(text: str) -> list[str]:
    """Every ``expression = value`` in the text whose value is wrong, as ``"3 * 4 = 13 (is 12)"``
    (:mod:`router.gate.arithmetic`: whole expressions, silent where it cannot read)."""
    return [
        f"{e.left} = {e.right} (is {e.left_value.normalize():f})" for e in wrong_equations(text)
    ]


def final_number(text: str) -> Decimal | None:
    """The answer's final number: an explicit marker first, else the last number written."""
    for pattern in FINAL_MARKERS:
        matches = pattern.findall(text.strip())
        if matches:
            return parse_number(matches[-1])
    numbers = _ANY_NUMBER.findall(text)
    return parse_number(numbers[-1]) if numbers else None


def _number(text: str, rule: ActionRule) -> Extracted:
    value = final_number(text)
    if value is None:
        return _failed("no_value", "checks: no final number")
    wrong = wrong_arithmetic(text)
    issues = [f"checks: wrong arithmetic: {w}" for w in wrong]
    return Extracted(value.normalize(), issues, ["arithmetic"] * bool(wrong))


def _code(text: str, rule: ActionRule) -> Extracted:
    blocks = CODE_FENCE.findall(text + "\n")
    language, code = (blocks[0][0].lower(), blocks[0][1]) if blocks else ("", text)
    if not code.strip():
        return _failed("no_value", "checks: no code")
    issue = _parse_problem(language, code)
    return Extracted(code.strip(), [issue] if issue else [], ["parse"] if issue else [])


def _parse_problem(language: str, code: str) -> str | None:
    if language in ("", "python", "py", "python3"):
        try:
            ast.parse(code)
        except SyntaxError as exc:
            return f"checks: Python does not parse: {exc.msg} (line {exc.lineno})"
        return None
    if language == "json":
        try:
            json.loads(code)
        except ValueError as exc:
            return f"checks: JSON does not parse: {exc}"
        return None
    depth: list[str] = []
    pairs = {")": "(", "]": "[", "}": "{"}
    for char in code:
        if char in "([{":
            depth.append(char)
        elif char in pairs and (not depth or depth.pop() != pairs[char]):
            return f"checks: unbalanced {char!r} in {language} code"
    return f"checks: unclosed brackets in {language} code" if depth else None


def _text(text: str, rule: ActionRule) -> Extracted:
    normalised = " ".join(text.split())
    if not normalised:
        return _failed("no_value", "checks: empty answer")
    return Extracted(normalised.lower())


_EXTRACTORS = {"json": _json, "label": _label, "number": _number, "code": _code, "text": _text}


def extract(text: str, rule: ActionRule) -> Extracted:
    """The answer as the action's kind reads it, with the kind's checks run."""
    return _EXTRACTORS[kind_of(rule)](text, rule)
