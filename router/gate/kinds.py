"""Answer kinds: what an action's answer *is*, how to extract it, and how to check its content.

Each kind turns an answer's text into an :class:`Extracted` value, comparable across samples and
tiers (the consistency verifier and audits compare these), and runs the kind's own checks:

- ``json``: the JSON object (whole text, a fenced block, or the first ``{...}`` span); checked
  against the action's ``json_schema`` (field types and values, enums included) and
  ``required_fields``.
- ``label``: the one allowed label the answer names (``labels``), matched as a whole word,
  case-insensitively, also inside a JSON answer; none, or two different ones, fail.
- ``number``: the final answer (``#### X``, "the answer is X", a trailing ``= X``, else the last
  number); every ``a op b = c`` written in the working is recomputed, and a wrong one fails the
  answer (a small model's arithmetic slips are the commonest wrong answers that look right).
- ``code``: the fenced block (or the whole text); Python (a ``python``/``py`` fence or none) must
  parse with :mod:`ast`, ``json`` must parse; other languages need balanced brackets.
- ``text``: the text itself, whitespace-normalised; no content check of its own (the shape
  verifier's checks still apply).

The score of the checks is 1.0 when every check passed and 0.0 when one failed; ``issues`` say
which, as evidence stored on the attempt.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

import jsonschema

from router.quality import extract_json
from tierflow.core.config import ActionRule

ANSWER_KINDS = ("json", "label", "number", "code", "text")
_FENCE = re.compile(r"```([\w+-]*)[^\n]*\n(.*?)```", re.S)
_NUMBER = r"[-+]?\$?\d[\d,]*(?:\.\d+)?"
_FINAL = (
    re.compile(rf"####\s*({_NUMBER})"),
    re.compile(rf"(?i)answer\s*(?:is|:|=)\s*\**\s*({_NUMBER})"),
    re.compile(rf"=\s*({_NUMBER})\s*\.?\s*$"),
)
_OPS = "-+*/x\u00d7\u00f7"  # also the multiplication and division signs
_ARITH = re.compile(
    rf"({_NUMBER})\s*([{_OPS}])\s*({_NUMBER})\s*=\s*({_NUMBER})(?!\s*[{_OPS}]\s*\d)"
)
_ANY_NUMBER = re.compile(_NUMBER)


@dataclass(frozen=True)
class Extracted:
    """An answer as its kind reads it: ``value`` (None when not found), the checks' ``score``
    (1.0 all passed, 0.0 one failed) and the ``issues`` found."""

    value: Any
    score: float
    issues: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.value is not None and self.score > 0


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
        return Extracted(None, 0.0, ["checks: no JSON value"])
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
    return Extracted(_canonical(value), 0.0 if issues else 1.0, issues)


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
        return Extracted(None, 0.0, ["checks: the action names no labels"])
    haystack = text
    try:
        parsed = extract_json(text)
        if isinstance(parsed, dict):
            haystack = " ".join(str(v) for v in parsed.values())
        elif isinstance(parsed, str):
            haystack = parsed
    except ValueError:
        pass
    found = {
        label
        for label in rule.labels
        if re.search(rf"(?<![\w-]){re.escape(label)}(?![\w-])", haystack, re.I)
    }
    if not found:
        return Extracted(None, 0.0, [f"checks: no label of {rule.labels}"])
    if len(found) > 1:
        return Extracted(None, 0.0, [f"checks: several labels named: {sorted(found)}"])
    (label,) = found
    return Extracted(label.lower(), 1.0)


def parse_number(raw: str) -> Decimal | None:
    """``"1,234.50"``, ``"$12"`` → Decimal; None when it is no number."""
    try:
        return Decimal(raw.replace(",", "").replace("$", ""))
    except InvalidOperation:
        return None


def _recompute(a: Decimal, op: str, b: Decimal) -> Decimal | None:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op in "*x\u00d7":
        return a * b
    return a / b if b != 0 else None


def wrong_arithmetic(text: str) -> list[str]:
    """Every ``a op b = c`` in the text whose result is wrong (to 2 decimals)."""
    wrong = []
    for a_raw, op, b_raw, c_raw in _ARITH.findall(text):
        a, b, c = parse_number(a_raw), parse_number(b_raw), parse_number(c_raw)
        if a is None or b is None or c is None:
            continue
        result = _recompute(a, op, b)
        # Written to d decimals, c may be off by half a unit of its last place (10 / 3 = 3.33).
        decimals = len(c_raw.split(".", 1)[1]) if "." in c_raw else 0
        tolerance = Decimal(5) / Decimal(10) ** (decimals + 1) + Decimal("1e-9")
        if result is not None and abs(result - c) > tolerance:
            wrong.append(f"{a_raw} {op} {b_raw} = {c_raw} (is {result.normalize():f})")
    return wrong


def final_number(text: str) -> Decimal | None:
    """The answer's final number: an explicit marker first, else the last number written."""
    for pattern in _FINAL:
        matches = pattern.findall(text.strip())
        if matches:
            return parse_number(matches[-1])
    numbers = _ANY_NUMBER.findall(text)
    return parse_number(numbers[-1]) if numbers else None


def _number(text: str, rule: ActionRule) -> Extracted:
    value = final_number(text)
    if value is None:
        return Extracted(None, 0.0, ["checks: no final number"])
    wrong = wrong_arithmetic(text)
    issues = [f"checks: wrong arithmetic: {w}" for w in wrong]
    return Extracted(value.normalize(), 0.0 if wrong else 1.0, issues)


def _code(text: str, rule: ActionRule) -> Extracted:
    blocks = _FENCE.findall(text + "\n")
    language, code = (blocks[0][0].lower(), blocks[0][1]) if blocks else ("", text)
    if not code.strip():
        return Extracted(None, 0.0, ["checks: no code"])
    issue = _parse_problem(language, code)
    return Extracted(code.strip(), 0.0 if issue else 1.0, [issue] if issue else [])


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
        return Extracted(None, 0.0, ["checks: empty answer"])
    return Extracted(normalised.lower(), 1.0)


_EXTRACTORS = {"json": _json, "label": _label, "number": _number, "code": _code, "text": _text}


def extract(text: str, rule: ActionRule) -> Extracted:
    """The answer as the action's kind reads it, with the kind's checks run."""
    return _EXTRACTORS[kind_of(rule)](text, rule)
