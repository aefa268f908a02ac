"""Load the job and claim the attempt: the steps every delivery starts with."""

from __future__ import annotations

from router.plan import TierPlan
from schemas.jobs import utcnow
from tierflow import store
from tierflow.core.constants import TASK_RUN_ATTEMPT, TERMINAL_STATUSES
from workers.leases import lease_seconds, max_countdown
from workers.outcome import Move, finish_expired, finish_failure
from workers.pipeline.context import AttemptContext, Step


class LoadJob(Step):
    """Read the job once; a message for a job that is unknown, finished or unrouted ends here
    (the odd ones are recorded as dead letters), and a job past its deadline ends ``expired``."""

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
        if job.deadline is not None and job.deadline <= utcnow():
            finish_expired(job, ctx.config)  # no model is called past a job's deadline
            return ctx.stop()
        if not job.plan:
            store.record_dead_letter(
                "run_attempt before the job was routed", task=TASK_RUN_ATTEMPT, job_id=job.id
            )
            return ctx.stop()
        plan = TierPlan.from_json(job.plan)
        if ctx.step >= len(plan.chain):
            finish_failure(job, ctx.config, f"step {ctx.step} is past the end of the chain")
            return ctx.stop()
        ctx.job, ctx.plan, ctx.tier = job, plan, plan.chain[ctx.step]
        return None


class ClaimAttempt(Step):
    """Take (job, attempt_no) for this delivery; a finished one is replayed, a held one waited
    for (see :func:`tierflow.store.claim_attempt`)."""

    def run(self, ctx: AttemptContext) -> None:
        assert ctx.tier is not None
        claim = store.claim_attempt(
            ctx.job_id,
            ctx.attempt_no,
            ctx.step,
            ctx.tier.value,
            ctx.worker,
            lease_seconds(),
            ctx.delivery_retry,
        )
        if claim.claim is store.Claim.GONE:
            ctx.stop()  # the job ended (a cancel, its deadline) after LoadJob read it
        elif claim.claim is store.Claim.BUSY:
            # the holder's lease says how long to wait; the capacity-wait count goes on as it is
            wait = min(claim.lease_left_s + 1, max_countdown())
            ctx.stop(Move("wait", ctx.step, ctx.attempt_no, ctx.retries_in_step, wait, ctx.waits))
        elif claim.claim is store.Claim.DONE:
            ctx.attempt, ctx.replayed = claim.attempt, True
