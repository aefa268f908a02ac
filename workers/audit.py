"""Audits: a passed answer re-run on the next tier; the agreement of the two extracted answers
becomes a label, so the fleet learns its own miss rate (passed answers that were wrong).

The audit's call is priced and stored on the label (``cost_usd``); an audit that cannot run
(no model of the next tier can serve now) is dropped, never retried against a busy fleet.
"""

from __future__ import annotations

import logging

from router.gate import extract
from tierflow import store
from tierflow.core.config import ActionRule, LLMConfig
from tierflow.core.constants import AttemptStatus, Tier
from tierflow.core.errors import BackendError
from tierflow.core.tokens import estimate_tokens
from workers.pipeline.call import build_request
from workers.pipeline.select import fleet_limits
from workers.selection import NoPick, pick_model

log = logging.getLogger(__name__)


def audit_answer(job_id: str, attempt_no: int, tier: Tier, config: LLMConfig) -> str:
    """Re-run the job on ``tier`` and store whether it agrees with the passed answer."""
    job = store.load_job(job_id)
    passed = next((a for a in store.attempts_of(job_id) if a.attempt_no == attempt_no), None)
    if job is None or passed is None or passed.status != AttemptStatus.PASSED.value:
        return "nothing to audit"
    rule = config.routing.actions.get(job.action_type, ActionRule())
    limits = fleet_limits()
    picked = pick_model(config, tier, limits, estimate_tokens(job.prompt))
    if isinstance(picked, NoPick):
        return "no model to audit with"
    try:
        completion = picked.backend.complete(build_request(job, rule, picked.model))
    except BackendError as exc:
        log.info("audit of job %s on %s failed: %s", job_id, tier.value, exc.kind)
        return "audit call failed"
    finally:
        limits.release_probe(picked.model)
        limits.release_slot(picked.model, picked.slot)
    mine, theirs = extract(passed.text or "", rule).value, extract(completion.text, rule).value
    good = mine is not None and mine == theirs
    evidence = passed.quality_components or {}
    store.record_label(
        job_id,
        job.action_type,
        source="audit",
        good=good,
        gate_passed=True,
        score=passed.quality_score,
        features=dict(evidence.get("features") or {}),
        note=f"{picked.model.name} on {tier.value}: {str(theirs)[:200]}",
        cost_usd=picked.model.price(completion.input_tokens, completion.output_tokens),
    )
    return "agreed" if good else "disagreed"
