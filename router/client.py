"""The client API daemons use: ``submit_job`` and the handle it returns."""

from __future__ import annotations

import logging
import queue
import time
import weakref
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from router.dispatch import enqueue_route, route_facts
from router.fairshare import job_daemon
from router.feedback import record_feedback
from router.mode import get_mode
from router.plan import plan_job
from router.waiter import event_hub
from schemas.jobs import JobRequest, JobResult, utcnow
from tierflow import store
from tierflow.core.config import LLMConfig
from tierflow.core.constants import ROUTER_QUEUE, TERMINAL_STATUSES, JobStatus, tier_queue
from tierflow.core.errors import (
    JobNotFound,
    JobValidationError,
    JobWaitTimeout,
    describe_validation_error,
)
from tierflow.core.redis_client import get_keys, get_redis
from tierflow.core.settings import get_settings
from tierflow.store.budgets import BUDGET_EXHAUSTED, budget_for

log = logging.getLogger(__name__)

LISTEN_READY_S = 1.0  # how long a submit waits for the process's event subscription (first use)
BROKER_DOWN_NOTE = "stored; the broker is unreachable, it will be sent when the broker is back"


class JobHandle:
    """A submitted job. ``created`` is False when an idempotency key matched an earlier job.

    ``sent`` is False when this submission stored the job but the broker refused the message:
    the job is durable and the sweeper sends it once the broker is back; ``note`` then says so
    in one line (it is None otherwise).
    """

    def __init__(
        self, job_id: str, created: bool = True, *, sent: bool = True, note: str | None = None
    ) -> None:
        self.job_id = job_id
        self.created = created
        self.sent = sent
        self.note = note
        self._inbox: queue.Queue[dict[str, Any]] | None = None
        self._final: JobResult | None = None

    def _listen(self) -> None:
        """Receive the job's events from now on (called by :func:`submit_job` before the job is
        sent, so no event can come before it): :meth:`wait` then needs no read of the job's
        state first. The inbox is given back when the handle is garbage collected."""
        hub = event_hub()
        inbox = hub.register(self.job_id, timeout=LISTEN_READY_S)
        if not hub.live:  # Redis is away: the waiter will read the state, as any other does
            hub.unregister(self.job_id, inbox)
            return
        self._inbox = inbox
        weakref.finalize(self, hub.unregister, self.job_id, inbox)

    def __repr__(self) -> str:
        return f"JobHandle({self.job_id!r})"

    def result(self) -> JobResult:
        """The job's state now, without waiting."""
        found = store.job_result(self.job_id)
        if found is None:
            raise JobNotFound(self.job_id)
        return found

    def _status(self) -> str:
        status = store.job_status(self.job_id)
        if status is None:
            raise JobNotFound(self.job_id)
        return status

    def feedback(self, correct: bool, note: str | None = None) -> int:
        """Say how the answer turned out (a label the gate learns from); returns its id."""
        return record_feedback(self.job_id, correct, note)

    def wait(self, timeout: float = 300.0) -> JobResult:
        """Block until the job is finished, woken by a Redis notification; ``timeout`` in seconds.

        Raises :class:`JobWaitTimeout` when it runs out (the job goes on in the fleet); its
        message says whether the job is still queued (no worker took it: which queue lacks one)
        or running (on which tier).
        """
        for _ in self.events(timeout):
            pass
        return self._final or self.result()

    def stream(self, timeout: float = 300.0) -> Iterator[dict[str, Any]]:
        """Chunks ``{delta, text, done, provider}`` as the model writes them (jobs submitted with
        ``stream=True``). A ``{"type": "reset"}`` event means the answer so far was discarded
        (quality gate or error) and another tier starts over."""
        for event in self.events(timeout):
            if event.get("type") in ("chunk", "reset"):
                yield event

    def events(self, timeout: float) -> Iterator[dict[str, Any]]:
        """Every event of the job until it finishes; registers before reading the state (one
        shared subscription per process: :mod:`router.waiter`). A handle that listened since
        before its job was sent reads no state first; the ``done`` event's result, when it
        carries one, is kept for :meth:`wait`."""
        if self._final is not None:
            return
        deadline = time.monotonic() + timeout
        hub = event_hub()
        inbox, self._inbox = self._inbox, None
        fresh = inbox is None
        if inbox is None:
            inbox = hub.register(self.job_id)
        try:
            if fresh and self._status() in TERMINAL_STATUSES:
                return
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    if self._status() in TERMINAL_STATUSES:
                        return
                    raise JobWaitTimeout(self._timeout_message(timeout))
                try:
                    event = inbox.get(timeout=min(left, 5.0))
                except queue.Empty:
                    # A reconnect can lose an event; a rare cheap check covers it.
                    if self._status() in TERMINAL_STATUSES:
                        return
                    continue
                yield event
                if event.get("type") == "done":
                    self._final = _carried_result(event)
                    return
        finally:
            hub.unregister(self.job_id, inbox)

    def _timeout_message(self, timeout: float) -> str:
        """Why the job is unfinished: the queue no worker takes it from, or the tier running it."""
        progress = store.job_progress(self.job_id)
        if progress is None:
            raise JobNotFound(self.job_id)
        status, tier = progress
        if status in (JobStatus.QUEUED, JobStatus.ROUTED):
            queue = tier_queue(tier) if status == JobStatus.ROUTED and tier else ROUTER_QUEUE
            message = (
                f"job {self.job_id} still queued: no worker has taken it in {timeout:g}s "
                f"(is a worker for queue {queue!r} running?)"
            )
            if not self.sent:
                message += f"; {BROKER_DOWN_NOTE}"
            return message
        return f"job {self.job_id} still running on {tier or '-'} after {timeout:g}s"


