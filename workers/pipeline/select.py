"""Whether the tier may run now, and which of its models: the mode, then the model pick."""

from __future__ import annotations

import json

from router.mode import get_mode
from tierflow import store
from tierflow.core.constants import AttemptStatus
from tierflow.core.redis_client import get_keys, get_redis
from tierflow.core.settings import get_settings
from tierflow.core.tokens import estimate_tokens
from workers.leases import capacity_wait, max_countdown
from workers.limits import FleetLimits
from workers.outcome import Move
from workers.pipeline.context import AttemptContext, Step
from workers.selection import NoPick, pick_model


def skipped(reason: str, kind: str = "skipped", retry_after: float | None = None) -> dict:
    """The fields of an attempt that called no model."""
    return {
        "status": AttemptStatus.SKIPPED.value,
        "error": reason[:2000],
        "error_kind": kind,
        "retry_after_s": retry_after,
    }


def fleet_limits() -> FleetLimits:
    """The fleet-wide limits; a slot held by a dead worker expires a minute after the hard limit."""
    return FleetLimits(get_redis(), get_keys(), slot_ttl_s=get_settings().task_time_limit + 60)


class ModeGate(Step):
    """The fleet's mode, read at every attempt (by the claim's own statement, or here when the
    claim took its other path): a tier it does not allow is skipped."""

    def run(self, ctx: AttemptContext) -> None:
        assert ctx.tier is not None
        if ctx.mode is None:
            ctx.mode = get_mode()
        if not ctx.mode.allows(ctx.tier):
            reason = f"mode {ctx.mode.value} does not allow tier {ctx.tier.value}"
            ctx.outcome = skipped(reason, "mode")


class PickModel(Step):
    """The first servable model of the tier, its slot and rate reservation held.

    When none can serve: if waiting helps (our own rate limit, a concurrency cap) the claim is
    given back and the attempt waits, each wait of the same attempt about twice as long as the
    last (see :func:`workers.leases.capacity_wait`); on the last tier a provider cooldown short
    enough is waited for too (a bounded retry); otherwise the attempt is skipped with every
    model's reason and the next tier takes the work.
    """

    def run(self, ctx: AttemptContext) -> None:
        assert ctx.job is not None and ctx.tier is not None and ctx.plan is not None
        ctx.limits = fleet_limits()
        prompt = ctx.job.prompt + json.dumps(ctx.job.context or {})
        picked = pick_model(ctx.config, ctx.tier, ctx.limits, estimate_tokens(prompt))
        if not isinstance(picked, NoPick):
            ctx.pick = picked
            return
        if picked.wait_s is not None:
            store.release_attempt(ctx.job_id, ctx.attempt_no, ctx.worker)
            wait = capacity_wait(ctx.job_id, picked.wait_s, ctx.waits)
            move = Move("wait", ctx.step, ctx.attempt_no, ctx.retries_in_step, wait, ctx.waits + 1)
            ctx.stop(move)
            return
        reasons = "; ".join(f"{m}: {r}" for m, r in picked.reasons.items())
        last_tier = ctx.step + 1 >= len(ctx.plan.chain)
        cooling = picked.cooling_s is not None and last_tier and picked.cooling_s <= max_countdown()
        ctx.outcome = skipped(
            f"no model of {ctx.tier.value} can serve: {reasons}",
            "cooling" if cooling else "skipped",
            picked.cooling_s if cooling else None,
        )
