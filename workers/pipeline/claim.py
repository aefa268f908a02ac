"""Load the job and claim the attempt, in one statement: the step every delivery starts with."""

from __future__ import annotations

from datetime import datetime

from router.mode import mode_of
from router.plan import TierPlan
from schemas.jobs import utcnow
from schemas.tables import Job
from tierflow import store
from tierflow.core.constants import TASK_RUN_ATTEMPT, TERMINAL_STATUSES
from workers.leases import lease_seconds, max_countdown
from workers.outcome import Move, finish_expired, finish_failure
from workers.pipeline.context import AttemptContext, Step


class ClaimAttempt(Step):
    """Read the job under its row lock and take (job, attempt_no) for this delivery: one
    statement (:func:`tierflow.store.claim_routed_attempt`) for an ordinary delivery; whatever
    it did not claim goes through :func:`tierflow.store.claim_attempt`'s transaction, which
    says why (the same rules, so the same answer).

    A message for a job that is unknown, finished or unrouted ends here (the odd ones are
    recorded as dead letters), a job past its deadline ends ``expired`` and a step past the end
    of the chain fails the job: none of them is claimed. A finished attempt is replayed, a held
    one waited for.
    """

    def applies(self, ctx: AttemptContext) -> bool:
        return ctx.job is None and not ctx.stopped

    def run(self, ctx: AttemptContext) -> None:
        now = utcnow()
        fast = store.claim_routed_attempt(
            ctx.job_id,
            ctx.attempt_no,
            ctx.step,
            ctx.worker,
            lease_seconds(),
            ctx.delivery_retry,
            now,
        )
        if fast is not None:  # the ordinary delivery: claimed in one round trip
            assert fast.job is not None
            admitted = admit(ctx, fast.job, now)
            assert admitted, "the claim's statement and admit() disagree"
            ctx.job = fast.job
            ctx.mode = mode_of(fast.mode)  # read with the claim: ModeGate needs no read of its own
            return None

        def tier_of(job: Job) -> str | None:
            return ctx.tier.value if admit(ctx, job) and ctx.tier is not None else None

        claim = store.claim_attempt(
            ctx.job_id,
            ctx.attempt_no,
            ctx.step,
            tier_of,
            ctx.worker,
            lease_seconds(),
            ctx.delivery_retry,
        )
        if claim.claim is store.Claim.UNKNOWN:
            store.record_dead_letter(
                f"run_attempt for unknown job {ctx.job_id}", task=TASK_RUN_ATTEMPT
            )
            return ctx.stop()
        if claim.claim is store.Claim.GONE:
            return ctx.stop()  # finished already (a replay of its last step, a cancel, expiry)
        job = claim.job
        assert job is not None
        if claim.claim is store.Claim.REFUSED:
            return refuse(ctx, job)
        ctx.job = job
        if claim.claim is store.Claim.BUSY:
            # the holder's lease says how long to wait; the capacity-wait count goes on as it is
            wait = min(claim.lease_left_s + 1, max_countdown())
            move = Move("wait", ctx.step, ctx.attempt_no, ctx.retries_in_step, wait, ctx.waits)
            if job.batch_id is None:
                ctx.stop(move)
            else:  # held by a provider batch, maybe: HeldByProviderBatch decides, next
                ctx.busy = move
        elif claim.claim is store.Claim.DONE:
            ctx.attempt, ctx.replayed = claim.attempt, True
        return None


class LoadJob(Step):
    """Read the job (for a delivery that does not claim through :class:`ClaimAttempt`: a
    provider batch's resume, :data:`~workers.pipeline.RESUME_STEPS`); the same checks stop it."""

    def applies(self, ctx: AttemptContext) -> bool:
        return ctx.job is None and not ctx.stopped

    def run(self, ctx: AttemptContext) -> None:
        job = store.load_job(ctx.job_id)
        if job is None:
            store.record_dead_letter(
                f"run_attempt for unknown job {ctx.job_id}", task=TASK_RUN_ATTEMPT
            )
            return ctx.stop()
        if job.status in TERMINAL_STATUSES:
            return ctx.stop()
        if not admit(ctx, job):
            return refuse(ctx, job)
        ctx.job = job
        return None


def admit(ctx: AttemptContext, job: Job, now: datetime | None = None) -> bool:
    """Whether an open job can run this attempt at ``now`` (default: the current time): routed,
    within its deadline, the step in its chain (then the plan and the tier go on the context).
    Pure: it runs under the row lock. The same rule as the claim's statement
    (:func:`tierflow.store.claim_routed_attempt`)."""
    now = now or utcnow()
    if not job.plan or (job.deadline is not None and job.deadline <= now):
        return False
    plan = TierPlan.from_json(job.plan)
    if ctx.step >= len(plan.chain):
        return False
    ctx.plan, ctx.tier = plan, plan.chain[ctx.step]
    return True


def refuse(ctx: AttemptContext, job: Job) -> None:
    """Why :func:`admit` said no, and what that does to the job (after any claim's commit:
    ending a job locks its row)."""
    if not job.plan:
        store.record_dead_letter(
            "run_attempt before the job was routed", task=TASK_RUN_ATTEMPT, job_id=job.id
        )
    elif job.deadline is not None and job.deadline <= utcnow():
        finish_expired(job, ctx.config)  # no model is called past a job's deadline
    else:
        finish_failure(job, ctx.config, f"step {ctx.step} is past the end of the chain")
    ctx.stop()
