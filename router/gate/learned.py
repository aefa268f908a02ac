"""Learning from labels: a calibrated logistic scorer, one score scale, thresholds set to a target.

A **label** says whether a cheap answer was good: from a daemon's feedback, an escalation (the
next tier's answer, paid for anyway, compared with the cheap one) or an audit (a passed answer
re-run on the next tier). Each label keeps the **features** the gate saw
(:func:`router.gate.verifiers.features`: the verdicts' scores, ``vetoed``, the answer's own
features), so the scorer and the threshold are fitted again at any time from the labels alone.

- :class:`LogisticScorer`: L2-regularised logistic regression on standardised features (plain
  numpy, gradient descent). Its output is a probability that the answer is good.
- :func:`gate_score` and :func:`gate_rank`: the gate's score of a feature set, computed one way
  for the fleet's gate (:func:`router.gate.judge_answer`), the threshold's fit and ``tierflow
  eval``: the scorer's probability when one is fitted, else the mean of the verdicts' scores;
  the rank is the score less :data:`VETO_PENALTY` when a verifier vetoed.
- :func:`calibrated_threshold`: the rank threshold that meets the action's target on labelled
  ranks: ``max_escalation`` e: the e-quantile (the lowest e share escalates);
  ``target_quality`` q: the lowest threshold whose gate keeps at least q of the next tier's
  quality on the labelled rows, counting an escalated answer as the next tier's (so quality
  relative to the next tier = (good and passed + escalated) / rows).
  With fewer than ``min_labels`` labels it returns None: the caller keeps its default and says so.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

Scorer = Callable[[dict[str, float]], float]
"""``scorer(features) -> P(good)``: a fitted :class:`LogisticScorer`, or any such function."""
VETO_PENALTY = 2.0  # scores lie in [0, 1]: a vetoed answer ranks below every passing one


@dataclass(frozen=True)
class Label:
    """One labelled answer: the ``features`` the gate saw, and whether it was ``good``."""

    features: dict[str, float]
    good: bool


class LogisticScorer:
    """``P(good | features)``; fitted once, then called like a function."""

    def __init__(self, names: list[str], weights: np.ndarray, mean: np.ndarray, std: np.ndarray):
        self.names, self.weights, self.mean, self.std = names, weights, mean, std

    @classmethod
    def fit(
        cls, labels: Sequence[Label], l2: float = 1.0, steps: int = 300
    ) -> LogisticScorer | None:
        """Fit on ``labels``; None when they hold one class only (nothing to learn yet)."""
        if len({label.good for label in labels}) < 2:
            return None
        names = sorted({name for label in labels for name in label.features})
        x = np.array([[label.features.get(n, 0.0) for n in names] for label in labels])
        y = np.array([1.0 if label.good else 0.0 for label in labels])
        mean, std = x.mean(axis=0), x.std(axis=0)
        std[std == 0] = 1.0
        z = np.hstack([(x - mean) / std, np.ones((len(x), 1))])
        w = np.zeros(z.shape[1])
        for _ in range(steps):
            p = 1 / (1 + np.exp(-(z @ w)))
            grad = z.T @ (p - y) / len(y) + l2 * np.r_[w[:-1], 0.0] / len(y)
            w -= 0.5 * grad
        return cls(names, w, mean, std)

    def __call__(self, feats: dict[str, float]) -> float:
        x = np.array([feats.get(n, 0.0) for n in self.names])
        z = np.r_[(x - self.mean) / self.std, 1.0]
        # Clipped: a feature far outside the fitted range must not overflow the exponential.
        logit = min(50.0, max(-50.0, float(z @ self.weights)))
        return 1 / (1 + math.exp(-logit))


def gate_score(feats: dict[str, float], scorer: Scorer | None, verifiers: Sequence[str]) -> float:
    """The gate's score of one answer's features: the scorer's probability when fitted, else
    the mean of the other verdicts' scores (an unfitted ``learned`` abstains and is not counted:
    until labels exist the gate is exactly the one without it)."""
    if scorer is not None:
        return scorer(feats)
    scores = [feats.get(f"{name}_score", 0.0) for name in verifiers if name != "learned"]
    return sum(scores) / len(scores) if scores else 1.0


def gate_rank(feats: dict[str, float], scorer: Scorer | None, verifiers: Sequence[str]) -> float:
    """:func:`gate_score` less :data:`VETO_PENALTY` when a verifier vetoed: an answer passes
    exactly when its rank reaches the threshold."""
    score = gate_score(feats, scorer, verifiers)
    return score - VETO_PENALTY if feats.get("vetoed", 0.0) >= 0.5 else score


def calibrated_threshold(
    ranks: Sequence[float],
    good: Sequence[bool],
    *,
    target_quality: float | None,
    max_escalation: float | None,
    min_labels: int,
) -> float | None:
    """The threshold meeting the target on labelled ``ranks`` (:func:`gate_rank` under the
    scorer that will use the threshold), in [0, 1.01]; None with too few labels or no target."""
    if len(ranks) < min_labels or (target_quality is None and max_escalation is None):
        return None
    ordered = sorted(ranks)
    if max_escalation is not None:
        index = min(len(ordered) - 1, int(max_escalation * len(ordered)))
        # A vetoed answer escalates whatever the threshold: it never goes below 0.
        return max(0.0, ordered[index]) if max_escalation > 0 else 0.0
    assert target_quality is not None
    pairs = list(zip(ranks, good, strict=True))
    for threshold in [0.0, *(r for r in ordered if r > 0), 1.01]:
        kept = sum(1 for rank, ok in pairs if rank >= threshold and ok)
        escalated = sum(1 for rank, _ in pairs if rank < threshold)
        if (kept + escalated) / len(pairs) >= target_quality:
            return threshold
    return 1.01
