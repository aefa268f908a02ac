"""Names shared by every process of the fleet: tiers, queues, job states, Redis keys.

One place, so a queue or key is never spelled twice.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum


class Tier(StrEnum):
    """The three tiers, cheapest first."""

    LOCAL_FAST = "local_fast"
    LOCAL_QUALITY = "local_quality"
    API_FALLBACK = "api_fallback"


TIER_ORDER: tuple[Tier, ...] = (Tier.LOCAL_FAST, Tier.LOCAL_QUALITY, Tier.API_FALLBACK)
LOCAL_TIERS: frozenset[Tier] = frozenset({Tier.LOCAL_FAST, Tier.LOCAL_QUALITY})


class Complexity(StrEnum):
    SIMPLE = "simple"
    MODERATE = "moderate"
    COMPLEX = "complex"


class Mode(StrEnum):
    """Fleet-wide mode (second seed).

    auto routes by policy, local never calls an API, cloud calls only APIs.
    """

    AUTO = "auto"
    LOCAL = "local"
    CLOUD = "cloud"

    @property
    def tiers(self) -> frozenset[Tier]:
        """The tiers this mode lets the fleet call: the one mode-to-tier rule."""
        if self is Mode.LOCAL:
            return LOCAL_TIERS
        if self is Mode.CLOUD:
            return frozenset({Tier.API_FALLBACK})
        return frozenset(TIER_ORDER)

    def allows(self, tier: Tier | str) -> bool:
        """Whether an attempt on ``tier`` may call a model under this mode."""
        return Tier(tier) in self.tiers


class JobStatus(StrEnum):
    QUEUED = "queued"
    ROUTED = "routed"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    EXPIRED = "expired"  # its deadline passed before it finished; no model is called after
    CANCELLED = "cancelled"  # its batch was cancelled before any attempt ran


TERMINAL_STATUSES: frozenset[str] = frozenset(
    {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.EXPIRED, JobStatus.CANCELLED}
)


class BatchStatus(StrEnum):
    RUNNING = "running"  # jobs are being sent or are in the fleet
    CANCELLING = "cancelling"  # queued jobs were cancelled; jobs in flight are finishing
    CANCELLED = "cancelled"
    DONE = "done"  # every job of the batch is finished


BATCH_PRIORITY = 1  # below a daemon's default 5: interactive work first
INTERACTIVE_SEEN_S = 2.0  # a daemon's job routed within this long: batches keep to their yield


class AttemptStatus(StrEnum):
    RUNNING = "running"
    PASSED = "passed"  # answer passed the quality gate
    REJECTED = "rejected"  # answer failed the quality gate
    ERROR = "error"  # the model call raised
    SKIPPED = "skipped"  # no model of the tier could serve (unavailable, cooled down, mode)


ROUTER_QUEUE = "router"
MAINTENANCE_QUEUE = "maintenance"


def tier_of_queue(queue: str | None) -> Tier:
    """The tier a ``tier.<name>`` queue serves; ValueError for any other queue."""
    name = (queue or "").removeprefix("tier.")
    try:
        return Tier(name)
    except ValueError:
        raise ValueError(f"queue {queue!r} is no tier queue") from None


def tier_queue(tier: Tier | str) -> str:
    """The Celery queue that serves a tier, e.g. ``tier.local_fast``."""
    return f"tier.{Tier(tier).value}"


ALL_QUEUES: tuple[str, ...] = (
    ROUTER_QUEUE,
    *(tier_queue(t) for t in TIER_ORDER),
    MAINTENANCE_QUEUE,
)

# How kombu's Redis transport lays a queue out (celeryconfig's broker_transport_options are built
# from these): every key under ``<prefix>:q:``; one Redis list per priority step, the list of
# step 0 named after the queue and the list of step p > 0 ``<queue>:<p>``. A message's priority
# (0 most urgent) picks its list; tierflow's priority 5 (the default) is sent as 4, so a job at
# default priority waits in ``<prefix>:q:tier.<name>:4``, not in ``<prefix>:q:tier.<name>``.
PRIORITY_STEPS: tuple[int, ...] = tuple(range(10))
QUEUE_PRIORITY_SEP = ":"


def queue_key_prefix(prefix: str) -> str:
    """kombu's ``global_keyprefix``: what every broker key of a fleet starts with."""
    return f"{prefix}:q:"


def priority_lists(queue: str, prefix: str = "tierflow") -> list[str]:
    """The Redis lists that hold ``queue``'s messages, most urgent first (kombu's naming: what
    a queue's depth sums over, what an autoscaler must watch)."""
    base = queue_key_prefix(prefix) + queue
    return [base if p == 0 else f"{base}{QUEUE_PRIORITY_SEP}{p}" for p in PRIORITY_STEPS]


TASK_ROUTE_JOB = "tierflow.route_job"
TASK_RUN_ATTEMPT = "tierflow.run_attempt"
TASK_SWEEP = "tierflow.sweep_stuck_jobs"
TASK_AUDIT = "tierflow.audit_answer"
TASK_RUN_PACK = "tierflow.run_pack"  # first attempts of small label jobs, one call
MAX_PACK_SIZE = 16  # jobs one packed prompt may hold (router/batch.py, workers/packs.py)
PACK_MAX_PROMPT_CHARS = 2000  # a job is small enough to pack: prompt and context
# Beat sends a sweep this often; one runs per interval fleet-wide. A job whose holder's lease ran
# out (a dead, frozen or cut-off worker) is re-sent by the next pass: recovery within lease + this.
SWEEP_INTERVAL_S = 5.0
# A job untouched this long with nothing running is stalled: the sweep re-sends it, and
# /metrics counts it as stuck (tierflow_stuck_jobs) until something moves it.
STALE_AFTER_S = 120.0
TASK_AUTO_MODE = "tierflow.check_auto_mode"
AUTO_MODE_INTERVAL_S = 5.0  # beat checks local availability this often (automatic mode)
# Provider Batch APIs (workers/provider_batch): beat sends both ticks this often, one of each
# runs per interval fleet-wide; a resume runs on the queue of its attempt's tier.
TASK_SUBMIT_PROVIDER_BATCHES = "tierflow.submit_provider_batches"
TASK_POLL_PROVIDER_BATCHES = "tierflow.poll_provider_batches"
TASK_RESUME_ATTEMPT = "tierflow.resume_attempt"
PROVIDER_BATCH_INTERVAL_S = 30.0
# The providers whose Batch API a deferred API-tier attempt can go through.
BATCH_PROVIDERS: frozenset[str] = frozenset({"openai", "anthropic"})


