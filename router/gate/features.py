"""What the learned scorer reads: named features of the answer itself, per answer kind, beside the
prompt's (:func:`answer_features`).

The gate stores these with every attempt's evidence and every label, so a scorer can be fitted
again from stored rows alone; :data:`FEATURES_VERSION` is stored with them and with each fit
(a label of another version is refitted on the names both share; a missing feature reads 0).
Every value is a float, most in [0, 1]; lengths are ``log1p`` of a count.

- every kind: ``prompt_chars_log``, ``answer_chars_log``, ``length_ratio`` (answer chars over
  prompt chars, log), ``truncated`` (stopped by length), ``hedging`` (words of doubt),
  ``refusal``, ``repetition`` (share of repeated word 4-grams), ``prompt_digits``;
- ``number``: ``num_marked`` (states its final value: "the answer is", ``####``, a last ``=``),
  ``num_computed`` (the final value is the result of an equation it wrote), ``num_in_working``
  (the final value appears before the end), ``num_prompt_used`` (share of the prompt's numbers
  the answer uses), ``num_final_in_prompt`` (the final value is one the prompt gives),
  ``num_equations_log``, ``num_wrong_arithmetic``, ``num_integer``, ``num_negative``,
  ``num_steps_log`` (lines and sentences), ``num_values_log`` (distinct numbers written);
- ``label``: ``label_count`` (allowed labels named, 0 to 3), ``label_extra_log`` (characters
  beyond the label), ``label_first`` (the label comes first);
- ``json``: ``json_parses``, ``json_schema_ok``, ``json_missing_share`` (required fields
  missing), ``json_empty_share`` (empty or default-looking values: "", null, "N/A", "string");
- ``code``: ``code_parses``, ``code_fenced``, ``code_stub`` (``pass``, ``...``, TODO,
  ``NotImplementedError``), ``code_prompt_names`` (share of the prompt's identifiers the code
  uses), ``code_lines_log``;
- ``text``: nothing more (the common features cover it).
"""

from __future__ import annotations

import math
import re
from decimal import Decimal
from itertools import islice
from typing import Any

from router.gate.arithmetic import equations
from router.gate.kinds import (
    CODE_FENCE,
    FINAL_MARKERS,
    Extracted,
    final_number,
    labels_named,
    parse_number,
)
from router.quality import extract_json
from tierflow.core.config import ActionRule

FEATURES_VERSION = 2
_HEDGES = re.compile(
    r"(?i)\b(maybe|perhaps|possibly|probably|approximately|roughly|i think|i believe|not sure|"
    r"unclear|assum\w+|it depends|cannot be determined|can't be determined|not enough information)"
)
_REFUSAL = re.compile(
    r"(?i)\b(i can(?:no|')t|i am unable|i'm unable|as an ai|i won't|i will not|sorry,? but)\b"
)
_NUMBER = re.compile(r"(?<![\w.])-?\$?\d[\d,]*(?:\.\d+)?")
_IDENT = re.compile(r"\b[A-Za-z_][A-Za-z0-9_]{2,}\b")
_STUB = re.compile(r"(?m)^\s*(pass|\.\.\.)\s*$|TODO|NotImplementedError")
_DEFAULTISH = {"", "n/a", "na", "none", "null", "unknown", "string", "example", "todo", "tbd"}


def _log(count: float) -> float:
    return math.log1p(max(0.0, count))


def _numbers(text: str) -> list[Decimal]:
    found = []
    for raw in _NUMBER.findall(text):
        value = parse_number(raw)
        if value is not None:
            found.append(value.normalize())
    return found


def common_features(prompt: str, text: str, finish_reason: str | None) -> dict[str, float]:
    """Features every kind shares: lengths, truncation, doubt, refusal, repetition."""
    words = text.split()
    grams = [" ".join(words[i : i + 4]) for i in range(max(0, len(words) - 3))]
    repeated = 1 - len(set(grams)) / len(grams) if grams else 0.0
    digits = len(list(islice(filter(str.isdigit, prompt), 20)))
    return {
        "prompt_chars_log": _log(len(prompt)),
        "answer_chars_log": _log(len(text)),
        "length_ratio": _log(len(text)) - _log(len(prompt)),
        "truncated": 1.0 if finish_reason == "length" else 0.0,
        "hedging": min(1.0, len(_HEDGES.findall(text)) / 2),
        "refusal": 1.0 if _REFUSAL.search(text) else 0.0,
        "repetition": repeated,
        "prompt_digits": min(1.0, digits / 20),
    }


