"""Sending a job's next step to the broker, by task name: the one place that knows the messages.

Messages carry ids and counters (the job lives in PostgreSQL), and one copy: a new job's message
to the router carries its **routing facts** (:func:`route_facts`: action, prompt, context,
priority, the fields the plan is made of, which never change once stored) when they are small,
so the routing task can plan without reading the job back; the plan is stored only if the job
is still queued and the fleet's mode is the one it was made for, else the router reads the job
(see ``workers.tasks.route_job``). Priorities are tierflow's 0-9 with 9 the most urgent, sent
as Redis' 0-9 with 0 the most urgent.

Every send passes ``declare=[]``: a tier queue is a Redis list (one per priority step) that
needs no declaring, and Celery sends to it by name through the anonymous exchange, so the
declaration Celery would otherwise repeat at every send (``maybe_declare``: a copy of the
queue entity and a lookup in the connection's cache, about 50 µs) does nothing.

Each message is labelled for people, at no cost (no read; the caller passes the job's action
when it has it): Celery's ``shadow`` name, which the worker's log and Flower show as the task's
name (``run_attempt job=<id> tier=local_fast action=classify_memory``), and an ``argsrepr``, which
Flower shows as its arguments (``job=<id> tier=local_fast action=classify_memory step=0
attempt=0 retries=0``). The arguments are what Flower always shows: it takes a task's name from
whichever of the sender's ``task-sent`` event (the real task name) and the worker's
``task-received`` event (the shadow) it merges last, so the name can read
``tierflow.run_attempt``. The task run, and its real arguments, are unchanged.

**Sent together** (:func:`sent_together`): inside the block every message of this thread is
written to the broker in pipelined round trips (kombu's ``Producer.batch``, up to
:data:`PUBLISH_BATCH_MAX` commands per round trip, the rest when the block ends) instead of one
round trip each; a batch's submitter sends a chunk's lines so
(:func:`enqueue_first_attempts`, with one fair-share round trip per tier for the chunk's
admissions: :meth:`router.fairshare.FairShare.offer_many`). An exception inside discards the
messages not yet written (their jobs are stored: a resume or the sweeper sends them).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from router.fairshare import FairShare, contended, slot_member
from tierflow.core.celery_app import app
from tierflow.core.constants import (
    ROUTER_QUEUE,
    TASK_AUDIT,
    TASK_ROUTE_JOB,
    TASK_RUN_ATTEMPT,
    TASK_RUN_PACK,
    Tier,
    tier_queue,
)
from tierflow.core.redis_client import get_keys, get_redis
from tierflow.core.settings import get_settings

# A fair-share slot outlives the longest run a task may have (its hard time limit) by this much:
# only a dead holder's slot expires.
SLOT_MARGIN_S = 60.0
# Redis commands written in one round trip by sent_together (one LPUSH a message).
PUBLISH_BATCH_MAX = 1000

# The producer of the enclosing sent_together block (None: each message is its own round trip).
_together: ContextVar[Any | None] = ContextVar("tierflow_sent_together", default=None)


@contextmanager
def sent_together(max_size: int = PUBLISH_BATCH_MAX) -> Iterator[None]:
    """Write every message sent inside the block (by this thread) to the broker in pipelined
    round trips of up to ``max_size`` commands, the last when the block ends; see the module.
    A block inside another joins it. An exception inside discards what was not yet written."""
    if _together.get() is not None:
        yield
        return
    with app.producer_or_acquire() as producer, producer.batch(max_size):
        token = _together.set(producer)
        try:
            yield
        finally:
            _together.reset(token)


def describe(job_id: str, tier: Tier | None = None, action: str | None = None) -> str:
    """``job=<id> tier=<tier> action=<action>`` (the parts that are known)."""
    parts = [f"job={job_id}"]
    if tier is not None:
        parts.append(f"tier={Tier(tier).value}")
    if action:
        parts.append(f"action={action}")
    return " ".join(parts)


# A job whose prompt and context take more than this many characters (as JSON) is sent without
# its facts: the router reads it, and the broker never holds a large prompt twice.
FACTS_MAX_CHARS = 4096


def route_facts(
    action: str,
    prompt: str,
    context: dict[str, Any] | None,
    priority: int,
    daemon: str | None = None,
) -> dict[str, Any] | None:
    """The routing facts of a job just stored with these fields, for its message to the
    router; None when they are over :data:`FACTS_MAX_CHARS` (or its context is not JSON).
    ``daemon`` (:func:`router.fairshare.job_daemon` of its metadata) is whose share its first
    attempt takes."""
    if len(prompt) > FACTS_MAX_CHARS:
        return None
    try:
        size = len(prompt) + (len(json.dumps(context)) if context else 0)
    except (TypeError, ValueError):
        return None
    if size > FACTS_MAX_CHARS:
        return None
    facts = {"action": action, "prompt": prompt, "context": context or {}, "priority": priority}
    if daemon:
        facts["daemon"] = daemon
    return facts


def enqueue_route(
    job_id: str,
    priority: int = 5,
    action: str | None = None,
    facts: dict[str, Any] | None = None,
) -> None:
    """Send a stored job to the routing task; ``action`` (the job's) only labels the message;
    ``facts`` (:func:`route_facts` of the job as stored) let the router plan without a read."""
    label = describe(job_id, action=action)
    app.send_task(
        TASK_ROUTE_JOB,
        producer=_together.get(),
        declare=[],
        args=[job_id],
        kwargs={"facts": facts} if facts is not None else None,
        queue=ROUTER_QUEUE,
        priority=9 - priority,
        shadow=f"route_job {label}",
        argsrepr=label,
        kwargsrepr="",
    )


def fair_share() -> FairShare:
    """This fleet's admission to contended tiers (see :mod:`router.fairshare`)."""
    settings = get_settings()
    return FairShare(
        get_redis(), get_keys(), settings.llm, settings.task_time_limit + SLOT_MARGIN_S
    )


def enqueue_attempt(
    job_id: str,
    tier: Tier,
    step: int,
    attempt_no: int,
    retries_in_step: int = 0,
    countdown: float = 0.0,
    priority: int = 5,
    waits: int = 0,
    action: str | None = None,
    daemon: str | None = None,
) -> None:
    """Send one attempt of a job to its tier's queue, after ``countdown`` seconds; ``action``
    (the job's, when the caller has it) only labels the message; ``daemon`` (the job's
    ``metadata.daemon``) is whose share of the tier it takes.

    On a contended tier (:func:`router.fairshare.contended`) the attempt is admitted first: sent
    now if a slot is free and it is its daemon's turn, else it waits in its daemon's line in
    Redis and is sent when a slot frees (by the run that frees it). An attempt with a countdown
    is sent at once with its admission still to do (``fair``, done by the worker when it comes
    due), so a wait holds no slot.

    ``waits`` (how often this attempt already waited for capacity) is sent as a fifth argument
    only when it is not 0, so a worker that predates it still reads every first try.
    """
    tier = Tier(tier)
    payload = attempt_payload(
        job_id, tier, step, attempt_no, retries_in_step, priority, waits, action, daemon
    )
    if not contended(get_settings().llm, tier):
        send_admitted(payload, countdown)
    elif countdown:
        send_admitted(payload, countdown, admit=True)
    else:
        send_all(fair_share().offer(tier, daemon, payload["m"], payload, priority))


@dataclass(frozen=True)
class FirstAttempt:
    """A stored, routed job's first attempt to send: its tier, priority (tierflow's 0-9), the
    action that labels its message and the daemon whose share it takes."""

    job_id: str
    tier: Tier
    priority: int
    action: str | None = None
    daemon: str | None = None


def enqueue_first_attempts(attempts: Sequence[FirstAttempt]) -> None:
    """:func:`enqueue_attempt` (step 0, attempt 0, no countdown) for each of ``attempts``, in
    one go: the admissions to each contended tier in one pipelined fair-share round trip
    (:meth:`~router.fairshare.FairShare.offer_many`, the same script and order as one offer
    each), and every message :func:`sent_together`. Same messages, same priorities, same
    lines as sending them one by one."""
    config = get_settings().llm
    offers: dict[Tier, list[dict[str, Any]]] = {}
    with sent_together():
        for first in attempts:
            tier = Tier(first.tier)
            payload = attempt_payload(
                first.job_id, tier, 0, 0, 0, first.priority, 0, first.action, first.daemon
            )
            if contended(config, tier):
                offers.setdefault(tier, []).append(payload)
            else:
                send_admitted(payload)
        if offers:
            share = fair_share()
            for tier, payloads in offers.items():
                send_all(share.offer_many(tier, payloads))


def attempt_payload(
    job_id: str,
    tier: Tier,
    step: int,
    attempt_no: int,
    retries_in_step: int,
    priority: int,
    waits: int,
    action: str | None,
    daemon: str | None,
) -> dict[str, Any]:
    """One attempt message as a daemon's line in Redis holds it (short keys; ``m`` its slot)."""
    return {
        "m": slot_member(job_id, attempt_no, retries_in_step, waits),
        "j": job_id,
        "t": Tier(tier).value,
        "s": step,
        "a": attempt_no,
        "r": retries_in_step,
        "w": waits,
        "p": priority,
        "x": action,
        "d": daemon,
    }


def send_all(payloads: list[dict[str, Any]]) -> None:
    """Send every admitted payload (:meth:`FairShare.offer` / ``release``) to its tier."""
    for payload in payloads:
        send_admitted(payload)


def send_admitted(payload: dict[str, Any], countdown: float = 0.0, admit: bool = False) -> None:
    """Send one attempt message built by :func:`enqueue_attempt`; ``admit``: its admission is
    still to do when it comes due (its ``fair`` keyword carries the daemon, priority, action)."""
    job_id, tier, action = payload["j"], Tier(payload["t"]), payload["x"]
    step, attempt_no, retries = payload["s"], payload["a"], payload["r"]
    label = describe(job_id, tier, action)
    args: list[str | int] = [job_id, step, attempt_no, retries]
    if payload["w"]:
        args.append(payload["w"])
    kwargs = {"fair": {"d": payload["d"], "p": payload["p"], "x": action}} if admit else None
    app.send_task(
        TASK_RUN_ATTEMPT,
        producer=_together.get(),
        declare=[],
        args=args,
        kwargs=kwargs,
        queue=tier_queue(tier),
        countdown=countdown or None,
        priority=9 - payload["p"],
        shadow=f"run_attempt {label}",
        argsrepr=f"{label} step={step} attempt={attempt_no} retries={retries}",
        kwargsrepr="",
    )


def enqueue_audit(job_id: str, attempt_no: int, tier: Tier) -> None:
    """Send a passed answer to be re-run on ``tier`` (an audit), at the lowest priority."""
    label = describe(job_id, tier)
    app.send_task(
        TASK_AUDIT,
        declare=[],
        args=[job_id, attempt_no],
        queue=tier_queue(tier),
        priority=9,
        shadow=f"audit_answer {label}",
        argsrepr=f"{label} attempt={attempt_no}",
    )


def enqueue_pack(
    job_ids: list[str],
    tier: Tier,
    priority: int = 5,
    countdown: float = 0.0,
    waits: int = 0,
    action: str | None = None,
) -> None:
    """Send the first attempts of ``job_ids`` (routed, small, one ``label`` action) as one pack
    to ``tier``'s queue, after ``countdown`` seconds (see :mod:`workers.packs`). ``waits`` (how
    often the pack already waited for capacity) is sent only when it is not 0; ``action`` only
    labels the message."""
    label = f"pack={len(job_ids)} tier={Tier(tier).value}" + (f" action={action}" if action else "")
    args: list[list[str] | int] = [list(job_ids)]
    if waits:
        args.append(waits)
    app.send_task(
        TASK_RUN_PACK,
        producer=_together.get(),
        declare=[],
        args=args,
        queue=tier_queue(tier),
        countdown=countdown or None,
        priority=9 - priority,
        shadow=f"run_pack {label}",
        argsrepr=f"{label} jobs={','.join(j[:8] for j in job_ids)}",
    )
