"""The daemon's budget before a paid call (:class:`BudgetGate`), settled after it.

A job's daemon is ``metadata.daemon`` (set by the gateway from its key). When that daemon has
a ceiling (stored with ``tierflow budget set``, else the config's ``budgets:``; see
:func:`tierflow.store.budgets.budget_for`) and the picked model has a price, the call's
estimated cost is reserved first (:mod:`workers.budget`); refused, the tier is skipped with the
reason ``budget exhausted``, so the job stays on free tiers or fails with that reason. After the
call the reservation is settled to the attempt's real cost.

An attempt deferred to a provider batch (:mod:`workers.pipeline.defer`) keeps its hold while it
waits: the resume settles it to the batch's real price (0 for an error), and a job that ends
without using the result (cancelled, expired) has it settled by the provider batch ticks
(:func:`workers.provider_batch.holds.settle_hold`: released, or the price of an answer the
provider charged for anyway).
"""

from __future__ import annotations

from tierflow.store.budgets import BUDGET_EXHAUSTED, budget_for
from workers.budget import estimate_cost
from workers.pipeline.context import AttemptContext, Step
from workers.pipeline.select import skipped
from workers.provider_batch.holds import budgets, daemon_in, hold_key


def daemon_of(ctx: AttemptContext) -> str | None:
    return daemon_in(ctx.job.job_metadata) if ctx.job is not None else None


def hold_of(ctx: AttemptContext) -> str:
    return hold_key(ctx.job_id, ctx.attempt_no)


class BudgetGate(Step):
    """Reserve a paid call's estimated cost against its daemon's ceilings, or skip the tier."""

    def applies(self, ctx: AttemptContext) -> bool:
        return ctx.making and ctx.pick is not None

    def run(self, ctx: AttemptContext) -> None:
        assert ctx.pick is not None and ctx.limits is not None
        daemon = daemon_of(ctx)
        model = ctx.pick.model
        if daemon is None or model.price(1_000_000, 1_000_000) <= 0:
            return
        budget = budget_for(daemon, ctx.config)
        if budget is None:
            return
        estimate = estimate_cost(model, ctx.pick.reservation.input_tokens)
        if budgets().reserve(daemon, budget, hold_of(ctx), estimate):
            ctx.budget_held = True
            return
        # Refused: give back what the pick took, call nothing, let the next tier (if any) try.
        ctx.limits.settle(model, ctx.pick.reservation, 0, 0)
        ctx.limits.release_slot(model, ctx.pick.slot)
        ctx.pick = None
        ctx.outcome = skipped(
            f"{BUDGET_EXHAUSTED}: daemon {daemon} (daily {budget.daily_usd}, monthly "
            f"{budget.monthly_usd} USD) cannot afford {model.name} (est. ${estimate:.6f})",
            "budget",
        )


class SettleBudget(Step):
    """Settle the reservation to the attempt's real cost (0 when the call failed)."""

    def applies(self, ctx: AttemptContext) -> bool:
        return (
            ctx.budget_held
            and not ctx.replayed
            and ctx.pick is not None
            and ctx.outcome is not None
            and ctx.attempt is None
        )

    def run(self, ctx: AttemptContext) -> None:
        assert ctx.outcome is not None
        daemon = daemon_of(ctx)
        assert daemon is not None  # BudgetGate reserved for it
        budgets().settle(daemon, hold_of(ctx), float(ctx.outcome.get("cost_usd") or 0.0))

