"""The fleet's Celery tasks: ``route_job`` (queue ``router``), ``run_attempt``, ``run_pack`` and
``resume_attempt`` (queues ``tier.*``), ``sweep_stuck_jobs`` and the provider batches' two ticks
(queue ``maintenance``).

Messages carry ids and counters; the job itself lives in PostgreSQL (a new job's message to the
router also carries its routing facts, see :func:`route_job`). Arguments are validated first: a
malformed message is stored as a dead letter with its reason and acknowledged, never retried.
Infrastructure errors (PostgreSQL, Redis or the broker unreachable) are retried with
backoff: Celery publishes the retry (same task id) before it acknowledges the original, and the
retry waits unacknowledged (``acks_late``), so a worker crash loses nothing. A retried attempt
takes its own claim back at once, on whichever worker it lands; the same run handed out again by
the broker waits for its live lease instead (see :func:`tierflow.store.claim_attempt`).
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, NamedTuple

import kombu.exceptions
import redis
import sqlalchemy.exc
from celery import Task
from celery.exceptions import Retry

import workers.automode  # noqa: F401 - registers check_auto_mode (automatic mode) on the app
from router import interactive
from router.dispatch import FACTS_MAX_CHARS, enqueue_attempt
from router.fairshare import job_daemon
from router.gate.prerouting import cheap_odds
from router.mode import mode_of
from router.plan import plan_job
from schemas.jobs import utcnow
from tierflow import store
from tierflow.core.celery_app import app
from tierflow.core.constants import (
    BATCH_PRIORITY,
    MAX_PACK_SIZE,
    PROVIDER_BATCH_INTERVAL_S,
    STALE_AFTER_S,
    SWEEP_INTERVAL_S,
    TASK_AUDIT,
    TASK_POLL_PROVIDER_BATCHES,
    TASK_RESUME_ATTEMPT,
    TASK_ROUTE_JOB,
    TASK_RUN_ATTEMPT,
    TASK_RUN_PACK,
    TASK_SUBMIT_PROVIDER_BATCHES,
    TASK_SWEEP,
    JobStatus,
    Tier,
    tier_of_queue,
)
from tierflow.core.errors import JobValidationError
from tierflow.core.redis_client import get_keys, get_redis
from tierflow.core.settings import get_settings
from workers import admission, audit, outcome
from workers.packs import run_pack_steps
from workers.pipeline import resume_attempt_steps, run_attempt_steps
from workers.pipeline.summary import summarize
from workers.provider_batch.poll import poll_open
from workers.provider_batch.submit import submit_ready
from workers.sweeper import sweep

log = logging.getLogger(__name__)

# PostgreSQL, Redis or the broker unreachable: worth retrying the whole task with backoff.
INFRA_ERRORS = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.DisconnectionError,
    sqlalchemy.exc.TimeoutError,  # no pooled connection came free in time
    redis.ConnectionError,
    redis.TimeoutError,
    kombu.exceptions.OperationalError,
)
SWEEP_LOCK_S = max(1, int(SWEEP_INTERVAL_S) - 2)  # ends before the next beat tick
PROVIDER_BATCH_LOCK_S = max(1, int(PROVIDER_BATCH_INTERVAL_S) - 2)
MAX_WAITS = 10_000  # far above what a job's deadline allows at the longest countdown
MAX_BUG_RETRIES = 2  # redeliveries of a task that raised something unexpected, before its job fails
_RETRY = {
    "autoretry_for": INFRA_ERRORS,
    "retry_backoff": 1,
    "retry_backoff_max": 30,
    "retry_jitter": True,
    "max_retries": 60,
}


def check_job_id(value: Any) -> str:
    if not isinstance(value, str):
        raise JobValidationError(f"job_id must be a string, got {type(value).__name__}")
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise JobValidationError(f"job_id {value[:80]!r} is not a UUID") from None


def check_counter(name: str, value: Any, limit: int = 1000) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
        raise JobValidationError(f"{name} must be an integer in 0..{limit}, got {value!r}"[:200])
    return value


@contextmanager
def job_fails_on_bug(task: Task, job_id: str, *, fail_job: bool = True) -> Iterator[None]:
    """Let infrastructure errors retry (``autoretry_for``); any other exception is a bug: the task
    is retried a few times (a bug can be a race), then the job fails with the reason, is counted
    as a dead letter and its waiter is woken. No job is left hanging on a bug."""
    try:
        yield
    except (*INFRA_ERRORS, Retry):
        raise
    except Exception as exc:
        if task.request.retries < MAX_BUG_RETRIES:
            log.warning("task %s for job %s raised; retrying", task.name, job_id, exc_info=True)
            raise task.retry(exc=exc, countdown=1 + task.request.retries) from None
        log.exception("task %s for job %s raised", task.name, job_id)
        reason = outcome.internal_error_reason(exc)
        _dead_letter(task, reason, job_id)  # first: the waiter woken next may look for it
        if fail_job:  # an audit's bug must not touch the job it audits
            outcome.fail_on_internal_error(job_id, reason)


def _dead_letter(task: Task, reason: str, job_id: str | None = None) -> None:
    info = task.request.delivery_info or {}
    store.record_dead_letter(
        reason,
        queue=info.get("routing_key"),
        task=task.name,
        job_id=job_id,
        body=repr(task.request.args)[:500],
    )
    log.warning("refused %s message: %s", task.name, reason)


@app.task(name=TASK_ROUTE_JOB, bind=True, **_RETRY)
def route_job(self: Task, job_id: Any, facts: Any = None) -> str | None:
    """Classify a stored job, record its plan and send it to the first tier of its chain.

    ``facts`` (``router.dispatch.route_facts``, sent by ``submit_job`` for a small job) let the
    plan be made and stored without reading the job: one statement, which stores it only if
    the job is still queued and the fleet's mode is the one this process saw last. Anything
    else (no facts, malformed facts, another mode, a redelivery, a job cancelled meanwhile)
    takes the path that reads the job and the mode first.
    """
    try:
        job_id = check_job_id(job_id)
    except JobValidationError as exc:
        _dead_letter(self, str(exc))
        return None
    known = check_route_facts(facts)
    with job_fails_on_bug(self, job_id):
        if known is not None:
            routed = _route_from_facts(job_id, known)
            if routed is not None:
                return routed
        return _route(job_id)
    return "failed"


class RouteFacts(NamedTuple):
    action: str
    prompt: str
    context: dict[str, Any]
    priority: int
    daemon: str | None = None


def check_route_facts(value: Any) -> RouteFacts | None:
    """The message's routing facts, or None when absent or not as ``route_facts`` makes them
    (then the job is read: a malformed copy never decides a plan)."""
    if not isinstance(value, dict):
        return None
    action, prompt = value.get("action"), value.get("prompt")
    context, priority = value.get("context"), value.get("priority")
    if not (isinstance(action, str) and isinstance(prompt, str) and isinstance(context, dict)):
        return None
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 9:
        return None
    if len(prompt) > FACTS_MAX_CHARS:
        return None
    return RouteFacts(action, prompt, context, priority, job_daemon(value))


class _SeenMode:
    """The fleet's mode as this process's last read of it found it (the newest switch's,
    None: never switched); :data:`UNKNOWN` until the first read. Only a guess: the plan made
    for it is stored only if it is still the mode (``store.save_plan_for_mode``)."""

    UNKNOWN = object()

    def __init__(self) -> None:
        self.last: object = self.UNKNOWN


_seen_mode = _SeenMode()


def _route_from_facts(job_id: str, facts: RouteFacts) -> str | None:
    """The route without a read: the plan made from the message's facts for the mode this
    process saw last, stored in one statement; None when it was not stored (the caller then
    takes :func:`_route`)."""
    last = _seen_mode.last
    if last is _SeenMode.UNKNOWN or not (last is None or isinstance(last, str)):
        return None
    config = get_settings().llm
    rule = config.routing.actions.get(facts.action)
    odds = cheap_odds(facts.action, rule, facts.prompt)
    plan = plan_job(facts.action, facts.prompt, facts.context, config, mode_of(last), odds)
    if plan.error:
        return None  # the reading path fails the job, with its row in hand
    if facts.priority > BATCH_PRIORITY:
        interactive.mark()  # batches make room while daemons' jobs come in
    if not store.save_plan_for_mode(job_id, plan.complexity.value, plan.to_json(), last):
        return None
    enqueue_attempt(
        job_id,
        plan.chain[0],
        0,
        0,
        priority=facts.priority,
        action=facts.action,
        daemon=facts.daemon,
    )
    return plan.tier.value


def _route(job_id: str) -> str | None:
    config = get_settings().llm
    # one statement to read the job and the mode, one to save the plan
    with store.routing(job_id) as (job, mode, save):
        if job is None:
            store.record_dead_letter(f"unknown job {job_id}", task=TASK_ROUTE_JOB)
            return None
        _seen_mode.last = mode  # read with the job: the fleet's mode now
        if job.status == JobStatus.ROUTED.value and job.plan:
            resend = not store.attempts_of(job_id)
        elif job.status != JobStatus.QUEUED.value:
            return job.status
        else:
            resend = False
            if job.priority > BATCH_PRIORITY:
                interactive.mark()  # batches make room while daemons' jobs come in
            rule = config.routing.actions.get(job.action_type)
            odds = cheap_odds(job.action_type, rule, job.prompt)
            plan = plan_job(
                job.action_type, job.prompt, job.context or {}, config, mode_of(mode), odds
            )
            saved = save(plan.complexity.value, plan.to_json())
    if resend:
        # A redelivery after the plan was stored: the first attempt may not have been sent
        # (the worker died in between). Sending it again is harmless: attempts are claimed.
        assert job.plan is not None
        first = Tier(job.plan["chain"][0])
        enqueue_attempt(
            job_id,
            first,
            0,
            0,
            priority=job.priority,
            action=job.action_type,
            daemon=job_daemon(job.job_metadata),
        )
        return "resent"
    if job.status == JobStatus.ROUTED.value:
        return job.status
    if plan.error:
        outcome.finish_failure(job, config, plan.error)  # after the commit: it locks the row
        return "failed"
    if saved:
        enqueue_attempt(
            job_id,
            plan.chain[0],
            0,
            0,
            priority=job.priority,
            action=job.action_type,
            daemon=job_daemon(job.job_metadata),
        )
    return plan.tier.value


@app.task(name=TASK_RUN_ATTEMPT, bind=True, **_RETRY)
def run_attempt(
    self: Task,
    job_id: Any,
    step: Any = 0,
    attempt_no: Any = 0,
    retries_in_step: Any = 0,
    waits: Any = 0,
    fair: Any = None,
) -> str | None:
    """Run one attempt of a job on this queue's tier, then enqueue whatever comes next.

    ``waits`` counts how often this attempt already waited for capacity (a concurrency cap, a
    rate limit), so the next wait backs off; messages without it (sent before it existed) start
    at 0. ``fair`` (a message sent with a countdown to a contended tier) asks for admission
    first (:mod:`workers.admission`): not admitted, the attempt waits in its daemon's line and
    this delivery ends ("queued"). A contended tier's run frees its slot at its end, unless it
    ends by a retry of this same message.
    """
    try:
        job_id = check_job_id(job_id)
        step = check_counter("step", step, 10)
        attempt_no = check_counter("attempt_no", attempt_no)
        retries_in_step = check_counter("retries_in_step", retries_in_step, 100)
        waits = check_counter("waits", waits, MAX_WAITS)
    except JobValidationError as exc:
        _dead_letter(self, str(exc))
        return None
    delivery = admission.contended_delivery(
        (self.request.delivery_info or {}).get("routing_key"),
        job_id,
        attempt_no,
        retries_in_step,
        waits,
    )
    arrival = admission.check_fair(fair) if delivery is not None else None
    if (
        delivery is not None
        and arrival is not None
        and not admission.admit_on_arrival(
            delivery, arrival, job_id, step, attempt_no, retries_in_step, waits
        )
    ):
        return "queued"  # it waits in its daemon's line; a freed slot sends it
    try:
        done = _run_attempt(self, job_id, step, attempt_no, retries_in_step, waits)
    except (*INFRA_ERRORS, Retry):
        raise  # retried as this same message: it keeps its slot
    except BaseException:
        if delivery is not None:
            admission.release_after(delivery)
        raise
    if delivery is not None:
        admission.release_after(delivery)
    return done


def _run_attempt(
    self: Task, job_id: str, step: int, attempt_no: int, retries_in_step: int, waits: int
) -> str | None:
    worker = delivery_name(self)
    with job_fails_on_bug(self, job_id):
        config = get_settings().llm
        retry = int(self.request.retries or 0)
        ctx = run_attempt_steps(
            job_id,
            step,
            attempt_no,
            retries_in_step,
            worker,
            config,
            waits=waits,
            delivery_retry=retry,
        )
        if ctx.superseded:
            return "superseded"
        return summarize(ctx)  # Flower shows it: the move, the outcome, tier and model
    return "failed"


@app.task(name=TASK_SWEEP, bind=True, **_RETRY)
def sweep_stuck_jobs(
    self: Task, stale_after_s: float = STALE_AFTER_S, scheduled: bool = False
) -> dict[str, int]:
    """Find jobs that stopped moving and move them: nothing accepted is ever lost silently.

    - past its deadline and not finished → failed, with every attempt's story;
    - queued (never routed) for longer than ``stale_after_s`` → sent to the router again;
    - routed/running with no attempt in flight for longer than ``stale_after_s`` → its next
      attempt is sent again (the claim makes a duplicate harmless).

    ``scheduled`` sweeps (sent by beat, which every router worker runs) take a Redis lock that
    lasts most of the interval, so exactly one runs per interval fleet-wide; a sweep sent by hand
    always runs.
    """
    if scheduled and not get_redis().set(
        get_keys().sweep_lock, self.request.hostname or "local", nx=True, ex=SWEEP_LOCK_S
    ):
        return {"skipped": 1}
    counts = sweep(utcnow(), timedelta(seconds=stale_after_s))
    counts["admitted"] = admission.pump_all()  # slots of dead holders expire here too
    return counts


@app.task(name=TASK_AUDIT, bind=True, **_RETRY)
def audit_answer(self: Task, job_id: Any, attempt_no: Any = 0) -> str | None:
    """Re-run a passed answer on this queue's tier and store the agreement as a label."""
    try:
        job_id = check_job_id(job_id)
        attempt_no = check_counter("attempt_no", attempt_no)
        tier = tier_of_queue((self.request.delivery_info or {}).get("routing_key"))
    except (JobValidationError, ValueError) as exc:
        _dead_letter(self, str(exc))
        return None
    with job_fails_on_bug(self, job_id, fail_job=False):
        return audit.audit_answer(job_id, attempt_no, tier, get_settings().llm)
    return "failed"


