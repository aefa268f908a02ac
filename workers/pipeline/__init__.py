"""The attempt as a pipeline: one delivery of ``run_attempt`` runs :data:`STEPS` in order.

    ClaimAttempt read the job and the mode, own (job, attempt_no): one       claim.py
                 statement;
                 unknown, finished, unrouted, expired: stop; finished
                 before: replay; held: wait
    HeldByProviderBatch  a deferred attempt waits for its provider batch    defer.py
    CacheLookup  first attempt: the cached answer (exact, or a paraphrase's)   cache.py
    ModeGate     the fleet's mode (as the claim read it) allows the tier?   select.py
    PickModel    first servable model: availability, limits, cooldowns,     select.py
                 circuit, capacity (none: wait, or skip with reasons)
    BudgetGate   a paid model within the daemon's budget? (reserve, or skip) budget.py
    DeferToProviderBatch  an API model of a batch that allows it: store the defer.py
                 request for the provider's Batch API instead of calling it
    CallModel    call it, streaming to the waiter if asked                  call.py
    Gate         judge the answer                                           gate.py
    Price        its cost from real usage; the attempt's fields             price.py
    SettleBudget the budget's reservation settled to the real cost         budget.py
    Persist      store the outcome once (a success ends the job in the same  persist.py
                 commit)
    DropLease    stop renewing the attempt's lease (kept from the call on)  call.py
    Decide       succeed / retry / fall back / fail, from the row alone     decide.py
    Notify       stream reset, fallback event (never on a replay)           notify.py
    Metrics      Prometheus counters of the stored attempt (not replays)    metrics.py
    Finish       finalize the job (unless Persist did) and wake its waiter,  finish.py
                 the result in the wake-up
    LabelEscalation  an escalated job's rejected cheap answer compared with   label.py
                 the answer that passed: a label
    CacheStore   cache a fresh passed answer (exact key and embedding)      cache.py
    Audit        send a share of passed answers to the next tier with a     audit.py
                 model
    Enqueue      send the next attempt                                      enqueue.py

A redelivered message runs the same list: the claim finds the attempt finished, the steps that
make an attempt do not apply, and the decision is replayed from the stored row without calling
the model or charging again. A new concern (a verifier, a cache, a budget, a metric) is a new
step in this list.

A deferred attempt is resumed, once its provider batch ended, by :func:`resume_attempt_steps`:
:data:`RESUME_STEPS` are the same steps from the Gate on, after the job is loaded, the attempt
claimed from the delivery that deferred it (:class:`~workers.pipeline.defer.ClaimDeferred`) and
the provider's answer or error put where the call would have put it
(:class:`~workers.pipeline.defer.ProviderBatchResult`). So the gate, the batch price, storing
once, the decision, the finish and the wake-up are the ones every attempt goes through, and a
redelivered resume replays like any redelivered attempt.
"""

from __future__ import annotations

from tierflow.core.config import LLMConfig
from tierflow.core.constants import ItemState
from tierflow.store import provider_batches
from workers.leases import LEASES
from workers.pipeline.audit import Audit
from workers.pipeline.budget import BudgetGate, SettleBudget
from workers.pipeline.cache import CacheLookup, CacheStore
from workers.pipeline.call import CallModel, DropLease
from workers.pipeline.claim import ClaimAttempt, LoadJob
from workers.pipeline.context import AttemptContext, Step, run_steps
from workers.pipeline.decide import Decide
from workers.pipeline.defer import (
    ClaimDeferred,
    DeferToProviderBatch,
    HeldByProviderBatch,
    ProviderBatchResult,
)
from workers.pipeline.enqueue import Enqueue
from workers.pipeline.finish import Finish
from workers.pipeline.gate import Gate
from workers.pipeline.label import LabelEscalation
from workers.pipeline.metrics import Metrics
from workers.pipeline.notify import Notify
from workers.pipeline.persist import Persist
from workers.pipeline.preset import preset_completion, preset_error, run_after_call
from workers.pipeline.price import Price
from workers.pipeline.select import ModeGate, PickModel
from workers.provider_batch.late import keep_late_result

STEPS: tuple[Step, ...] = (
    ClaimAttempt(),
    HeldByProviderBatch(),
    CacheLookup(),
    ModeGate(),
    PickModel(),
    BudgetGate(),
    DeferToProviderBatch(),
    CallModel(),
    Gate(),
    Price(),
    SettleBudget(),
    Persist(),
    DropLease(),
    Decide(),
    Notify(),
    Metrics(),
    Finish(),
    LabelEscalation(),
    CacheStore(),
    Audit(),
    Enqueue(),
)

# The steps after the call: what a resumed attempt goes through with its answer preset.
AFTER_CALL: tuple[Step, ...] = STEPS[[type(s) for s in STEPS].index(Gate) :]
RESUME_STEPS: tuple[Step, ...] = (LoadJob(), ClaimDeferred(), ProviderBatchResult(), *AFTER_CALL)


def run_attempt_steps(
    job_id: str,
    step: int,
    attempt_no: int,
    retries_in_step: int,
    worker: str,
    config: LLMConfig,
    steps: tuple[Step, ...] = STEPS,
    waits: int = 0,
    delivery_retry: int = 0,
) -> AttemptContext:
    """Run (or replay) one delivery of an attempt through ``steps``; return its context.

    ``waits``: how many times this attempt already waited for capacity (the backoff's counter);
    ``delivery_retry``: Celery's retry number of this delivery (a retry takes its claim back).
    """
    ctx = AttemptContext(
        job_id,
        step,
        attempt_no,
        retries_in_step,
        worker,
        config,
        waits=waits,
        delivery_retry=delivery_retry,
    )
    try:
        return run_steps(ctx, steps)
    finally:  # a delivery that raised or stopped before DropLease renews nothing more
        LEASES.drop((job_id, attempt_no, worker))


def resume_attempt_steps(
    job_id: str,
    attempt_no: int,
    worker: str,
    config: LLMConfig,
    steps: tuple[Step, ...] = RESUME_STEPS,
    delivery_retry: int = 0,
) -> AttemptContext:
    """Resume (or replay) a deferred attempt whose provider batch result is stored; return its
    context (``stopped`` with nothing done when there is no such attempt or no result yet).

    ``worker`` is this delivery's ``host/run:task_id``; ``delivery_retry`` Celery's retry number
    of it, as for :func:`run_attempt_steps`. A result that came after its job ended is not used,
    but what the provider charged for it is kept, once, as a superseded call.
    """
    item = provider_batches.item_of(job_id, attempt_no)
    step, retries = (item.step, item.retries_in_step) if item is not None else (0, 0)
    ctx = AttemptContext(
        job_id, step, attempt_no, retries, worker, config, delivery_retry=delivery_retry
    )
    if item is None or item.state != ItemState.DONE.value:
        ctx.stop()
        return ctx
    ctx.batch_item = item
    run_steps(ctx, steps)
    if ctx.attempt is None and not ctx.superseded:
        keep_late_result(item, config)
    return ctx


__all__ = [
    "RESUME_STEPS",
    "STEPS",
    "AttemptContext",
    "Step",
    "preset_completion",
    "preset_error",
    "resume_attempt_steps",
    "run_after_call",
    "run_attempt_steps",
]
