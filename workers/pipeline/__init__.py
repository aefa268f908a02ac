"""The attempt as a pipeline: one delivery of ``run_attempt`` runs :data:`STEPS` in order.

    LoadJob      read the job once (unknown, finished, unrouted: stop)      claim.py
    ClaimAttempt own (job, attempt_no); finished before: replay; held: wait claim.py
    ModeGate     the fleet's mode allows the tier?                          select.py
    PickModel    first servable model: availability, limits, cooldowns,     select.py
                 circuit, capacity (none: wait, or skip with reasons)
    BudgetGate   a paid model within the daemon's budget? (reserve, or skip) budget.py
    CallModel    call it, streaming to the waiter if asked                  call.py
    Gate         judge the answer                                           gate.py
    Price        its cost from real usage; the attempt's fields             price.py
    SettleBudget the budget's reservation settled to the real cost         budget.py
    Persist      store the outcome once                                     persist.py
    Decide       succeed / retry / fall back / fail, from the row alone     decide.py
    Notify       stream reset, fallback event (never on a replay)           notify.py
    Metrics      Prometheus counters of the stored attempt (not replays)    metrics.py
    Finish       finalize the job and wake its waiter                       finish.py
    Audit        send a share of passed answers to the next tier            audit.py
    Enqueue      send the next attempt                                      enqueue.py

A redelivered message runs the same list: the claim finds the attempt finished, the steps that
make an attempt do not apply, and the decision is replayed from the stored row without calling
the model or charging again. A new concern (a verifier, a cache, a budget, a metric) is a new
step in this list.
"""

from __future__ import annotations

from tierflow.core.config import LLMConfig
from workers.pipeline.audit import Audit
from workers.pipeline.budget import BudgetGate, SettleBudget
from workers.pipeline.call import CallModel
from workers.pipeline.claim import ClaimAttempt, LoadJob
from workers.pipeline.context import AttemptContext, Step, run_steps
from workers.pipeline.decide import Decide
from workers.pipeline.enqueue import Enqueue
from workers.pipeline.finish import Finish
from workers.pipeline.gate import Gate
from workers.pipeline.metrics import Metrics
from workers.pipeline.notify import Notify
from workers.pipeline.persist import Persist
from workers.pipeline.preset import preset_completion, preset_error, run_after_call
from workers.pipeline.price import Price
from workers.pipeline.select import ModeGate, PickModel

STEPS: tuple[Step, ...] = (
    LoadJob(),
    ClaimAttempt(),
    ModeGate(),
    PickModel(),
    BudgetGate(),
    CallModel(),
    Gate(),
    Price(),
    SettleBudget(),
    Persist(),
    Decide(),
    Notify(),
    Metrics(),
    Finish(),
    Audit(),
    Enqueue(),
)


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
    return run_steps(ctx, steps)


__all__ = [
    "STEPS",
    "AttemptContext",
    "Step",
    "preset_completion",
    "preset_error",
    "run_after_call",
    "run_attempt_steps",
]