def delivery_name(task: Task) -> str:
    """This run's ``host/pid.run:task_id``: its claim and its writes are fenced by it.

    The task id ties a retry to its claim; the run id tells two runs of one task id apart (the
    broker can hand the same message out twice), so the fence knows exactly which run holds
    the attempt; ``host/pid.`` names the process, so a supervisor that saw it die releases its
    leases at once (:func:`workers.sweeper.release_dead_worker`)."""
    host = task.request.hostname or "local"
    return f"{host}/{os.getpid()}.{uuid.uuid4().hex[:8]}:{task.request.id}"


@app.task(name=TASK_RESUME_ATTEMPT, bind=True, **_RETRY)
def resume_attempt(self: Task, job_id: Any, attempt_no: Any = 0) -> str | None:
    """Resume an attempt that waited for a provider batch, from the Gate onward, with the
    provider's answer or error (see :func:`workers.pipeline.resume_attempt_steps`). Sent by the
    poll tick once the result is stored; a redelivery replays, never charging twice."""
    try:
        job_id = check_job_id(job_id)
        attempt_no = check_counter("attempt_no", attempt_no)
    except JobValidationError as exc:
        _dead_letter(self, str(exc))
        return None
    with job_fails_on_bug(self, job_id):
        ctx = resume_attempt_steps(
            job_id,
            attempt_no,
            delivery_name(self),
            get_settings().llm,
            delivery_retry=int(self.request.retries or 0),
        )
        if ctx.superseded:
            return "superseded"
        return summarize(ctx)
    return "failed"