def _carried_result(event: dict[str, Any]) -> JobResult | None:
    """The :class:`JobResult` a ``done`` event carries (None: not carried, or unreadable)."""
    carried = event.get("result")
    if not isinstance(carried, dict):
        return None
    try:
        return JobResult.model_validate(carried)
    except ValidationError:
        log.warning("job events: unreadable result in a done event; reading the row")
        return None


def submit_job(
    prompt: str,
    action_type: str = "unknown",
    context: dict[str, Any] | None = None,
    *,
    idempotency_key: str | None = None,
    priority: int = 5,
    deadline: datetime | None = None,
    metadata: dict[str, Any] | None = None,
    stream: bool = False,
    allow_degraded: bool = False,
    cache: bool = True,
) -> JobHandle:
    """Store a job and send it to the router; return its handle at once.

    Raises :class:`JobValidationError` naming the bad field (nothing is stored then), also for a
    ``deadline`` already past. The ``idempotency_key`` is bound to the request's fingerprint
    (:meth:`JobRequest.fingerprint`): the same key with the same request returns the same job,
    which is sent only once; the same key with a different request raises
    :class:`IdempotencyConflict` naming the key and the existing job (nothing is stored). A
    retry of an accepted request whose deadline has passed since gets its job back (it will
    have ended ``expired`` or finished). When the broker is unreachable the job is stored all
    the same, and the handle says so (``handle.sent`` False, ``handle.note``).

    ``cache=False``: the answer is neither taken from the cache nor stored in it. A job of a
    daemon (``metadata.daemon``) whose budget is already spent is stored and failed at once with
    ``budget exhausted`` when nothing free could serve it: no tier of its plan has a free model
    and the cache does not apply to it (see :func:`budget_refusal`); otherwise it runs, on the
    free tiers (or from the cache) alone.
    """
    settings = get_settings()
    request = _valid_request(
        settings.llm,
        prompt=prompt,
        action_type=action_type,
        context=context or {},
        idempotency_key=idempotency_key,
        priority=priority,
        deadline=deadline,
        metadata=metadata or {},
        stream=stream,
        allow_degraded=allow_degraded,
        cache=cache,
    )
    if request.deadline is not None and request.deadline <= utcnow():
        # A new job could only expire; a retry of an accepted one gets that job (or the conflict).
        existing = store.job_for_key(request)
        if existing is None:
            raise JobValidationError("deadline: deadline is in the past")
        return JobHandle(existing, created=False)
    job_id, created = store.create_job(request, settings.job_deadline_s)
    refusal = budget_refusal(request, settings.llm) if created else None
    if refusal is not None:
        # Stored, so the daemon can read why; ended before any message is sent.
        store.finalize_job(job_id, JobStatus.FAILED, error=refusal)
        return JobHandle(job_id, created)
    handle = JobHandle(job_id, created)
    if created:
        _send(handle, request)
    return handle


