"""The store floor: every read and write of jobs, attempts, mode switches, dead letters,
the gateway's API keys and the provider batches (:mod:`tierflow.store.provider_batches`).

Both the client (:mod:`router`) and the fleet (:mod:`workers`) reach PostgreSQL only through
here. Every write is idempotent under redelivery: jobs are keyed by their idempotency key,
attempts by ``(job_id, attempt_no)`` and fenced by the claim (see :mod:`tierflow.store.attempts`).
"""

from tierflow.store.attempts import (
    Claim,
    ClaimResult,
    Finished,
    HeldLease,
    attempts_of,
    claim_attempt,
    claim_routed_attempt,
    finish_attempt,
    load_attempt,
    record_superseded_call,
    release_attempt,
    renew_lease,
    renew_leases,
    superseded_calls_of,
)
from tierflow.store.batches import (
    batch_cost,
    batch_progress,
    batch_rows,
    cancel_batch,
    get_batch,
    note_submitted,
    open_batch,
    settle_batch,
    unfinished,
)
from tierflow.store.dead_letters import record_dead_letter, storable_text
from tierflow.store.jobs import (
    create_job,
    finalize_job,
    job_for_key,
    job_progress,
    job_result,
    job_status,
    load_job,
    open_jobs_past,
    routing,
    save_plan,
    save_plan_for_mode,
)
from tierflow.store.keys import KeyInfo, create_key, daemon_for_key, list_keys, revoke_key
from tierflow.store.labels import gate_figures, labels_for, record_label
from tierflow.store.provider_batches import allow_provider_batch, cancel_deferred_jobs
from tierflow.store.sweeps import stalled_jobs, touch_jobs

__all__ = [
    "Claim",
    "ClaimResult",
    "Finished",
    "HeldLease",
    "KeyInfo",
    "allow_provider_batch",
    "attempts_of",
    "batch_cost",
    "batch_progress",
    "batch_rows",
    "cancel_batch",
    "cancel_deferred_jobs",
    "claim_attempt",
    "claim_routed_attempt",
    "create_job",
    "create_key",
    "daemon_for_key",
    "finalize_job",
    "finish_attempt",
    "gate_figures",
    "get_batch",
    "job_for_key",
    "job_progress",
    "job_result",
    "job_status",
    "labels_for",
    "list_keys",
    "load_attempt",
    "load_job",
    "note_submitted",
    "open_batch",
    "open_jobs_past",
    "record_dead_letter",
    "record_label",
    "record_superseded_call",
    "release_attempt",
    "renew_lease",
    "renew_leases",
    "revoke_key",
    "routing",
    "save_plan",
    "save_plan_for_mode",
    "settle_batch",
    "stalled_jobs",
    "storable_text",
    "superseded_calls_of",
    "touch_jobs",
    "unfinished",
]