class ItemState(StrEnum):
    """A deferred attempt's request on its way through a provider batch."""

    PENDING = "pending"  # stored by the attempt, not yet in a provider batch
    SUBMITTED = "submitted"  # in a provider batch that has not ended
    DONE = "done"  # its result (an answer or an error) is stored: the attempt resumes
    DROPPED = "dropped"  # its job ended before it was submitted: never sent


class ProviderBatchStatus(StrEnum):
    """Our record of one provider batch (the provider's own status is kept beside it)."""

    SUBMITTING = "submitting"  # items assigned; the provider has not confirmed the batch yet
    OPEN = "open"  # the provider holds it; polled until it ends
    ENDED = "ended"  # ended at the provider and every item's result stored


class Keys:
    """Redis key names under one prefix, so test runs and fleets never collide."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def job_channel(self, job_id: str) -> str:
        """Pub/sub channel that wakes waiters of one job (terminal event and stream chunks)."""
        return f"{self.prefix}:job:{job_id}"

    @property
    def mode_channel(self) -> str:
        return f"{self.prefix}:events:mode"

    @property
    def fallback_channel(self) -> str:
        return f"{self.prefix}:events:fallback"

    @property
    def fallback_history(self) -> str:
        return f"{self.prefix}:fallbacks"

    @property
    def interactive_seen(self) -> str:
        """Set (with a short TTL) while daemons' jobs are being routed: batches yield to them."""
        return f"{self.prefix}:interactive:seen"

    @property
    def sweep_lock(self) -> str:
        return f"{self.prefix}:sweep:lock"

    @property
    def auto_mode_lock(self) -> str:
        return f"{self.prefix}:automode:lock"

    def provider_batch_lock(self, tick: str) -> str:
        """One submit (or poll) tick of the provider batches at a time, fleet-wide."""
        return f"{self.prefix}:provider-batch:{tick}:lock"

    @property
    def local_down_since(self) -> str:
        return f"{self.prefix}:automode:local-down-since"

    def rate(self, scope: str) -> str:
        return f"{self.prefix}:rate:{scope}"

    def cooldown(self, model: str) -> str:
        return f"{self.prefix}:cooldown:{model}"

    def circuit(self, model: str) -> str:
        return f"{self.prefix}:circuit:{model}"

    def concurrency(self, model: str) -> str:
        return f"{self.prefix}:inflight:{model}"

    def fair(self, tier: str) -> str:
        """The stem of one tier's fair-share keys (``router/fairshare.py``): ``<stem>:slots``,
        ``:owner``, ``:count``, ``:ready``, ``:pass``, ``:conf``, ``:served``, ``:waiting``,
        ``:q:<daemon>``."""
        return f"{self.prefix}:fair:{tier}"

    def availability(self, model: str) -> str:
        return f"{self.prefix}:avail:{model}"

    @property
    def engine_state(self) -> str:
        """The embedded engine's state as ``tierflow up`` last recorded it (JSON)."""
        return f"{self.prefix}:engine:local"

    def budget_day(self, daemon: str, day: str) -> str:
        """A daemon's spend (settled plus held, US dollars) on UTC day ``day`` (``YYYYMMDD``)."""
        return f"{self.prefix}:budget:{daemon}:d:{day}"

    def budget_month(self, daemon: str, month: str) -> str:
        """A daemon's spend in UTC month ``month`` (``YYYYMM``)."""
        return f"{self.prefix}:budget:{daemon}:m:{month}"

    def budget_periods(self, daemon: str, now: datetime | None = None) -> tuple[str, str]:
        """The daemon's day and month spend keys for ``now`` (default: now, UTC)."""
        now = now or datetime.now(UTC)
        return self.budget_day(daemon, f"{now:%Y%m%d}"), self.budget_month(daemon, f"{now:%Y%m}")

    def budget_holds(self, daemon: str) -> str:
        """The hash of a daemon's open reservations: ``job:attempt_no`` → estimate and keys."""
        return f"{self.prefix}:budget:{daemon}:holds"

    def cache_exact(self, scope: str, digest: str) -> str:
        """A cached answer (JSON, with a TTL) under the sha256 of its action, prompt, context."""
        return f"{self.prefix}:cache:x:{scope}:{digest}"

    def cache_vectors(self, scope: str, group: str) -> str:
        """The semantic index of one (scope, action, context) group: exact digest → float32s."""
        return f"{self.prefix}:cache:v:{scope}:{group}"

    def cache_order(self, scope: str, group: str) -> str:
        """The same group's digests by the time they were stored (oldest evicted first)."""
        return f"{self.prefix}:cache:o:{scope}:{group}"

    def queue_lists(self, queue: str) -> list[str]:
        """The broker's Redis lists for ``queue`` (see :func:`priority_lists`)."""
        return priority_lists(queue, self.prefix)