def _tick_lock(task: Task, tick: str) -> bool:
    """The Redis lock that keeps a scheduled tick to one run per interval fleet-wide."""
    return bool(
        get_redis().set(
            get_keys().provider_batch_lock(tick),
            task.request.hostname or "local",
            nx=True,
            ex=PROVIDER_BATCH_LOCK_S,
        )
    )


@app.task(name=TASK_SUBMIT_PROVIDER_BATCHES, bind=True, **_RETRY)
def submit_provider_batches(self: Task, scheduled: bool = False) -> dict[str, int]:
    """Group the deferred API-tier requests into provider batches and submit them (see
    :mod:`workers.provider_batch.submit`). A scheduled tick runs once per interval fleet-wide;
    one sent by hand always runs."""
    if scheduled and not _tick_lock(self, "submit"):
        return {"skipped": 1}
    return submit_ready(get_settings().llm)


@app.task(name=TASK_POLL_PROVIDER_BATCHES, bind=True, **_RETRY)
def poll_provider_batches(self: Task, scheduled: bool = False) -> dict[str, int]:
    """Poll the open provider batches, store the results of those that ended and send their
    attempts' resumes (see :mod:`workers.provider_batch.poll`)."""
    if scheduled and not _tick_lock(self, "poll"):
        return {"skipped": 1}
    return poll_open(get_settings().llm)


