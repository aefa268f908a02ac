"""Load the job and claim the attempt, in one transaction: the step every delivery starts with."""

from __future__ import annotations

from router.plan import TierPlan
from schemas.jobs import utcnow
from schemas.tables import Job
from tierflow import store
from tierflow.core.constants import TASK_RUN_ATTEMPT
from workers.leases import lease_seconds, max_countdown
from workers.outcome import Move, finish_expired, finish_failure
from workers.pipeline.context import AttemptContext, Step


class ClaimAttempt(Step):
    """Read the job under its row lock and take (job, attempt_no) for this delivery (see
    :func:`tierflow.store.claim_attempt`): one commit for both.

    A message for a job that is unknown, finished or unrouted ends here (the odd ones are
    recorded as dead letters), a job past its deadline ends ``expired`` and a step past the end
    of the chain fails the job: none of them is claimed. A finished attempt is replayed, a held
    one waited for.
    """

    def applies(self, ctx: AttemptContext) -> bool:
        return ctx.job is None and not ctx.stopped

    def run(self, ctx: AttemptContext) -> None:
        def tier_of(job: Job) -> str | None:
            if not job.plan or (job.deadline is not None and job.deadline <= utcnow()):
                return None
            plan = TierPlan.from_json(job.plan)
            if ctx.step >= len(plan.chain):
                return None
            ctx.plan, ctx.tier = plan, plan.chain[ctx.step]
            return ctx.tier.value

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
            return self._refused(ctx, job)
        ctx.job = job
        if claim.claim is store.Claim.BUSY:
            # the holder's lease says how long to wait; the capacity-wait count goes on as it is
            wait = min(claim.lease_left_s + 1, max_countdown())
            ctx.stop(Move("wait", ctx.step, ctx.attempt_no, ctx.retries_in_step, wait, ctx.waits))
        elif claim.claim is store.Claim.DONE:
            ctx.attempt, ctx.replayed = claim.attempt, True
        return None

    @staticmethod
    def _refused(ctx: AttemptContext, job: Job) -> None:
        """Why the claim was refused, and what that does to the job (after the claim's commit:
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
