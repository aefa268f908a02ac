"""The gate judging content, through real workers: wrong answers a check can see escalate, those
it cannot are stored as misses, consistency samples and a judge are real calls (priced and
recorded on the attempt), audits make labels, and labels move the learned verifier and the
threshold."""

from __future__ import annotations

import itertools
import time
from typing import Any

import pytest

from router import submit_job
from router.gate.calibration import calibration_for, forget_calibrations, labels_of
from router.gate.learned import gate_rank
from router.plan import plan_job
from tests.support.fake_providers import OpenAIServer
from tests.support.services import fake_model, fleet_config
from tierflow import store
from tierflow.core.config import ActionRule
from tierflow.core.constants import Mode
from tierflow.core.settings import get_settings
from tierflow.store.costs import get_cost_summary
from workers.backends.fake_answers import is_wrong
from workers.pipeline.budget import budgets

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


def test_wrong_answers_a_check_cannot_see_pass_and_are_stored_as_misses(fleet) -> None:
    """The fake errs like a model (a wrong last step, the wrong operation, the wrong label named
    cleanly): its wrong answers pass the checks, stay local, and are stored with the fake's
    ``fake_wrong`` evidence, which is how a test counts the gate's misses. Catching them is the
    learned scorer's and the audits' work, measured on real outputs, not the checks'."""
    fleet(
        fleet_config(
            local_fast=[fake_model("cheap", wrong_rate=0.5)],
            local_quality=[fake_model("also-cheap", wrong_rate=0.5)],
            actions=gate_actions(
                calculate={"answer": "number", "verifiers": ["checks"]},
                classify_memory={"answer": "label", "labels": LABELS, "verifiers": ["checks"]},
            ),
        )
    )
    prompts = [(f"What is {a} + {a * 3}?", "calculate") for a in range(1, 13)]
    prompts += [
        (f"[truth: fact] Is note {i} a decision or a fact?", "classify_memory") for i in range(8)
    ]
    handles = [submit_job(prompt, action) for prompt, action in prompts]
    results = [h.wait(timeout=WAIT_S) for h in handles]
    assert all(r.status == "succeeded" for r in results), [r.error for r in results]
    made_wrong = {h.job_id for h, (p, _) in zip(handles, prompts, strict=True) if is_wrong(p, 0.5)}
    assert made_wrong, "the fake made no wrong answer"
    for h in handles:
        first = store.attempts_of(h.job_id)[0]
        assert first.status == "passed", (first.quality_issues, first.quality_components)
        assert (first.quality_components or {})["fake_wrong"] == (h.job_id in made_wrong)
    assert all(r.tier != "api_fallback" for r in results)
    assert set(served_by_local_wrongly([h.job_id for h in handles])) == made_wrong


def test_a_wrong_step_the_checks_can_see_escalates(fleet) -> None:
    """Where the working states a false equation, the arithmetic check vetoes the answer and the
    job escalates to the next tier, whose right answer is returned."""
    with OpenAIServer(answer="12 + 30 = 43. The answer is 43.") as srv:
        local = {"name": "slips", "provider": "vllm", "model_id": "m", "base_url": srv.url}
        fleet(
            fleet_config(
                local_fast=[local],
                local_quality=[fake_model("right")],
                actions=gate_actions(calculate={"answer": "number", "verifiers": ["checks"]}),
                action_tier_overrides={"calculate": "local_fast"},
            )
        )
        handle = submit_job("What is 12 + 30?", "calculate")
        result = handle.wait(timeout=WAIT_S)
    assert result.status == "succeeded" and result.tier == "local_quality", result
    first = store.attempts_of(handle.job_id)[0]
    assert first.status == "rejected" and first.tier == "local_fast"
    assert "wrong arithmetic: 12 + 30 = 43 (is 42)" in " ".join(first.quality_issues or [])
    assert "The answer is 42" in (result.text or "")


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
        # The judge says no to every tier's answer; the last tier's is returned all the same,
        # degraded with the gate's reasons (a judge's no is not a hard failure by default).
        assert result.status == "succeeded" and result.degraded, result
        assert result.tier != first.tier and "judge" in (result.error or "")


