"""What one delivery of ``run_attempt`` knows as it moves through the steps, and the runner.

Each step reads the context, does its one thing and writes what it learned back. A step runs
when its :meth:`Step.applies` says so, which keeps the list flat: the steps that *make* the
attempt (mode, pick, call, gate, price) run only while it is still being made; once the attempt
row exists (stored by :class:`~workers.pipeline.persist.Persist`, or found finished by the claim
on a redelivery) only the steps that *follow* it (decide, notify, finish, enqueue) run, so a
replay never calls a model or charges again.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from router.gate import GateReport
from router.plan import TierPlan
from schemas.jobs import JobResult
from schemas.tables import Attempt, Job, ProviderBatchItem
from tierflow.core.config import LLMConfig
from tierflow.core.constants import Mode, Tier
from tierflow.core.errors import BackendError
from workers.backends.base import Completion, CompletionRequest
from workers.limits import FleetLimits
from workers.outcome import Move
from workers.selection import Pick


@dataclass
class AttemptContext:
    """One delivery of attempt ``attempt_no`` (chain step ``step``) of job ``job_id``."""

    job_id: str
    step: int
    attempt_no: int
    retries_in_step: int
    worker: str  # "host/run:task_id": the claim knows a retry by the task id, the fence this run
    config: LLMConfig
    waits: int = 0  # times this attempt already waited for capacity (the backoff's exponent)
    delivery_retry: int = 0  # Celery's retry number of this delivery (see claim_attempt)
    # time.monotonic() when this delivery began: its hard time limit runs from here
    started_at: float = field(default_factory=time.monotonic)
    job: Job | None = None
    plan: TierPlan | None = None
    tier: Tier | None = None
    mode: Mode | None = None
    limits: FleetLimits | None = None
    pick: Pick | None = None
    request: CompletionRequest | None = None
    completion: Completion | None = None
    error: BackendError | None = None
    latency_ms: float | None = None
    report: GateReport | None = None
    extra_calls: list[dict[str, Any]] = field(default_factory=list)  # the gate's own calls
    outcome: dict[str, Any] | None = None  # the attempt's fields once known, for Persist
    attempt: Attempt | None = None  # the stored row: this delivery's, or an earlier one's
    replayed: bool = False  # the claim found the attempt finished by an earlier delivery
    move: Move | None = None
    busy: Move | None = None  # a batch job's attempt held by another: the wait, unless deferred
    ended: bool = False  # Persist's transaction also finalized the job (its move: succeed)
    final: JobResult | None = None  # the job as that transaction ended it (None: already ended)
    stopped: bool = False  # nothing more is to be made (the job is gone, done, or must wait)
    # This delivery's lease was taken over while it ran (it stalled past the lease): its outcome
    # was not stored, its call was recorded as superseded, and the new holder drives the job.
    superseded: bool = False
    holder_attempt: Attempt | None = None  # the row as the new holder left it (read, not touched)
    # Provider batches (workers/pipeline/defer.py): the job's batch allows the providers' Batch
    # APIs; this delivery deferred the attempt to one; the item a resume takes its result from.
    provider_batch: bool = False
    deferred: bool = False
    batch_item: ProviderBatchItem | None = None
    budget_held: bool = False  # BudgetGate reserved this call's estimate (SettleBudget settles it)
    cache_vector: Any = None  # the prompt's embedding, when CacheLookup computed one
    # Answered as a member of a pack (workers/packs.py): its place there, stored as evidence.
    pack: dict[str, Any] | None = None

    @property
    def making(self) -> bool:
        """The attempt is still being made: the job is loaded and nothing has settled it."""
        return (
            self.job is not None
            and not self.stopped
            and self.attempt is None
            and self.outcome is None
        )

    def stop(self, move: Move | None = None) -> None:
        """Make nothing more; ``move`` (a wait) is still enqueued by the steps that follow."""
        self.stopped = True
        self.move = move


class Step:
    """One concern of an attempt. Subclasses implement :meth:`run` and, when they do not belong
    to the making of the attempt, :meth:`applies`."""

    def applies(self, ctx: AttemptContext) -> bool:
        return ctx.making

    def run(self, ctx: AttemptContext) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def fresh_success(ctx: AttemptContext) -> bool:
    """This delivery made a new answer that ended the job (not a replay, not a cache hit): what
    the steps that learn from an answer (escalation labels, audits) run after."""
    return (
        ctx.move is not None
        and ctx.move.kind == "succeed"
        and not ctx.replayed
        and ctx.attempt is not None
        and ctx.attempt.cached is None
        and ctx.job is not None
    )


def run_steps(ctx: AttemptContext, steps: Sequence[Step]) -> AttemptContext:
    """Run each step that applies, in order; return the context."""
    for step in steps:
        if step.applies(ctx):
            step.run(ctx)
    return ctx
