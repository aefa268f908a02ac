"""A provider batch's result for a job that ended meanwhile (cancelled with its batch, past its
deadline): the answer is not used, but the provider charged for it.

The deferred attempt, still held for its batch, is closed (``error``, kind ``late``) so nothing
counts it as running, and a succeeded request's cost at the batch price is kept once as a
superseded call (keyed by the request's ``custom_id``), so the job's and the fleet's costs say
what was spent. The daemon's budget hold taken before the deferral is settled to that cost (0:
released, for a request the provider never ran).
"""

from __future__ import annotations

from schemas.tables import ProviderBatchItem
from tierflow import store
from tierflow.core import errors
from tierflow.core.config import LLMConfig
from tierflow.core.constants import TERMINAL_STATUSES
from tierflow.store import provider_batches
from workers.provider_batch import results
from workers.provider_batch.holds import settle_hold

LATE_STATUS = "late_result"  # what a superseded call of an unused batch answer records


def keep_late_result(item: ProviderBatchItem, config: LLMConfig) -> bool:
    """Close the attempt and keep the cost of ``item``'s result when its job has ended before
    any resume used it; False (nothing done) while the job is open, or when a resume stored the
    result as the attempt's (a redelivered resume of a finished job changes nothing)."""
    job = store.load_job(item.job_id)
    status = job.status if job is not None else None
    if status is not None and status not in TERMINAL_STATUSES:
        return False
    attempt = store.load_attempt(item.job_id, item.attempt_no)
    if attempt is not None and attempt.worker != item.deferred_by:
        return False  # a resume took it and stored this result: it is the attempt's, not late
    provider_batches.close_deferred_attempt(
        item.job_id, item.attempt_no, item.deferred_by, f"its job ended ({status}) first"
    )
    metadata = job.job_metadata if job is not None else None
    fields = item.result or {}
    if item.result_kind != results.SUCCEEDED or status is None:
        settle_hold(metadata, item.job_id, item.attempt_no, 0.0)
        return True
    try:
        model = config.model(item.model).at_batch_price()
    except errors.ConfigError:
        settle_hold(metadata, item.job_id, item.attempt_no, 0.0)
        return True  # the model left the config: its price is unknown
    tokens_in, tokens_out = int(fields.get("input_tokens", 0)), int(fields.get("output_tokens", 0))
    cost = model.price(tokens_in, tokens_out)
    settle_hold(metadata, item.job_id, item.attempt_no, cost)
    store.record_superseded_call(
        item.job_id,
        item.attempt_no,
        f"provider-batch:{item.custom_id}",
        status=LATE_STATUS,
        tier=attempt.tier if attempt is not None else None,
        model=item.model,
        provider=item.provider,
        input_tokens=tokens_in,
        output_tokens=tokens_out,
        cost_usd=cost,
    )
    return True