def test_audits_label_passed_answers_and_find_the_misses(fleet) -> None:
    """A wrong label is still an allowed label: the checks pass it. The audit on the next tier
    (the fake answering right) disagrees, and the label says so: the fleet sees its miss rate.
    (An action of its own: other tests' escalations label classify_memory too.)"""
    actions = gate_actions(audited_memory={"answer": "label", "labels": LABELS, "audit_share": 1.0})
    fleet(
        fleet_config(
            local_fast=[fake_model("cheap", wrong_rate=0.5)],
            local_quality=[fake_model("right")],
            actions=actions,
            action_tier_overrides={"audited_memory": "local_fast"},
        )
    )
    handles = [
        submit_job(f"[truth: fact] Is note {i} a decision or a fact?", "audited_memory")
        for i in range(10)
    ]
    for h in handles:
        assert h.wait(timeout=WAIT_S).status == "succeeded"
    deadline = time.monotonic() + 30
    while len(store.labels_for("audited_memory")) < 10 and time.monotonic() < deadline:
        time.sleep(0.2)
    labels = store.labels_for("audited_memory")
    assert len(labels) == 10 and {label.source for label in labels} == {"audit"}
    wrong = {h.job_id for h in handles if served_by_local_wrongly([h.job_id])}
    assert wrong, "the fake made no wrong answer"
    assert {label.job_id for label in labels if not label.good} == wrong
    figures = store.gate_figures()["audited_memory"]
    assert figures["audited_passes"] == 10
    assert figures["miss_rate"] == pytest.approx(len(wrong) / 10)


def test_labels_move_the_learned_verifier_and_the_threshold(fleet) -> None:
    """One fit, one scale: once daemons' feedback labels an action's answers, the fleet's own
    gate (in the worker) refits and escalates, of the same prompts sent again, exactly the
    share that the fit computes from the stored labels' features, within the target."""
    triage = {
        "answer": "label",
        "labels": LABELS,
        "verifiers": ["checks", "shape", "learned"],
        "max_escalation": 0.25,
        "min_labels": 8,
    }
    config = fleet_config(
        local_fast=[fake_model("cheap")],
        actions=gate_actions(triage=triage),
        action_tier_overrides={"triage": "local_fast"},
    )
    fleet(config, env={"TIERFLOW_GATE_REFIT_S": "0"})
    rule = ActionRule(**triage)
    prompts = [f"[truth: fact] Is note {i} a decision or a fact?" + " Why?" * i for i in range(8)]
    handles = [submit_job(p, "triage") for p in prompts]
    for h in handles:
        result = h.wait(timeout=WAIT_S)
        assert result.status == "succeeded" and result.tier == "local_fast"  # nothing fitted yet
    forget_calibrations()
    before = calibration_for("triage", rule, 0.7)
    assert before.scorer is None and before.threshold == 0.7 and before.notes
    for i, h in enumerate(handles):  # feedback: the daemons say which were bad
        h.feedback(i % 3 != 0, note="checked by hand")
    forget_calibrations()
    after = calibration_for("triage", rule, 0.7)
    assert after.labels == 8 and after.scorer is not None  # both outcomes: fitted
    labelled = [gate_rank(lb.features, after.scorer, rule.verifiers) for lb in labels_of("triage")]
    assert after.threshold == sorted(labelled)[2]  # the 25% quantile of the ranks it scores
    assert 0.0 <= after.threshold <= 1.0  # the scorer's own scale
    expected = sum(rank < after.threshold for rank in labelled) / len(labelled)
    assert 0 < expected <= 0.25
    again = [submit_job(p, "triage", metadata={"round": 2}) for p in prompts]
    escalated = 0
    for h in again:
        result = h.wait(timeout=WAIT_S)
        assert result.status == "succeeded", (result.error, result.attempts)
        first = store.attempts_of(h.job_id)[0]
        escalated += first.status == "rejected"
        assert (first.quality_components or {})["threshold"] == pytest.approx(after.threshold)
    assert escalated / len(again) == pytest.approx(expected)


