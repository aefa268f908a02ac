"""Learning from labels: a calibrated logistic scorer, and thresholds set to a target.

A **label** says whether a cheap answer was good: from a daemon's feedback, or from an audit
(the next tier answered the same prompt; agreement of the extracted answers is the label). Each
label keeps the features the gate saw (:func:`router.gate.verifiers.features`) and the gate's
score, so the scorer and the threshold can be fitted again at any time, and replayed offline.

- :class:`LogisticScorer`: L2-regularised logistic regression on standardised features (plain
  numpy, gradient descent). Its output is a probability that the answer is good.
- :func:`calibrated_threshold`: the score threshold that meets the action's target:
  ``max_escalation`` e: the e-quantile of the labelled scores (the lowest e share escalates);
  ``target_quality`` q: the lowest threshold whose gate keeps at least q of the next tier's
  quality on the labelled rows, counting an escalated answer as the next tier's (so quality
  relative to the next tier = (good and passed + escalated) / rows).
  With fewer than ``min_labels`` labels it returns None: the caller keeps its default and says so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Label:
    """One labelled answer: the gate's ``score`` and ``features`` then, and whether it was good."""

    score: float
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
        return float(1 / (1 + math.exp(-float(z @ self.weights))))


def calibrated_threshold(
    labels: Sequence[Label],
    *,
    target_quality: float | None,
    max_escalation: float | None,
    min_labels: int,
) -> float | None:
    """The threshold meeting the target on ``labels`` (scores as the gate computed them);
    None with too few labels or no target."""
    if len(labels) < min_labels or (target_quality is None and max_escalation is None):
        return None
    scores = sorted(label.score for label in labels)
    if max_escalation is not None:
        index = min(len(scores) - 1, int(max_escalation * len(scores)))
        return scores[index] if max_escalation > 0 else 0.0
    assert target_quality is not None
    for threshold in [0.0, *scores, 1.01]:
        kept = sum(1 for label in labels if label.score >= threshold and label.good)
        escalated = sum(1 for label in labels if label.score < threshold)
        if (kept + escalated) / len(labels) >= target_quality:
            return threshold
    return 1.01
