"""The quality gate: an action's verifiers composed into one verdict on one answer.

``judge_answer`` runs the action's ``verifiers`` in order (``learned`` last, over the others'
scores and the answer's features). The answer passes when no verifier failed it (a vetoing
check, disagreeing samples, a judge's no, the seed's shape score below its mark) **and** the
combined score reaches the threshold. The combined score is
:func:`router.gate.learned.gate_score`: the learned probability when a scorer is fitted, else
the mean of the verdicts' scores; the same function scores the labels the threshold is fitted on.
The threshold is the calibrated one (:func:`router.gate.calibration.fit_gate`) when the action
sets a target and enough labels exist, else ``routing.quality_threshold``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from router.gate.features import FEATURES_VERSION
from router.gate.kinds import Extracted, extract, kind_of
from router.gate.learned import gate_score
from router.gate.verifiers import (
    VERIFIERS,
    Answer,
    Verdict,
    features,
    get_verifier,
    learned_verdict,
    register_verifier,
)


@dataclass(frozen=True)
class GateReport:
    """The gate's verdict on one answer, with every verifier's evidence."""

    passed: bool
    score: float
    threshold: float
    verdicts: list[Verdict]
    issues: list[str] = field(default_factory=list)
    features: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def confidence(self) -> float:
        return self.score

    @property
    def components(self) -> dict[str, float]:
        return {v.name: round(v.score, 4) for v in self.verdicts}

    def evidence(self) -> dict[str, Any]:
        """What is stored on the attempt: the seed's shape components (format, completeness,
        coherence, self_critique) when the shape verifier ran, each verifier's score and
        evidence, the threshold and the features."""
        shape = next((v for v in self.verdicts if v.name == "shape"), None)
        return {
            **(shape.evidence.get("components", {}) if shape else {}),
            **self.components,
            "threshold": self.threshold,
            "verdicts": {v.name: v.evidence for v in self.verdicts},
            "vetoes": self.vetoes,
            "features": self.features,
            "features_version": FEATURES_VERSION,
            "notes": self.notes,
        }

    @property
    def vetoes(self) -> list[str]:
        """The codes of the checks that vetoed the answer, and the names of the other
        verifiers that failed it (``consistency``, ``judge``, ``shape``)."""
        found: list[str] = []
        for verdict in self.verdicts:
            if verdict.name == "checks":
                found += verdict.evidence.get("vetoes", [])
            elif not verdict.passed:
                found.append(verdict.name)
        return found


def _issues(verdicts: list[Verdict]) -> list[str]:
    found: list[str] = []
    for verdict in verdicts:
        found += [str(i) for i in verdict.evidence.get("issues", [])]
        if not verdict.passed and not verdict.evidence.get("issues"):
            found.append(f"{verdict.name}: failed (score {verdict.score:.2f})")
    return found


def judge_answer(answer: Answer, threshold: float, notes: list[str] | None = None) -> GateReport:
    """Run the action's verifiers on ``answer``; see the module's docstring for the rule."""
    names = answer.rule.verifiers
    verdicts = [get_verifier(name)(answer) for name in names if name != "learned"]
    feats = features(answer, verdicts)
    scorer = answer.learned if "learned" in names else None
    if "learned" in names:
        verdicts.append(learned_verdict(answer, feats))
    score = gate_score(feats, scorer, names)
    vetoed = any(not v.passed for v in verdicts)
    issues = _issues(verdicts)
    if not vetoed and score < threshold:
        issues.append(f"gate: score {score:.2f} below the threshold {threshold:.2f}")
    passed = not vetoed and score >= threshold
    return GateReport(passed, round(score, 4), threshold, verdicts, issues, feats, notes or [])


__all__ = [
    "VERIFIERS",
    "Answer",
    "Extracted",
    "GateReport",
    "Verdict",
    "extract",
    "judge_answer",
    "kind_of",
    "register_verifier",
]