def number_features(prompt: str, text: str) -> dict[str, float]:
    """The ``number`` kind's features (see the module)."""
    final = final_number(text)
    written = equations(text)
    results = {e.right_value.normalize() for e in written}
    given = set(_numbers(prompt))
    mine = _numbers(text)
    used = len(given & set(mine)) / len(given) if given else 1.0
    marked = any(pattern.search(text.strip()) for pattern in FINAL_MARKERS)
    early = set(_numbers(text[: max(0, len(text) - 40)]))
    steps = len([s for s in re.split(r"[.\n]+\s", text) if s.strip()])
    return {
        "num_marked": 1.0 if marked else 0.0,
        "num_computed": 1.0 if final is not None and final.normalize() in results else 0.0,
        "num_in_working": 1.0 if final is not None and final.normalize() in early else 0.0,
        "num_prompt_used": used,
        "num_final_in_prompt": 1.0 if final is not None and final.normalize() in given else 0.0,
        "num_equations_log": _log(len(written)),
        "num_wrong_arithmetic": min(1.0, sum(e.wrong for e in written) / 1),
        "num_integer": 1.0 if final is not None and final == final.to_integral_value() else 0.0,
        "num_negative": 1.0 if final is not None and final < 0 else 0.0,
        "num_steps_log": _log(steps),
        "num_values_log": _log(len(set(mine))),
    }


def label_features(text: str, rule: ActionRule) -> dict[str, float]:
    """The ``label`` kind's features (see the module)."""
    named = labels_named(text, rule.labels)
    first = named[0][1] if named else ""
    extra = len(text.strip()) - len(first)
    return {
        "label_count": float(min(3, len(named))),
        "label_extra_log": _log(extra),
        "label_first": 1.0 if named and named[0][0] <= 2 else 0.0,
    }


def _emptyish(value: Any) -> bool:
    if value is None or value in ([], {}):
        return True
    return isinstance(value, str) and value.strip().lower() in _DEFAULTISH


def json_features(text: str, rule: ActionRule, found: Extracted) -> dict[str, float]:
    """The ``json`` kind's features (see the module)."""
    try:
        value = extract_json(text)
    except ValueError:
        return {"json_parses": 0.0, "json_schema_ok": 0.0, "json_missing_share": 1.0}
    fields = rule.required_fields
    missing = [f for f in fields if not isinstance(value, dict) or f not in value]
    values = list(value.values()) if isinstance(value, dict) else [value]
    empty = sum(_emptyish(v) for v in values) / len(values) if values else 1.0
    return {
        "json_parses": 1.0,
        "json_schema_ok": 0.0 if "schema" in found.codes else 1.0,
        "json_missing_share": len(missing) / len(fields) if fields else 0.0,
        "json_empty_share": empty,
    }


def code_features(prompt: str, text: str, found: Extracted) -> dict[str, float]:
    """The ``code`` kind's features (see the module)."""
    blocks = CODE_FENCE.findall(text + "\n")
    code = blocks[0][1] if blocks else text
    names = {n for n in _IDENT.findall(prompt) if "_" in n or any(c.isupper() for c in n[1:])}
    used = sum(1 for n in names if n in code) / len(names) if names else 1.0
    return {
        "code_parses": 0.0 if "parse" in found.codes or found.value is None else 1.0,
        "code_fenced": 1.0 if blocks else 0.0,
        "code_stub": 1.0 if _STUB.search(code) else 0.0,
        "code_prompt_names": used,
        "code_lines_log": _log(code.count("\n") + 1),
    }


def answer_features(
    prompt: str, text: str, rule: ActionRule, kind: str, found: Extracted, finish_reason: str | None
) -> dict[str, float]:
    """Every feature of one answer: the common ones and its kind's (see the module)."""
    feats = common_features(prompt, text, finish_reason)
    if kind == "number":
        feats |= number_features(prompt, text)
    elif kind == "label":
        feats |= label_features(text, rule)
    elif kind == "json":
        feats |= json_features(text, rule, found)
    elif kind == "code":
        feats |= code_features(prompt, text, found)
    return feats


_PROMPT_WORDS = re.compile(
    r"(?i)\b(percent|each|every|times|twice|half|average|ratio|total|left|remain\w*|more|less|"
    r"fewer|after|before|per|rate|how many|how much)\b"
)


def prompt_features(prompt: str) -> dict[str, float]:
    """Features of the prompt alone, known before any answer: what a pre-generation router
    reads to predict whether the cheap tier will pass (:mod:`router.gate.prerouting`)."""
    numbers = _numbers(prompt)
    return {
        "p_chars_log": _log(len(prompt)),
        "p_numbers_log": _log(len(numbers)),
        "p_decimals": 1.0 if any(n != n.to_integral_value() for n in numbers) else 0.0,
        "p_large": 1.0 if any(abs(n) >= 1000 for n in numbers) else 0.0,
        "p_sentences_log": _log(len(re.findall(r"[.?!]", prompt))),
        "p_cues_log": _log(len(_PROMPT_WORDS.findall(prompt))),
        "p_options": 1.0 if re.search(r"(?m)^[A-E]\)", prompt) else 0.0,
    }
