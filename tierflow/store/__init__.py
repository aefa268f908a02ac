"""The store floor: every read and write of jobs, attempts, mode switches and dead letters.

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
    finish_attempt,
    load_attempt,
    record_superseded_call,
    release_attempt,
    renew_lease,
    renew_leases,
    superseded_calls_of,
)
from tierflow.store.dead_letters import record_dead_letter, storable_text
from tierflow.store.jobs import (
    create_job,
    finalize_job,
    job_result,
    job_status,
    load_job,
    open_jobs_past,
    save_plan,
    stale_jobs,
    touch_job,
)
from tierflow.store.sweeps import stalled_jobs, touch_jobs

__all__ = [
    "Claim",
    "ClaimResult",
    "Finished",
    "HeldLease",
    "attempts_of",
    "claim_attempt",
    "create_job",
    "finalize_job",
    "finish_attempt",
    "job_result",
    "job_status",
    "load_attempt",
    "load_job",
    "open_jobs_past",
    "record_dead_letter",
    "record_superseded_call",
    "release_attempt",
    "renew_lease",
    "renew_leases",
    "save_plan",
    "stale_jobs",
    "stalled_jobs",
    "storable_text",
    "superseded_calls_of",
    "touch_job",
    "touch_jobs",
]
