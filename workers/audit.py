"""Audits: a passed answer re-run on the next tier; the agreement of the two extracted answers
becomes a label, so the fleet learns its own miss rate (passed answers that were wrong).

An audit is a paid call like any other, and counted like one:

- its rate-limit reservation is settled to the real usage, its slot and probe given back;
- it is charged to the job's daemon's budget (reserved before, settled after; a daemon that
  cannot afford it is not audited);
- its cost is added to the job's total and to the fleet's (``tierflow costs``, savings, the
  dashboard) as a call of the job outside its attempts (:func:`tierflow.store.record_audit_call`);
- the action's audits stop for the UTC day once they cost ``audit_daily_usd``.

An audit that cannot run (no model of the tier can serve now, no budget) is skipped with its
reason logged and counted (``tierflow_audits_total{outcome=...}``), never retried against a busy
fleet.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from prometheus_client import Counter

from router.gate import extract
from schemas.tables import Attempt, Job
from tierflow import store
from tierflow.core.config import ActionRule, LLMConfig
from tierflow.core.constants import AttemptStatus, Tier
from tierflow.core.errors import BackendError
from tierflow.core.redis_client import get_keys, get_redis
from tierflow.core.tokens import estimate_tokens
from tierflow.store.budgets import budget_for
from workers.budget import estimate_cost
from workers.limits import FleetLimits
from workers.pipeline.budget import budgets
from workers.pipeline.call import build_request
from workers.pipeline.select import fleet_limits
from workers.selection import NoPick, Pick, pick_model

log = logging.getLogger(__name__)
AUDITS = Counter("tierflow_audits", "Audits of passed answers, by outcome", ["action", "outcome"])
_DAY_S = 2 * 86400


def _spend_key(action: str) -> str:
    return f"{get_keys().prefix}audit_spend:{action}:{datetime.now(UTC):%Y-%m-%d}"


def audit_spent_today(action: str) -> float:
    """What the action's audits cost today (UTC), in US dollars."""
    spent: Any = get_redis().get(_spend_key(action))
    return float(spent or 0.0)


def _add_spend(action: str, cost_usd: float) -> None:
    key = _spend_key(action)
    pipe = get_redis().pipeline()
    pipe.incrbyfloat(key, cost_usd)
    pipe.expire(key, _DAY_S)
    pipe.execute()


def _skip(action: str, why: str) -> str:
    AUDITS.labels(action, why).inc()
    log.info("audit skipped for action %s: %s", action, why)
    return why


def audit_answer(job_id: str, attempt_no: int, tier: Tier, config: LLMConfig) -> str:
    """Re-run the job on ``tier``, store whether it agrees with the passed answer, count its
    cost; returns what happened (``agreed``, ``disagreed`` or why it was skipped)."""
    job = store.load_job(job_id)
    passed = next((a for a in store.attempts_of(job_id) if a.attempt_no == attempt_no), None)
    if job is None or passed is None or passed.status != AttemptStatus.PASSED.value:
        return "nothing to audit"
    if store.audit_done(job_id):
        return "audited before"  # a redelivered audit: one call per answer
    rule = config.routing.actions.get(job.action_type, ActionRule())
    if rule.audit_daily_usd is not None and audit_spent_today(job.action_type) >= (
        rule.audit_daily_usd
    ):
        return _skip(job.action_type, "daily audit budget spent")
    limits = fleet_limits()
    picked = pick_model(config, tier, limits, estimate_tokens(job.prompt))
    if isinstance(picked, NoPick):
        return _skip(job.action_type, "no model to audit with")
    try:
        return _audit_with(job, passed, rule, picked, tier, config, limits)
    finally:
        limits.release_probe(picked.model)
        limits.release_slot(picked.model, picked.slot)


def _audit_with(
    job: Job,
    passed: Attempt,
    rule: ActionRule,
    picked: Pick,
    tier: Tier,
    config: LLMConfig,
    limits: FleetLimits,
) -> str:
    """The audit's call with ``picked`` (held in ``limits``, released by the caller)."""
    daemon = (job.job_metadata or {}).get("daemon")
    daemon = daemon if isinstance(daemon, str) and daemon else None
    budget = budget_for(daemon, config) if daemon is not None else None
    hold = f"{job.id}:audit"
    if (
        daemon is not None
        and budget is not None
        and not budgets().reserve(
            daemon, budget, hold, estimate_cost(picked.model, picked.reservation.input_tokens)
        )
    ):
        limits.settle(picked.model, picked.reservation, 0, 0)
        return _skip(job.action_type, "the daemon's budget cannot afford the audit")
    try:
        completion = picked.backend.complete(build_request(job, rule, picked.model))
    except BackendError as exc:
        limits.settle(picked.model, picked.reservation, 0, 0)
        if daemon is not None and budget is not None:
            budgets().settle(daemon, hold, 0.0)
        return _skip(job.action_type, f"audit call failed ({exc.kind})")
    limits.settle(
        picked.model, picked.reservation, completion.input_tokens, completion.output_tokens
    )
    cost = picked.model.price(completion.input_tokens, completion.output_tokens)
    if daemon is not None and budget is not None:
        budgets().settle(daemon, hold, cost)
    _add_spend(job.action_type, cost)
    store.record_audit_call(
        job.id,
        passed.attempt_no,
        tier=tier.value,
        model=picked.model.name,
        provider=picked.model.provider,
        input_tokens=completion.input_tokens,
        output_tokens=completion.output_tokens,
        cost_usd=cost,
    )
    good = _record_label(
        job, passed, rule, f"{picked.model.name} on {tier.value}", completion.text, cost
    )
    outcome = "agreed" if good else "disagreed"
    AUDITS.labels(job.action_type, outcome).inc()
    return outcome


def _record_label(
    job: Job, passed: Attempt, rule: ActionRule, auditor: str, audit_text: str, cost: float
) -> bool:
    """Store the audit's label of ``passed`` (good: the auditor's value equals the answer's)."""
    mine, theirs = extract(passed.text or "", rule).value, extract(audit_text, rule).value
    good = mine is not None and mine == theirs
    evidence = passed.quality_components or {}
    store.record_label(
        job.id,
        job.action_type,
        source="audit",
        good=good,
        gate_passed=True,
        score=passed.quality_score,
        features=dict(evidence.get("features") or {}),
        note=f"{auditor}: {str(theirs)[:200]}",
        cost_usd=cost,
    )
    return good
