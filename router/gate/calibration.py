"""One fit for the gate: an action's learned scorer and its threshold, from its labels.

:func:`fit_gate` is the only place a scorer and a threshold are fitted: the fleet's gate
(:func:`calibration_for`, cached per process), ``tierflow eval`` (offline and ``--fleet``) and
the benchmarks call it. The threshold is fitted on the labels' ranks **as the fitted scorer
scores them** (:func:`router.gate.learned.gate_rank` over each label's stored features), so the
threshold and the score the gate compares with it share one scale.

The fleet reads the labels of an action at most every ``gate_refit_s`` seconds per process
(a setting, default 60: not per attempt).
A job's daemon feedback wins over the fleet's own labels of it (escalation, audit): only the
newest label of each job counts, a feedback one first (:func:`labels_of`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from router.gate.features import FEATURES_VERSION
from router.gate.learned import Label, LogisticScorer, calibrated_threshold, gate_rank
from tierflow import store
from tierflow.core.config import ActionRule
from tierflow.core.settings import get_settings


@dataclass(frozen=True)
class Calibration:
    """What the gate uses for one action: the threshold, the scorer (None until fitted), how
    many labels they came from, the features' version, and notes saying why (too few labels)."""

    threshold: float
    scorer: LogisticScorer | None
    labels: int
    notes: list[str] = field(default_factory=list)
    features_version: int = FEATURES_VERSION


def fit_gate(rule: ActionRule, default_threshold: float, labels: Sequence[Label]) -> Calibration:
    """Fit the scorer (if the action uses ``learned``), then the threshold on the labels' ranks
    under that scorer; the default threshold, with a note, until ``min_labels`` exist."""
    notes: list[str] = []
    enough = len(labels) >= rule.min_labels
    learns = "learned" in rule.verifiers
    scorer = LogisticScorer.fit(labels) if enough and learns else None
    if learns and scorer is None:
        notes.append(f"learned: {len(labels)} labels (needs {rule.min_labels}, both outcomes)")
    targeted = rule.target_quality is not None or rule.max_escalation is not None
    threshold = calibrated_threshold(
        [gate_rank(label.features, scorer, rule.verifiers) for label in labels],
        [label.good for label in labels],
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
    """The action's stored labels as :class:`Label`, oldest first: one per job, its daemon's
    feedback when there is any, else the newest of the fleet's own."""
    chosen: dict[str, tuple[int, Label, str]] = {}
    for order, row in enumerate(store.labels_for(action)):
        label = Label(dict(row.features or {}), row.good)
        held = chosen.get(row.job_id)
        if held is not None and row.source != "feedback" and held[2] == "feedback":
            continue
        chosen[row.job_id] = (order, label, row.source)
    return [label for _, label, _ in sorted(chosen.values(), key=lambda item: item[0])]


_CACHE: dict[tuple[str, str], tuple[float, Calibration]] = {}


def uses_labels(rule: ActionRule) -> bool:
    """Whether the action's gate is fitted from labels (it learns or targets a threshold)."""
    return (
        "learned" in rule.verifiers
        or rule.target_quality is not None
        or rule.max_escalation is not None
    )


def calibration_for(action: str, rule: ActionRule, default_threshold: float) -> Calibration:
    """The action's calibration, read from the labels at most every ``gate_refit_s`` seconds;
    the default threshold alone (no read at all) when the action neither learns nor targets."""
    if not uses_labels(rule):
        return Calibration(default_threshold, None, 0)
    key = (action, rule.model_dump_json())
    cached = _CACHE.get(key)
    now = time.monotonic()
    if cached is not None and now - cached[0] < get_settings().gate_refit_s:
        return cached[1]
    found = fit_gate(rule, default_threshold, labels_of(action))
    _CACHE[key] = (now, found)
    return found


def forget_calibrations() -> None:
    """Drop cached calibrations (after new labels, in tests)."""
    _CACHE.clear()
