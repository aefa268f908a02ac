"""Attempts that go through a provider's Batch API (:mod:`workers.provider_batch`).

In :data:`~workers.pipeline.STEPS`:

- :class:`HeldByProviderBatch` (right after the claim, which leaves a batch job's BUSY to
  it): a batch job's attempt that was deferred before waits for its provider batch; a delivery
  of it (a redelivered message, the sweeper's resend once the long lease ran out) calls
  nothing and does not wait on the deferral's lease. Its result already
  stored, the delivery sends the resume instead.
- :class:`DeferToProviderBatch` (in place of the call): an API-tier model of a provider with a
  Batch API, picked for a job whose batch allows it, is not called. The exact request body is
  stored as an item, the attempt's lease held past the provider's window (so the sweeper, which
  re-sends only jobs with no attempt under a live lease, leaves it alone), and the delivery ends
  with no move: the provider batch drives the job from here.

In :data:`~workers.pipeline.RESUME_STEPS` (once the provider batch ended):

- :class:`ClaimDeferred`: the resume takes the attempt from the delivery that deferred it (see
  :func:`tierflow.store.provider_batches.claim_deferred`): a finished one is replayed, a held
  one left to its holder, an ended job's result not used;
- :class:`ProviderBatchResult`: the answer (or the error) goes on the context as if the call
  had just returned it, priced at the batch price, and the normal steps from the Gate on judge,
  price, settle the daemon's budget hold taken before the deferral (to the batch price),
  store (once), decide, finish and wake the waiter.
"""

from __future__ import annotations

from datetime import datetime

from router.mode import get_mode
from tierflow import store
from tierflow.core.config import PROVIDER_BATCH_WINDOW_HOURS, ActionRule, LLMConfig
from tierflow.core.constants import BATCH_PROVIDERS, AttemptStatus, ItemState, Tier
from tierflow.store import provider_batches
from workers.backends.base import registry
from workers.leases import lease_seconds
from workers.limits import Reservation
from workers.pipeline.budget import daemon_of
from workers.pipeline.call import build_request
from workers.pipeline.context import AttemptContext, Step
from workers.pipeline.select import fleet_limits
from workers.provider_batch import results
from workers.provider_batch.dispatch import enqueue_resume
from workers.provider_batch.requests import batch_body
from workers.selection import Pick

HOLD_MARGIN_S = 3600.0  # past the window: the last poll, the results' download, the resume


def hold_seconds() -> float:
    """How long a deferred attempt's lease is held, in seconds: the providers' fixed window
    (:data:`~tierflow.core.config.PROVIDER_BATCH_WINDOW_HOURS`) and a margin."""
    return PROVIDER_BATCH_WINDOW_HOURS * 3600 + HOLD_MARGIN_S


def tier_can_defer(config: LLMConfig, tier: Tier) -> bool:
    """Whether an attempt on ``tier`` may be deferred: one of its models is of a provider with
    a Batch API (:data:`~tierflow.core.constants.BATCH_PROVIDERS`)."""
    return any(m.provider in BATCH_PROVIDERS for m in config.tier_models(tier))


class HeldByProviderBatch(Step):
    """A deferred attempt's delivery ends here (its result stored: the resume is sent); for the
    other attempts of a batch job, note whether its batch allows the providers' Batch APIs.

    An attempt this delivery claimed afresh on a tier with no Batch-API model reads nothing:
    it cannot have been deferred there, nor be deferred now (a read per attempt of every batch
    job, and the largest share of a fake-backend batch attempt's time in the fleet)."""

    def applies(self, ctx: AttemptContext) -> bool:
        return (
            (ctx.making or ctx.busy is not None)
            and ctx.job is not None
            and ctx.job.batch_id is not None
        )

    def run(self, ctx: AttemptContext) -> None:
        assert ctx.job is not None and ctx.job.batch_id is not None and ctx.tier is not None
        if ctx.busy is None and not tier_can_defer(ctx.config, ctx.tier):
            return
        found = provider_batches.deferral_of(ctx.job.batch_id, ctx.job_id, ctx.attempt_no)
        ctx.provider_batch = found.allowed
        if found.item is None:
            if ctx.busy is not None:  # held by another delivery, not by a provider batch
                ctx.stop(ctx.busy)
            return
        if found.item.state == ItemState.DONE.value:
            enqueue_resume(ctx.job_id, ctx.attempt_no, ctx.tier.value, ctx.job.priority)
        ctx.stop()


