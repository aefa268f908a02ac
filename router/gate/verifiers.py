"""Verifiers: one registry, each judging one answer and returning a :class:`Verdict`.

A verifier is ``verifier(answer) -> Verdict``, registered by name with
:func:`register_verifier` (the way backends register); an action names its list in
``routing.actions.<action>.verifiers``. Built in:

- ``shape``: the first seed's weighted confidence (format, completeness, coherence,
  self-critique; see :mod:`router.quality`): the answer's shape, not its content.
- ``checks``: the answer kind's extractor and checks (:mod:`router.gate.kinds`).
- ``consistency``: ``k`` more samples of the same model; the share whose extracted answer
  equals this one's is the score (the strongest known signal for cheap cascades). Samples come
  from ``answer.samples`` (already drawn: an eval file) or ``answer.sampler(k)`` (the fleet,
  which prices and records the calls).
- ``judge``: a model of a named tier asked whether the answer is right (``answer.judge``,
  priced and recorded by the fleet like any call).
- ``learned``: a calibrated logistic model over the other verifiers' scores and the answer's own
  features (:mod:`router.gate.features`), trained on labels (:mod:`router.gate.learned`); with
  too few labels it abstains.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from router.gate.features import answer_features
from router.gate.kinds import Extracted, extract, kind_of
from router.quality import Critic, check_quality
from tierflow.core.config import ActionRule
from tierflow.core.errors import ConfigError

Sampler = Callable[[int], list[str]]
"""``sampler(k)``: ``k`` more answers of the same model to the same prompt."""
Judge = Callable[[str, str], str]
"""``judge(prompt, answer)``: the judge model's verdict text (starts with yes or no)."""
JUDGE_QUESTION = "Is the answer above correct? Reply YES or NO."
_YES = re.compile(r"^\W*yes\b", re.I)


@dataclass
class Answer:
    """One answer to judge, with what the verifiers may use to judge it."""

    prompt: str
    text: str
    rule: ActionRule
    finish_reason: str | None = None
    threshold: float = 0.7  # the shape score's pass mark (routing.quality_threshold)
    samples: list[str] | None = None
    sampler: Sampler | None = None
    judge: Judge | None = None
    critic: Critic | None = None
    learned: Callable[[dict[str, float]], float] | None = None

    @cached_property
    def extracted(self) -> Extracted:
        return extract(self.text, self.rule)

    @property
    def kind(self) -> str:
        return kind_of(self.rule)


@dataclass(frozen=True)
class Verdict:
    """A verifier's judgement: ``score`` in [0, 1], whether it lets the answer pass, evidence."""

    name: str
    score: float
    passed: bool
    evidence: dict[str, Any] = field(default_factory=dict)


Verifier = Callable[[Answer], Verdict]
VERIFIERS: dict[str, Verifier] = {}


def register_verifier(name: str) -> Callable[[Verifier], Verifier]:
    """Register ``verifier`` under ``name`` (the name an action's ``verifiers`` list uses)."""

    def decorate(verifier: Verifier) -> Verifier:
        VERIFIERS[name] = verifier
        return verifier

    return decorate


def get_verifier(name: str) -> Verifier:
    try:
        return VERIFIERS[name]
    except KeyError:
        known = ", ".join(sorted(VERIFIERS))
        raise ConfigError(f"unknown verifier {name!r} (known: {known})") from None


@register_verifier("shape")
def shape(answer: Answer) -> Verdict:
    report = check_quality(
        answer.text,
        answer.rule,
        answer.threshold,
        finish_reason=answer.finish_reason,
        critic=answer.critic,
    )
    evidence = {"components": report.components, "issues": report.issues}
    evidence["critique"] = report.critique
    return Verdict("shape", report.confidence, report.passed, evidence)


@register_verifier("checks")
def checks(answer: Answer) -> Verdict:
    found = answer.extracted
    value = None if found.value is None else str(found.value)[:200]
    evidence = {
        "kind": answer.kind,
        "value": value,
        "issues": found.issues,
        "codes": found.codes,
        "vetoes": found.vetoes,
    }
    return Verdict("checks", found.score, found.ok, evidence)


@register_verifier("consistency")
def consistency(answer: Answer) -> Verdict:
    k = answer.rule.consistency_samples
    samples = answer.samples if answer.samples is not None else None
    if samples is None and answer.sampler is not None:
        samples = answer.sampler(k)
    if not samples:
        return Verdict("consistency", 1.0, True, {"samples": 0, "note": "no samples: abstains"})
    mine = answer.extracted.value
    values = [extract(s, answer.rule).value for s in samples]
    agree = sum(1 for v in values if mine is not None and v == mine)
    score = agree / len(values)
    evidence = {"samples": len(values), "agree": agree, "values": [str(v)[:80] for v in values]}
    return Verdict("consistency", score, score >= 0.5, evidence)


@register_verifier("judge")
def judge(answer: Answer) -> Verdict:
    if answer.judge is None:
        return Verdict("judge", 1.0, True, {"note": "no judge available: abstains"})
    verdict = answer.judge(answer.prompt, answer.text).strip()
    yes = bool(_YES.match(verdict))
    return Verdict("judge", 1.0 if yes else 0.0, yes, {"verdict": verdict[:200]})


def features(answer: Answer, verdicts: list[Verdict]) -> dict[str, float]:
    """What the learned verifier sees: the other verdicts' scores, ``vetoed`` (1 when one of
    them rejected the answer) and the answer's own features (:mod:`router.gate.features`)."""
    others = [v for v in verdicts if v.name != "learned"]
    found: dict[str, float] = {f"{v.name}_score": v.score for v in others}
    found["vetoed"] = 1.0 if any(not v.passed for v in others) else 0.0
    found |= answer_features(
        answer.prompt,
        answer.text,
        answer.rule,
        answer.kind,
        answer.extracted,
        answer.finish_reason,
    )
    return found


def learned_verdict(answer: Answer, feats: dict[str, float]) -> Verdict:
    """The probability that the answer is right, from the action's fitted model over ``feats``
    (:func:`features`); abstains (score 1, passes) when no model is fitted yet."""
    if answer.learned is None:
        return Verdict("learned", 1.0, True, {"note": "too few labels: abstains"})
    probability = answer.learned(feats)
    return Verdict("learned", probability, True, {"probability": round(probability, 4)})
