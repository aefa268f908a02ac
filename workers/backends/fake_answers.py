"""What the fake backend answers: right or wrong on purpose, never shaped to pass the gate.

The fake reads what the request asks for (the system text the fleet writes for each answer
kind) and answers it **right**, or, for a deterministic share ``wrong_rate`` of prompts,
**wrong** in the way real models are wrong while looking fine:

- JSON with fields: right fills every requested field (with the type the JSON schema in the
  request asks for, when there is one); wrong leaves one out.
- one of some labels: right names the label given by a ``[truth: LABEL]`` marker in the prompt
  (else the first label); wrong names another one.
- arithmetic ("what is 17 + 25"): right shows ``17 + 25 = 42`` and the answer; wrong writes a
  result off by one (both the working and the final answer).
- code: right is a Python block that parses; wrong is one that does not.
- anything else: an echo of the prompt (no content to be right or wrong about: ``None``).

:func:`fake_answer` returns the text and whether it was made wrong (None when there was nothing
to get right), which the fleet stores as evidence so tests can check that wrong answers
escalated. Every text starts with ``[FAKE <model>]``.
"""

from __future__ import annotations

import hashlib
import json
import re
from decimal import Decimal

_FIELDS = re.compile(r"JSON object with the fields: ([^.]+)\.")
_SCHEMA = re.compile(r"JSON schema: (\{.*\})\s*$", re.S)
_LABELS = re.compile(r"exactly one of: ([^.]+)\.")
_TRUTH = re.compile(r"\[truth:\s*([^\]]+)\]")
_SUM = re.compile(r"(-?\d+(?:\.\d+)?)\s*([-+*x])\s*(-?\d+(?:\.\d+)?)")


def is_wrong(prompt: str, wrong_rate: float) -> bool:
    """The same prompt is always right or always wrong for a given rate."""
    if wrong_rate <= 0:
        return False
    digest = hashlib.sha256(f"wrong|{prompt}".encode()).digest()
    return digest[0] / 256 < wrong_rate


def _arithmetic(prompt: str, wrong: bool) -> str | None:
    match = _SUM.search(prompt)
    if match is None:
        return None
    a, op, b = Decimal(match[1]), match[2], Decimal(match[3])
    result = a + b if op == "+" else a - b if op == "-" else a * b
    if wrong:
        result += 1
    shown = f"{result.normalize():f}"
    return f"{match[1]} {op} {match[3]} = {shown}. The answer is {shown}."


def _schema(system: str) -> dict[str, dict[str, object]]:
    """The properties of the JSON schema the fleet put in the system text, if any."""
    found = _SCHEMA.search(system)
    if found is None:
        return {}
    try:
        schema = json.loads(found[1])
    except ValueError:
        return {}
    properties = schema.get("properties") if isinstance(schema, dict) else None
    return properties if isinstance(properties, dict) else {}


def _value(spec: dict[str, object], text: str) -> object:
    """A value of the type a schema property asks for (the first of an enum)."""
    enum = spec.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    kind = spec.get("type")
    if kind == "array":
        return [text]
    if kind in ("number", "integer"):
        return 1
    if kind == "boolean":
        return True
    if kind == "object":
        return {"value": text}
    return text


def fake_answer(
    tag: str, system: str | None, prompt: str, digest: str, wrong_rate: float
) -> tuple[str, bool | None]:
    """``(text, wrong)``; ``wrong`` is None when there is nothing to be right about."""
    system = system or ""
    wrong = is_wrong(prompt, wrong_rate)
    if fields := _FIELDS.search(system):
        names = [f.strip() for f in fields[1].split(",") if f.strip() != "the answer"]
        kept = names[:-1] if wrong and names else names
        schema = _schema(system)
        answer = {name: _value(schema.get(name, {}), f"{tag} {name} {digest}") for name in kept}
        return json.dumps(answer), bool(wrong and names)
    if labels := _LABELS.search(system):
        options = [label.strip() for label in labels[1].split(",") if label.strip()]
        truth = _TRUTH.search(prompt)
        right = truth[1].strip() if truth else options[0]
        others = [o for o in options if o.lower() != right.lower()] or [f"not-{right}"]
        return f"{tag} {others[0] if wrong else right}", wrong
    if (worked := _arithmetic(prompt, wrong)) is not None:
        return f"{tag} {worked}", wrong
    if "code block" in system:
        body = "def answer(:\n    return" if wrong else f"def answer():\n    return {digest!r}"
        return f"{tag}\n```python\n{body}\n```", wrong
    return f"{tag} answer {digest} to: {prompt[:200]}", None