def _valid_request(config: LLMConfig, **fields: Any) -> JobRequest:
    """The :class:`JobRequest` of ``fields``, within the config's input limits; else
    :class:`JobValidationError` naming the bad field."""
    try:
        request = JobRequest(**fields)
    except ValidationError as exc:
        raise JobValidationError(describe_validation_error(exc, empty="job")) from None
    problems = request.size_problems(config.inputs)
    if problems:
        raise JobValidationError("; ".join(problems))
    return request


def _send(handle: JobHandle, request: JobRequest) -> None:
    """Send a new job to the router, its waiter listening first. A broker that cannot be reached
    leaves the job queued in PostgreSQL (the sweeper sends it once the broker is back) and the
    handle says so (``sent`` False, ``note``)."""
    handle._listen()
    try:
        facts = route_facts(
            request.action_type,
            request.prompt,
            request.context,
            request.priority,
            job_daemon(request.metadata),
        )
        enqueue_route(handle.job_id, request.priority, request.action_type, facts)
    except Exception:
        log.warning(
            "broker unavailable; job %s stays queued for the sweeper", handle.job_id, exc_info=True
        )
        handle.sent, handle.note = False, BROKER_DOWN_NOTE


def budget_refusal(request: JobRequest, config: LLMConfig) -> str | None:
    """Why a new job of an over-budget daemon ends at submit, or None when it may run.

    The fleet's own rule (:class:`workers.pipeline.budget.BudgetGate`) skips a paid tier once
    the daemon's reservation is refused; here a daemon that has already reached a ceiling
    (stored with ``tierflow budget set``, else the config's) is refused up front, but only when
    the fleet could not serve the job for free either: no tier of its plan has a free model
    (price 0) and caching does not apply (a cached answer costs nothing).
    """
    daemon = request.metadata.get("daemon")
    if not isinstance(daemon, str) or not daemon:
        return None
    budget = budget_for(daemon, config)
    if budget is None:
        return None
    values = get_redis().mget(get_keys().budget_periods(daemon))
    day, month = (float(v or 0) for v in values)  # type: ignore[union-attr]
    if not budget.reached(day, month):
        return None
    if config.routing.enable_caching and request.cache:
        rule = config.caching.for_action(request.action_type)
        if rule.enabled:
            return None
    plan = plan_job(request.action_type, request.prompt, request.context, config, get_mode())
    if plan.error:
        return None  # the router fails it with its own reason
    free = any(
        model.price(1_000_000, 1_000_000) <= 0
        for tier in plan.chain
        for model in config.tier_models(tier)
    )
    if free:
        return None
    return (
        f"{BUDGET_EXHAUSTED}: daemon {daemon} spent ${day:.6f} today and ${month:.6f} this "
        f"month (daily {budget.daily_usd}, monthly {budget.monthly_usd} USD), and no free tier "
        "can serve the job"
    )


def get_job(job_id: str) -> JobHandle:
    """A handle to an existing job (raises JobNotFound)."""
    handle = JobHandle(job_id, created=False)
    handle.result()
    return handle
