"""What the fake backend answers: right, or wrong the way a model is wrong (past the checks).

The fake reads what the request asks for (the system text the fleet writes for each answer
kind) and answers it **right**, or, for a deterministic share ``wrong_rate`` of prompts,
**wrong** in a way no check of the gate can see, as real models are wrong: the answer is
well-formed and well-typed, and only its content is wrong.

- JSON with fields: right fills every requested field (with the type the JSON schema in the
  request asks for, when there is one); wrong fills every field too, each with its type, but one
  value is another value of that type (another enum member, another number, another string;
  an enum of one has no other: that answer stays right).
- one of some labels: right names the label given by a ``[truth: LABEL]`` marker in the prompt
  (else the first label); wrong names another allowed label, cleanly (one label, nothing else;
  an action of one label has no other: that answer stays right).
- arithmetic ("what is 17 + 25"): right shows ``17 + 25 = 42`` and the answer. Wrong is one of
  two errors, chosen per prompt: correct working with a wrong last step (``17 + 25 = 42``,
  then ``The answer is 43``), or the wrong operation carried out correctly (``17 - 25 = -8``,
  ``The answer is -8``). Every equation written is true, so the arithmetic check passes both.
- code: right is a Python block that parses; wrong is one that parses and returns the wrong
  value.
- anything else: an echo of the prompt (no content to be right or wrong about: ``None``).

:func:`fake_answer` returns the text and whether it was made wrong (None when there was nothing
to get right); the fleet stores that as the attempt's ``fake_wrong`` evidence, so a test can
count the wrong answers a gate let through. Gate quality is measured on real model outputs
(``tests/bench/bench_gate.py``, the ``replay`` backend), never on this fake. Every text starts
with ``[FAKE <model>]`` (a JSON answer carries it in its string values).
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
# The operation a model may carry out instead of the one asked for (a misread question).
_MISREAD = {"+": "-", "-": "+", "*": "+", "x": "+"}


def _digest(kind: str, prompt: str) -> bytes:
    return hashlib.sha256(f"{kind}|{prompt}".encode()).digest()


def is_wrong(prompt: str, wrong_rate: float) -> bool:
    """The same prompt is always right or always wrong for a given rate (a share, 0 to 1)."""
    if wrong_rate <= 0:
        return False
    return _digest("wrong", prompt)[0] / 256 < wrong_rate


def _compute(a: Decimal, op: str, b: Decimal) -> Decimal:
    return a + b if op == "+" else a - b if op == "-" else a * b


def _shown(value: Decimal) -> str:
    return f"{value.normalize():f}"


def _arithmetic(prompt: str, wrong: bool) -> str | None:
    match = _SUM.search(prompt)
    if match is None:
        return None
    a, op, b = Decimal(match[1]), match[2], Decimal(match[3])
    result = _compute(a, op, b)
    if not wrong:
        return f"{match[1]} {op} {match[3]} = {_shown(result)}. The answer is {_shown(result)}."
    if _digest("how", prompt)[0] % 2 == 0:  # right working, wrong last step
        final = result + 1 + _digest("off", prompt)[0] % 9
        return f"{match[1]} {op} {match[3]} = {_shown(result)}. The answer is {_shown(final)}."
    misread = _MISREAD[op]  # the wrong operation, carried out correctly
    value = _compute(a, misread, b)
    return f"{match[1]} {misread} {match[3]} = {_shown(value)}. The answer is {_shown(value)}."


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


def _value(spec: dict[str, object], text: str, wrong: bool) -> object:
    """A value of the type a schema property asks for: the first of an enum, else a fixed one;
    ``wrong`` gives another value of the same type (the last of an enum of several)."""
    enum = spec.get("enum")
    if isinstance(enum, list) and enum:
        return enum[-1] if wrong else enum[0]
    kind = spec.get("type")
    if kind == "array":
        return [text]
    if kind in ("number", "integer"):
        return 2 if wrong else 1
    if kind == "boolean":
        return not wrong
    if kind == "object":
        return {"value": text}
    return text


def fake_answer(
    tag: str, system: str | None, prompt: str, digest: str, wrong_rate: float
) -> tuple[str, bool | None]:
    """``(text, wrong)`` for a request: ``tag`` leads the text (``[FAKE <model>]``), ``digest``
    makes right values distinct per prompt; ``wrong`` is None when there is nothing to be right
    about, else whether the answer was made wrong (see the module's docstring for how)."""
    system = system or ""
    wrong = is_wrong(prompt, wrong_rate)
    if fields := _FIELDS.search(system):
        names = [f.strip() for f in fields[1].split(",") if f.strip() != "the answer"]
        schema = _schema(system)
        answer = {
            name: _value(schema.get(name, {}), f"{tag} {name} {digest}", False) for name in names
        }
        made_wrong = False
        if wrong and names:  # one field's value is another of its type (if it has another)
            name = names[-1]
            other = _value(schema.get(name, {}), f"{tag} {name} not-{digest}", True)
            made_wrong = other != answer[name]
            answer[name] = other
        return json.dumps(answer), made_wrong
    if labels := _LABELS.search(system):
        options = [label.strip() for label in labels[1].split(",") if label.strip()]
        truth = _TRUTH.search(prompt)
        right = truth[1].strip() if truth else options[0]
        others = [o for o in options if o.lower() != right.lower()]
        made_wrong = wrong and bool(others)  # a single label leaves nothing else to name
        return f"{tag} {others[0] if made_wrong else right}", made_wrong
    if (worked := _arithmetic(prompt, wrong)) is not None:
        return f"{tag} {worked}", wrong
    if "code block" in system:
        value = f"not-{digest}" if wrong else digest
        return f"{tag}\n```python\ndef answer():\n    return {value!r}\n```", wrong
    return f"{tag} answer {digest} to: {prompt[:200]}", None