class DeferToProviderBatch(Step):
    """Store the request for a provider batch instead of calling the model (see the module)."""

    def applies(self, ctx: AttemptContext) -> bool:
        return (
            ctx.making
            and ctx.provider_batch
            and ctx.pick is not None
            and ctx.pick.model.provider in BATCH_PROVIDERS
            and ctx.job is not None
            and not ctx.job.stream
        )

    def run(self, ctx: AttemptContext) -> None:
        assert ctx.job is not None and ctx.pick is not None and ctx.limits is not None
        pick, limits = ctx.pick, ctx.limits
        try:
            rule = ctx.config.routing.actions.get(ctx.job.action_type, ActionRule())
            ctx.request = build_request(ctx.job, rule, pick.model)
            body, prefill = batch_body(pick.backend, ctx.request)
            ctx.deferred = provider_batches.defer_attempt(
                ctx.job_id,
                ctx.attempt_no,
                ctx.worker,
                hold_seconds(),
                step=ctx.step,
                retries_in_step=ctx.retries_in_step,
                provider=pick.model.provider,
                model=pick.model.name,
                base_url=pick.model.base_url,
                body=body,
                prefill=prefill,
            )
        finally:
            # Nothing was called: the slot, the token reservation and a half-open probe go back
            # (the provider's batch limits are its own, not the synchronous ones).
            limits.settle(pick.model, pick.reservation, 0, 0)
            limits.release_slot(pick.model, pick.slot)
            limits.release_probe(pick.model)
        ctx.stop()  # no move: the provider batch resumes the attempt


class ClaimDeferred(Step):
    """Take the deferred attempt for this resume (see the module)."""

    def run(self, ctx: AttemptContext) -> None:
        claim = provider_batches.claim_deferred(
            ctx.job_id, ctx.attempt_no, ctx.worker, lease_seconds(), ctx.delivery_retry
        )
        if claim.claim is store.Claim.DONE:
            ctx.attempt, ctx.replayed = claim.attempt, True
        elif claim.claim is not store.Claim.OWNED:
            ctx.stop()  # gone (the job ended), or another resume holds it, or no result yet


class ProviderBatchResult(Step):
    """Put the provider batch's answer (or error) on the context, as CallModel would, with the
    model priced at its batch price so :class:`~workers.pipeline.price.Price` charges that."""

    def applies(self, ctx: AttemptContext) -> bool:
        return ctx.making and ctx.batch_item is not None

    def run(self, ctx: AttemptContext) -> None:
        item, job = ctx.batch_item, ctx.job
        assert item is not None and job is not None and item.result_kind is not None
        model = ctx.config.model(item.model)
        rule = ctx.config.routing.actions.get(job.action_type, ActionRule())
        ctx.mode = get_mode()
        ctx.limits = fleet_limits()
        ctx.request = build_request(job, rule, model)
        backend = registry.backend_for(model)
        # The gate's own calls (samples, a judge) are direct calls under the limits; the answer
        # is priced at the batch price. No slot or reservation is held: nothing was called now.
        ctx.pick = Pick(model.at_batch_price(), backend, "", Reservation("", 0, 0))
        # The deferring delivery's budget hold (if its daemon has a budget) is still open: it
        # stopped before SettleBudget. SettleBudget settles it to this attempt's real cost (the
        # batch price; 0 for an error); a hold that is not there is left alone.
        ctx.budget_held = daemon_of(ctx) is not None
        ctx.latency_ms = _waited_ms(item.created_at, item.ended_at)
        if item.result_kind == results.SUCCEEDED and item.result is not None:
            ctx.completion = results.completion_of(item.result, model.provider, item.prefill)
            return
        ctx.error = results.error_of(item.result_kind, item.result)
        ctx.outcome = {
            "model": model.name,
            "provider": model.provider,
            "status": AttemptStatus.ERROR.value,
            "error_kind": ctx.error.kind,
            "error": str(ctx.error)[:2000],
            "retry_after_s": None,
            "latency_ms": ctx.latency_ms,
        }


def _waited_ms(start: datetime | None, end: datetime | None) -> float | None:
    """From the deferral to the result (the provider batch's turnaround), in milliseconds."""
    if start is None or end is None:
        return None
    return (end - start).total_seconds() * 1000