def check_pack(value: Any) -> list[str]:
    """A pack's job ids: a list of 1 to :data:`MAX_PACK_SIZE` distinct UUIDs."""
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_PACK_SIZE:
        raise JobValidationError(f"job_ids must be a list of 1 to {MAX_PACK_SIZE} job ids")
    ids = [check_job_id(v) for v in value]
    if len(set(ids)) != len(ids):
        raise JobValidationError("job_ids must not repeat a job")
    return ids


@contextmanager
def pack_fails_on_bug(task: Task, job_ids: list[str]) -> Iterator[None]:
    """:func:`job_fails_on_bug` for a pack: retried a few times (each retry takes its own claims
    back), then every member not finished yet fails with the reason (a finished one is left as
    it is: a job only moves forward)."""
    try:
        yield
    except (*INFRA_ERRORS, Retry):
        raise
    except Exception as exc:
        if task.request.retries < MAX_BUG_RETRIES:
            log.warning(
                "task %s for %d jobs raised; retrying", task.name, len(job_ids), exc_info=True
            )
            raise task.retry(exc=exc, countdown=1 + task.request.retries) from None
        log.exception("task %s for %d jobs raised", task.name, len(job_ids))
        reason = outcome.internal_error_reason(exc)
        for job_id in job_ids:
            _dead_letter(task, reason, job_id)
            outcome.fail_on_internal_error(job_id, reason)


@app.task(name=TASK_RUN_PACK, bind=True, **_RETRY)
def run_pack(self: Task, job_ids: Any, waits: Any = 0) -> str | None:
    """Run the first attempts of a pack of small ``label`` jobs with one model call on this
    queue's tier (see :mod:`workers.packs`), then enqueue what comes next for each."""
    try:
        ids = check_pack(job_ids)
        waits = check_counter("waits", waits, MAX_WAITS)
        tier = tier_of_queue((self.request.delivery_info or {}).get("routing_key"))
    except (JobValidationError, ValueError) as exc:
        _dead_letter(self, str(exc))
        return None
    worker = delivery_name(self)
    with pack_fails_on_bug(self, ids):
        done = run_pack_steps(
            ids,
            tier,
            worker,
            get_settings().llm,
            waits=waits,
            delivery_retry=int(self.request.retries or 0),
        )
        return done.summary()
    return "failed"
