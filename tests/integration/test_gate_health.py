"""The gate's health per action, from its own stored labels: the held-out AUROC that
``tierflow status`` and the dashboard show, and what the gate waits for."""

from __future__ import annotations

import random

import pytest

from router import submit_job
from router.gate.health import gate_health
from tests.support.services import fake_model, fleet_config
from tierflow import store
from tierflow.core.config import LLMConfig

pytestmark = [pytest.mark.integration]

RULE = {"answer": "label", "labels": ["a", "b"], "verifiers": ["checks", "learned"]}


def labelled(action: str, n: int, signal: bool) -> None:
    """``n`` labels whose feature ``x`` tells good from bad (``signal``) or says nothing."""
    rng = random.Random(7)
    for i in range(n):
        good = i % 2 == 0
        x = (1.0 if good else 0.0) + rng.gauss(0, 0.3) if signal else rng.random()
        job = submit_job(f"note {i} of {action}", action)
        store.record_label(
            job.job_id, action, source="feedback", good=good, gate_passed=True, score=None,
            features={"x": x, "checks_score": 1.0},
        )  # fmt: skip


def test_held_out_auroc_tells_a_learning_gate_from_a_blind_one(database, config_file) -> None:
    config = fleet_config(
        local_fast=[fake_model("f")],
        actions={"seeing": RULE, "blind": RULE, "young": {**RULE, "min_labels": 50}},
    )
    config_file(config)
    labelled("seeing", 60, signal=True)
    labelled("blind", 60, signal=False)
    labelled("young", 10, signal=True)
    health = gate_health(LLMConfig.model_validate(config))
    assert health["seeing"]["auroc"] > 0.9 and health["seeing"]["gate"] == "learned"
    assert 0.2 < health["blind"]["auroc"] < 0.8
    assert health["young"]["auroc"] is None  # too few labels to hold any out
    assert health["young"]["gate"] == "waits for labels (10/50)"
