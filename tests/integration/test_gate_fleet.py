"""The gate judging content, through real workers: wrong answers escalate, consistency samples
and a judge are real calls (priced and recorded on the attempt), audits make labels, and labels
move the learned verifier and the threshold."""

from __future__ import annotations

import itertools
import time
from typing import Any

import pytest

from router import submit_job
from router.gate.calibration import calibration_for, forget_calibrations
from tests.support.fake_providers import OpenAIServer
from tests.support.services import fake_model, fleet_config
from tierflow import store
from tierflow.core.config import ActionRule

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WAIT_S = 60
LABELS = ["decision", "fact", "preference"]


def gate_actions(**extra: Any) -> dict[str, Any]:
    return {
        "calculate": {"answer": "number"},
        "classify_memory": {"answer": "label", "labels": LABELS},
        **extra,
    }


def served_by_local_wrongly(job_ids: list[str]) -> list[str]:
    """Jobs that succeeded on a local tier with an answer the fake made wrong."""
    found = []
    for job_id in job_ids:
        result = store.job_result(job_id)
        assert result is not None
        if result.tier == "api_fallback":
            continue
        final = [a for a in store.attempts_of(job_id) if a.status == "passed"]
        if final and (final[-1].quality_components or {}).get("fake_wrong"):
            found.append(job_id)
    return found


def test_wrong_answers_escalate_and_right_ones_stay_local(fleet) -> None:
    fleet(
        fleet_config(
            local_fast=[fake_model("cheap", wrong_rate=0.5)],
            local_quality=[fake_model("also-cheap", wrong_rate=0.5)],
            actions=gate_actions(),
        )
    )
    handles = [submit_job(f"What is {a} + {a * 3}?", "calculate") for a in range(1, 13)]
    handles += [
        submit_job(f"[truth: fact] Is note {i} a decision or a fact?", "classify_memory")
        for i in range(8)
    ]
    results = [h.wait(timeout=WAIT_S) for h in handles]
    assert all(r.status == "succeeded" for r in results), [r.error for r in results]
    ids = [h.job_id for h in handles]
    calc = [r for r, h in zip(results, handles, strict=True) if h in handles[:12]]
    # Every wrong arithmetic was caught by the recomputed working: none stayed local.
    assert served_by_local_wrongly(ids[:12]) == []
    assert any(r.tier != "api_fallback" for r in calc), "no right answer stayed local"
    assert any(r.tier == "api_fallback" for r in calc), "no wrong answer was made"
    rejected = [
        a for job_id in ids[:12] for a in store.attempts_of(job_id) if a.status == "rejected"
    ]
    assert rejected and all(
        "wrong arithmetic" in " ".join(a.quality_issues or []) for a in rejected
    )


def scripted(answers: list[str]) -> Any:
    cycle = itertools.cycle(answers)
    return lambda _prompt: next(cycle)


def test_consistency_samples_are_real_priced_calls(fleet) -> None:
    answers = ["12 + 30 = 42. The answer is 42.", "The answer is 41.", "The answer is 40."]
    with OpenAIServer(answer=scripted(answers)) as srv:
        local = {
            "name": "vllm-small",
            "provider": "vllm",
            "model_id": "fake-model",
            "base_url": srv.url,
            "input_cost_per_million": 1.0,
            "output_cost_per_million": 2.0,
        }
        actions = gate_actions(
            calculate={
                "answer": "number",
                "verifiers": ["checks", "consistency"],
                "consistency_samples": 2,
            }
        )
        config = fleet_config(
            local_fast=[local],
            local_quality=[fake_model("q")],
            actions=actions,
            action_tier_overrides={"calculate": "local_fast"},
        )
        fleet(config)
        handle = submit_job("What is 12 + 30?", "calculate")
        result = handle.wait(timeout=WAIT_S)
        assert result.status == "succeeded", result.error
        attempts = [(a.tier, a.model, a.status, a.error) for a in store.attempts_of(handle.job_id)]
        assert srv.request_count == 3, attempts  # the answer and two samples
        first = store.attempts_of(handle.job_id)[0]
        assert first.tier == "local_fast" and first.status == "rejected"
        evidence = first.quality_components or {}
        calls = evidence["gate_calls"]
        assert [c["purpose"] for c in calls] == ["consistency", "consistency"]
        assert evidence["consistency"] == 0.0
        assert "consistency" in " ".join(first.quality_issues or [])
        priced = (first.input_tokens * 1.0 + first.output_tokens * 2.0) / 1e6
        priced += sum(c["cost_usd"] for c in calls)
        assert float(first.cost_usd) == pytest.approx(priced)
        assert all(c["input_tokens"] > 0 and c["cost_usd"] > 0 for c in calls)


