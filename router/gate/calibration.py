"""An action's threshold and learned scorer, fitted from its labels and cached per process.

The fleet reads the labels of an action at most once a minute per process (not per attempt);
``tierflow eval --prequential`` fits the same way on the rows seen so far.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from router.gate.learned import Label, LogisticScorer, calibrated_threshold
from tierflow import store
from tierflow.core.config import ActionRule

CACHE_S = 60.0


@dataclass(frozen=True)
class Calibration:
    """What the gate uses for one action: the threshold, the scorer (None until fitted), how
    many labels they came from, and notes saying why (e.g. too few labels)."""

    threshold: float
    scorer: LogisticScorer | None
    labels: int
    notes: list[str] = field(default_factory=list)


def calibrate(rule: ActionRule, default_threshold: float, labels: Sequence[Label]) -> Calibration:
    """Fit the scorer (if the action uses ``learned``) and the threshold on ``labels``."""
    notes: list[str] = []
    enough = len(labels) >= rule.min_labels
    scorer = LogisticScorer.fit(labels) if enough and "learned" in rule.verifiers else None
    if "learned" in rule.verifiers and scorer is None:
        notes.append(f"learned: {len(labels)} labels (needs {rule.min_labels}, both outcomes)")
    targeted = rule.target_quality is not None or rule.max_escalation is not None
    threshold = calibrated_threshold(
        labels,
        target_quality=rule.target_quality,
        max_escalation=rule.max_escalation,
        min_labels=rule.min_labels,
    )
    if threshold is None:
        threshold = default_threshold
        if targeted:
            # Conservative until the labels say otherwise: no lower than the default mark.
            notes.append(
                f"threshold: {len(labels)} labels < {rule.min_labels}: default {threshold} kept"
            )
    return Calibration(threshold, scorer, len(labels), notes)


def labels_of(action: str) -> list[Label]:
    """The action's stored labels as :class:`Label`, oldest first."""
    return [
        Label(row.score if row.score is not None else 0.0, dict(row.features or {}), row.good)
        for row in store.labels_for(action)
    ]


_CACHE: dict[tuple[str, str], tuple[float, Calibration]] = {}


def calibration_for(action: str, rule: ActionRule, default_threshold: float) -> Calibration:
    """The action's calibration, read from the labels at most every ``CACHE_S`` seconds; the
    default threshold alone (no read at all) when the action neither learns nor targets."""
    uses_labels = (
        "learned" in rule.verifiers
        or rule.target_quality is not None
        or rule.max_escalation is not None
    )
    if not uses_labels:
        return Calibration(default_threshold, None, 0)
    key = (action, rule.model_dump_json())
    cached = _CACHE.get(key)
    now = time.monotonic()
    if cached is not None and now - cached[0] < CACHE_S:
        return cached[1]
    found = calibrate(rule, default_threshold, labels_of(action))
    _CACHE[key] = (now, found)
    return found


def forget_calibrations() -> None:
    """Drop cached calibrations (after new labels, in tests)."""
    _CACHE.clear()