def test_an_escalation_is_a_label_and_an_audit_is_a_counted_cost(fleet) -> None:
    """The next tier's answer to an escalated job labels the cheap answer it replaced (free);
    an audited pass is sent to the next tier that has a model (the middle one has none) and
    costs a call, counted in the job's cost, the fleet's costs and the daemon's budget."""

    def local_answer(prompt: str) -> str:
        return "I am not sure." if "note 1" in prompt else "fact"

    api = fake_model("priced-api", input_cost_per_million=3.0, output_cost_per_million=15.0)
    actions = gate_actions(
        classify_memory={"answer": "label", "labels": LABELS, "audit_share": 1.0}
    )
    with OpenAIServer(answer=local_answer) as srv:
        local = {"name": "local", "provider": "vllm", "model_id": "m", "base_url": srv.url}
        config = fleet_config(
            local_fast=[local],
            local_quality=[fake_model("idle", enabled=False)],
            api_fallback=[api],
            actions=actions,
        )
        config["budgets"] = {"auditor": {"daily_usd": 5.0}}
        fleet(config)
        spent_before = get_cost_summary()["total_cost"]
        escalated = submit_job("[truth: fact] Is note 1 a decision or a fact?", "classify_memory")
        audited = submit_job(
            "[truth: fact] Is note 2 a decision or a fact?",
            "classify_memory",
            metadata={"daemon": "auditor"},
        )
        up = escalated.wait(timeout=WAIT_S)
        assert up.status == "succeeded" and up.tier == "api_fallback", up
        done = audited.wait(timeout=WAIT_S)
        assert done.status == "succeeded" and done.tier == "local_fast", done
        deadline = time.monotonic() + 30
        while not store.audit_done(audited.job_id) and time.monotonic() < deadline:
            time.sleep(0.2)
    assert store.audit_done(audited.job_id), "the audit never ran (or was dropped)"
    labels = {label.job_id: label for label in store.labels_for("classify_memory")}
    free = labels[escalated.job_id]
    assert free.source == "escalation" and not free.good and free.gate_passed is False
    assert free.features and float(free.cost_usd) == 0
    audit = labels[audited.job_id]
    assert audit.source == "audit" and audit.gate_passed and audit.good
    cost = float(audit.cost_usd)
    assert cost > 0
    job = store.load_job(audited.job_id)
    assert float(job.cost_usd) == pytest.approx(cost)  # the audit's; the local call was free
    spent_today, _ = budgets().spent("auditor")
    assert spent_today == pytest.approx(cost)
    other = store.load_job(escalated.job_id)
    assert other is not None
    spent = get_cost_summary()["total_cost"] - spent_before
    assert spent == pytest.approx(float(other.cost_usd) + cost, rel=1e-6)


def test_a_prompt_that_predicts_failure_goes_straight_to_the_next_tier(fleet) -> None:
    """Route before generating: once labels say long, number-heavy prompts fail on the cheap
    tier, such a prompt skips it (no cheap call, its plan says why) and a short one does not."""
    triage = {"answer": "label", "labels": LABELS, "route_first_below": 0.5, "min_labels": 8}
    fleet(
        fleet_config(local_fast=[fake_model("cheap")], actions=gate_actions(triage=triage)),
        env={"TIERFLOW_GATE_REFIT_S": "0"},
    )
    hard = "[truth: fact] " + " ".join(f"then {i * 37} more" for i in range(1, 12))
    first = [submit_job(f"[truth: fact] Note {i}?", "triage") for i in range(6)]
    first += [submit_job(f"{hard} ({i})", "triage") for i in range(6)]
    for h in first:
        assert h.wait(timeout=WAIT_S).status == "succeeded"
    for i, h in enumerate(first):  # the daemons: the short ones were right, the long ones not
        h.feedback(i < 6)
    short = submit_job("[truth: fact] Note 99?", "triage", metadata={"round": 2})
    long = submit_job(f"{hard} (99)", "triage", metadata={"round": 2})
    short_done, long_done = short.wait(timeout=WAIT_S), long.wait(timeout=WAIT_S)
    assert short_done.status == long_done.status == "succeeded"
    long_job, short_job = store.load_job(long.job_id), store.load_job(short.job_id)
    assert long_job is not None and short_job is not None
    assert any("pre-routed" in r for r in long_job.plan["reasons"]), long_job.plan
    assert long_job.plan["chain"] == unrouted_chain(long_job.prompt)[1:]
    assert not any("pre-routed" in r for r in short_job.plan["reasons"])
    assert short_job.plan["chain"] == unrouted_chain(short_job.prompt)
    assert store.attempts_of(long.job_id)[0].tier == long_job.plan["chain"][0]


def unrouted_chain(prompt: str) -> list[str]:
    """The chain the plan gives with no pre-routing (the fleet's config, automatic mode)."""
    plan = plan_job("triage", prompt, {}, get_settings().llm, Mode.AUTO)
    return [t.value for t in plan.chain]
