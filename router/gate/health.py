"""How well each action's gate does, from its own labels: what ``tierflow status`` and the
dashboard show beside the stored figures (:func:`tierflow.store.gate_figures`).

Per action: the store's figures (jobs, escalation rate, labels, audited passes, estimated miss
rate of passed answers) and ``auroc``: how well the gate's rank tells the labels' good answers
from bad ones, **held out**: the gate is fitted (:func:`router.gate.calibration.fit_gate`) on
the oldest 80% of the labels and scored on the newest 20% (None with fewer than ``min_labels``
labels to fit on or one outcome only among the held-out ones); ``gate`` says what the fleet's gate
is now: ``learned`` once a scorer is fitted, else what it waits for.
"""

from __future__ import annotations

import time
from typing import Any

from router.gate.calibration import fit_gate, labels_of, uses_labels
from router.gate.evaluate import auroc
from router.gate.learned import gate_rank
from tierflow import store
from tierflow.core.config import ActionRule, LLMConfig
from tierflow.core.settings import get_settings

HELD_OUT = 0.2
_AUROC: dict[tuple[str, str], tuple[float, float | None]] = {}


def held_out_auroc(rule: ActionRule, default_threshold: float, action: str) -> float | None:
    """The AUROC of the gate fitted on the older labels, on the newer ones (see the module);
    computed at most every ``gate_refit_s`` seconds per action and process (the dashboard
    redraws every few seconds; a fit is not redone for each)."""
    key = (action, rule.model_dump_json())
    cached = _AUROC.get(key)
    now = time.monotonic()
    if cached is not None and now - cached[0] < get_settings().gate_refit_s:
        return cached[1]
    found = _held_out(rule, default_threshold, action)
    _AUROC[key] = (now, found)
    return found


def _held_out(rule: ActionRule, default_threshold: float, action: str) -> float | None:
    labels = labels_of(action)
    cut = int(len(labels) * (1 - HELD_OUT))
    if cut < rule.min_labels:
        return None
    fitted = fit_gate(rule, default_threshold, labels[:cut])
    newer = labels[cut:]
    ranks = [gate_rank(label.features, fitted.scorer, rule.verifiers) for label in newer]
    return auroc(ranks, [label.good for label in newer])


def gate_health(config: LLMConfig) -> dict[str, dict[str, Any]]:
    """Per action: the stored figures, the held-out ``auroc`` and a word on the ``gate``."""
    figures = store.gate_figures()
    threshold = config.routing.quality_threshold
    for action, row in figures.items():
        rule = config.routing.actions.get(action, ActionRule())
        row["auroc"] = held_out_auroc(rule, threshold, action) if row["labels"] else None
        if not uses_labels(rule):
            row["gate"] = "fixed threshold"
        elif "learned" not in rule.verifiers:
            row["gate"] = "calibrated threshold"
        elif row["labels"] < rule.min_labels:
            row["gate"] = f"waits for labels ({row['labels']}/{rule.min_labels})"
        else:
            row["gate"] = "learned"
    return figures