def test_a_judge_of_a_named_tier_is_asked_and_its_no_escalates(fleet) -> None:
    with OpenAIServer(answer="NO") as judge_srv:
        api = {
            "name": "judge-api",
            "provider": "vllm",
            "model_id": "fake-model",
            "base_url": judge_srv.url,
            "input_cost_per_million": 3.0,
            "output_cost_per_million": 15.0,
        }
        actions = gate_actions(
            classify_memory={
                "answer": "label",
                "labels": LABELS,
                "verifiers": ["checks", "judge"],
                "judge_tier": "api_fallback",
            }
        )
        config = fleet_config(
            local_fast=[fake_model("cheap")],
            local_quality=[fake_model("q")],
            api_fallback=[api, fake_model("fake-api")],
            actions=actions,
            max_fallback_attempts=1,
        )
        fleet(config)
        handle = submit_job("[truth: fact] Is this a decision or a fact?", "classify_memory")
        result = handle.wait(timeout=WAIT_S)
        first = store.attempts_of(handle.job_id)[0]
        assert first.status == "rejected"
        calls = (first.quality_components or {})["gate_calls"]
        assert [c["purpose"] for c in calls] == ["judge"] and calls[0]["model"] == "judge-api"
        assert calls[0]["cost_usd"] > 0 and float(first.cost_usd) >= calls[0]["cost_usd"]
        assert judge_srv.request_count >= 1
        assert "Is the answer above correct?" in str(judge_srv.calls[0].body)
        assert result.status in ("succeeded", "failed")


def test_audits_label_passed_answers_and_find_the_misses(fleet) -> None:
    """A wrong label is still an allowed label: the checks pass it. The audit on the next tier
    (the fake answering right) disagrees, and the label says so: the fleet sees its miss rate."""
    actions = gate_actions(
        classify_memory={"answer": "label", "labels": LABELS, "audit_share": 1.0}
    )
    fleet(
        fleet_config(
            local_fast=[fake_model("cheap", wrong_rate=0.5)],
            local_quality=[fake_model("right")],
            actions=actions,
        )
    )
    handles = [
        submit_job(f"[truth: fact] Is note {i} a decision or a fact?", "classify_memory")
        for i in range(10)
    ]
    for h in handles:
        assert h.wait(timeout=WAIT_S).status == "succeeded"
    deadline = time.monotonic() + 30
    while len(store.labels_for("classify_memory")) < 10 and time.monotonic() < deadline:
        time.sleep(0.2)
    labels = store.labels_for("classify_memory")
    assert len(labels) == 10 and {label.source for label in labels} == {"audit"}
    wrong = {h.job_id for h in handles if served_by_local_wrongly([h.job_id])}
    assert wrong, "the fake made no wrong answer"
    assert {label.job_id for label in labels if not label.good} == wrong
    figures = store.gate_figures()["classify_memory"]
    assert figures["audited_passes"] == 10
    assert figures["miss_rate"] == pytest.approx(len(wrong) / 10)


def test_labels_move_the_learned_verifier_and_the_threshold(fleet) -> None:
    rule = ActionRule(
        answer="label",
        labels=LABELS,
        verifiers=["checks", "shape", "learned"],
        max_escalation=0.25,
        min_labels=8,
    )
    actions = gate_actions(triage={"answer": "label", "labels": LABELS})
    config = fleet_config(
        local_fast=[fake_model("cheap")],
        actions=actions,
        action_tier_overrides={"triage": "local_fast"},
    )
    fleet(config)
    handles = [
        submit_job(f"[truth: fact] Is note {i} a decision or a fact?", "triage") for i in range(8)
    ]
    for h in handles:
        assert h.wait(timeout=WAIT_S).status == "succeeded"
    forget_calibrations()
    before = calibration_for("triage", rule, 0.7)
    assert before.scorer is None and before.threshold == 0.7 and before.notes
    for i, h in enumerate(handles):  # feedback: the daemons say half were bad
        h.feedback(i % 2 == 0, note="checked by hand")
    forget_calibrations()
    after = calibration_for("triage", rule, 0.7)
    assert after.labels == 8
    assert after.scorer is not None  # both outcomes seen: the learned verifier is fitted
    scores = sorted(label.score or 0 for label in store.labels_for("triage"))
    assert after.threshold == scores[2]  # the 25% quantile of the labelled scores
