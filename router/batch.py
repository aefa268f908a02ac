"""Batch runs: thousands of jobs as one named run, resumable, with a cost ceiling and a cancel.

``submit_batch(specs, name=...)`` reads ``specs`` as a stream (any iterable of dicts with
``prompt`` and optionally ``action_type``, ``context``, ``metadata``), so the submitter's memory
stays flat however many there are. Each job's idempotency key is ``batch:<batch id>:<line>``:
submitting the same name again **resumes** (finished jobs are skipped, unsent ones are sent,
a changed line is refused as an idempotency conflict). Batch jobs run at
:data:`~tierflow.core.constants.BATCH_PRIORITY`, below a daemon's default, so interactive work
goes first on the same queues. ``max_cost_usd`` stops sending new lines once the batch has spent
that much (the rest stay unsent: rerun to resume). A bad line is refused with its number and
reason and the others go on.

**Chunks**: lines are read, checked, planned and stored a chunk at a time
(:data:`CHUNK_LINES`; one multi-row insert in one transaction,
:func:`tierflow.store.batch_jobs.create_batch_jobs`), then sent; the fleet's mode is read once
per chunk, the submitter holds one chunk in memory, and a resume learns each stored line's
status from its chunk's own transaction.

``provider_batch=True`` (``tierflow batch run --deadline 24h``; or ``provider_batches.default``
in the config when not given) lets the batch's API-tier calls go through the providers' Batch
APIs (OpenAI Batch, Anthropic Message Batches) at their batch price, answered within a day
(see :mod:`workers.provider_batch`); it needs a deadline of at least
``provider_batches.min_deadline_hours``. Cancelling the batch cancels its jobs that wait for a
provider batch too.

**Packing** (``pack=N``, the seed's "batch 10 classification tasks → single prompt"):
consecutive lines of one action whose answer kind is ``label``, whose prompt and context are
small (:data:`~tierflow.core.constants.PACK_MAX_PROMPT_CHARS`) and whose plan starts on a local
tier are routed here (the router's own :func:`~router.plan.plan_job`, stored as ``route_job``
stores it) and sent in packs of up to N as one ``run_pack`` message to that tier's queue
(:mod:`workers.packs`): one model call answers the pack, and each job is still gated, priced,
stored and escalated on its own. Every line keeps its own job and idempotency key, so resuming
works as without packing (a finished line is skipped; a queued one is packed again). Any other
line is planned here too (see below). A packed job is routed only when its pack is sent, so a
submitter that dies with a pack unsent leaves its jobs queued, and the rerun (or the sweeper)
sends them.

**Interactive work first**: besides the lower priority, a batch line skips the router: the
submitter plans it with the router's own :func:`~router.plan.plan_job` (under the fleet's mode
of the moment), stores it routed with its plan in the job's insert and sends it straight to its
first tier's queue. The router's queue then holds interactive jobs only, so a daemon's job is
never routed behind the batch's messages a router worker has already reserved (its prefetch);
on the tier queues the priority puts it ahead of every waiting batch message.

**A window that yields** (``in_flight=N``, ``tierflow batch run --in-flight N``, else
``TIERFLOW_BATCH_IN_FLIGHT``, 64; 0: none): the submitter keeps at most N of the jobs it sent
unfinished, and waits for one to end before it sends the next line; while daemons' jobs are
being routed (:mod:`router.interactive`) it keeps to ``TIERFLOW_BATCH_YIELD_IN_FLIGHT`` (1).
Priorities order the queues, but on a small host the batch's running jobs take the CPU (of the
workers, PostgreSQL and Redis) that a daemon's job needs, whatever its priority; the window
caps that share while daemons work, and the batch runs at full speed when they are quiet
(``tests/bench/bench_batch.py --interactive`` measures both). The submitter runs until its last
line is sent; killed, it resumes as ever. A batch that may use provider batches has no window:
its deferred jobs wait hours for the provider without taking any CPU.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from router import interactive
from router.dispatch import (
    FirstAttempt,
    enqueue_attempt,
    enqueue_first_attempts,
    enqueue_pack,
    enqueue_route,
    sent_together,
)
from router.gate import kind_of
from router.mode import get_mode
from router.plan import TierPlan, plan_job
from schemas.jobs import JobRequest, utcnow
from tierflow import store
from tierflow.core.config import PROVIDER_BATCH_WINDOW_HOURS, LLMConfig
from tierflow.core.constants import (
    BATCH_PRIORITY,
    LOCAL_TIERS,
    MAX_PACK_SIZE,
    PACK_MAX_PROMPT_CHARS,
    TERMINAL_STATUSES,
    JobStatus,
    Mode,
    Tier,
)
from tierflow.core.errors import JobValidationError, TierflowError, describe_validation_error
from tierflow.core.settings import get_settings
from tierflow.core.tokens import estimate_tokens
from tierflow.store.batch_jobs import NewLine, StoredLine, create_batch_jobs
from tierflow.store.batches import batch_status

log = logging.getLogger(__name__)
COST_CHECK_EVERY = 100  # lines between two reads of the batch's spending
CHUNK_LINES = 500  # lines checked, planned and stored in one transaction
WINDOW_POLL_S = 0.02  # a full window's pause between two reads of its jobs' states
# A full window is refilled once this share of it is free (a quarter of 64: 16 lines a chunk),
# not line by line: a chunk of one line paid a transaction, a mode read and a poll per line.
WINDOW_REFILL_SHARE = 4
SPEC_FIELDS = ("prompt", "action_type", "context", "metadata")
ESTIMATED_ANSWER_TOKENS = 256  # a dry run's guess of each answer's length, capped by max_tokens


class BatchError(TierflowError):
    """A batch that cannot be read or found."""


@dataclass
class LineError:
    line: int
    reason: str


@dataclass
class Submitted:
    """What one submission did: lines read, jobs sent, jobs already there, lines refused."""

    batch_id: str
    name: str
    lines: int = 0
    sent: int = 0
    existing: int = 0
    window_waits: int = 0  # pauses taken because the in-flight window was full
    stopped_at_cost: float | None = None
    errors: list[LineError] = field(default_factory=list)


@dataclass(frozen=True)
class BadLine:
    """A line of a file that is not a job spec (not JSON, or not an object): reported with its
    number and reason by :func:`submit_batch`, stored nowhere."""

    reason: str


def read_jsonl(path: str | Path) -> Iterator[dict[str, Any] | BadLine]:
    """One job spec per non-empty line, read lazily, line by line; a line that is not a JSON
    object is a :class:`BadLine` naming the file's line. Raises BatchError when the file
    cannot be read."""
    file = Path(path)
    if not file.is_file():
        raise BatchError(f"cannot read {path}: no such file")
    with file.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                spec = json.loads(line)
            except ValueError:
                yield BadLine(f"{path}:{number}: not valid JSON")
                continue
            if not isinstance(spec, dict):
                yield BadLine(f"{path}:{number}: each line must be a JSON object")
                continue
            yield spec


def _request(spec: dict[str, Any] | BadLine, key: str, deadline: datetime) -> JobRequest:
    if isinstance(spec, BadLine):
        raise JobValidationError(spec.reason)
    unknown = sorted(set(spec) - set(SPEC_FIELDS))
    if unknown:
        raise JobValidationError(f"unknown fields {unknown} (a line may have {SPEC_FIELDS})")
    try:
        return JobRequest(
            prompt=spec.get("prompt", ""),
            action_type=spec.get("action_type") or "unknown",
            context=spec.get("context") or {},
            metadata=spec.get("metadata") or {},
            idempotency_key=key,
            priority=BATCH_PRIORITY,
            deadline=deadline,
        )
    except ValidationError as exc:
        raise JobValidationError(describe_validation_error(exc, empty="line")) from None


def submit_batch(
    specs: Iterable[dict[str, Any] | BadLine],
    *,
    name: str,
    max_cost_usd: float | None = None,
    deadline_s: float = 24 * 3600,
    provider_batch: bool | None = None,
    pack: int | None = None,
    in_flight: int | None = None,
) -> Submitted:
    """Store and send a batch's jobs (or resume it); return what was done. See the module.

    Lines are read, checked, planned and stored :data:`CHUNK_LINES` at a time (one multi-row
    insert, one transaction per chunk; fewer with a window or a cost ceiling, see
    :meth:`BatchRun.next_chunk_size`), then sent; memory holds one chunk. A bad line (not
    JSON, a field refused, too large, its key bound to another request) is reported in
    ``errors`` with its number (1-based) and stored nowhere; the others go on.

    ``pack``: up to this many small ``label`` jobs per model call (1 to
    :data:`~tierflow.core.constants.MAX_PACK_SIZE`; None or 1: no packing). ``in_flight``: at
    most this many of the jobs sent unfinished at once (None: ``TIERFLOW_BATCH_IN_FLIGHT``; 0:
    no window). Raises :class:`BatchError` for a pack size or window out of range, or when
    ``provider_batch`` is asked for with too short a deadline.
    """
    run = BatchRun.open(name, max_cost_usd, deadline_s, provider_batch, pack, in_flight)
    for chunk in _chunks(specs, run.next_chunk_size):
        if run.over_budget():
            break
        run.submit_chunk(chunk)
    return run.finish()


def _chunks(
    specs: Iterable[dict[str, Any] | BadLine], size: Callable[[], int]
) -> Iterator[list[tuple[int, dict[str, Any] | BadLine]]]:
    """``(line, spec)`` pairs (line 0-based), read lazily, ``size()`` at a time (asked before
    each chunk's first line is read)."""
    lines = enumerate(specs)
    while True:
        chunk = list(itertools.islice(lines, size()))
        if not chunk:
            return
        yield chunk


@dataclass
class BatchRun:
    """One submission of a batch: what it was asked, what it did so far (``done``)."""

    batch_id: str
    deadline: datetime
    max_cost_usd: float | None
    done: Submitted
    packer: Packer | None
    window: Window | None

    @classmethod
    def open(
        cls,
        name: str,
        max_cost_usd: float | None,
        deadline_s: float,
        provider_batch: bool | None,
        pack: int | None,
        in_flight: int | None,
    ) -> BatchRun:
        """Check the options, open (or find) the batch by name; see :func:`submit_batch`."""
        if pack is not None and not 1 <= pack <= MAX_PACK_SIZE:
            raise BatchError(f"pack must be 1 to {MAX_PACK_SIZE}, got {pack}")
        if in_flight is None:
            in_flight = get_settings().batch_in_flight
        if in_flight < 0:
            raise BatchError(f"in_flight must be 0 (no window) or more, got {in_flight}")
        if pack is not None and in_flight and pack > in_flight:
            raise BatchError(f"a pack of {pack} cannot be sent through a window of {in_flight}")
        # a pack is one call: while yielding, the window still lets one whole pack through
        yield_to = min(max(get_settings().batch_yield_in_flight, pack or 1), in_flight)
        settings = get_settings().llm.provider_batches
        long_enough = deadline_s >= settings.min_deadline_hours * 3600
        if provider_batch and not long_enough:
            raise BatchError(
                f"provider batches answer within their fixed {PROVIDER_BATCH_WINDOW_HOURS:g}h "
                f"window: a deadline of at least {settings.min_deadline_hours:g}h is needed, got "
                f"{deadline_s / 3600:g}h"
            )
        batch, _ = store.open_batch(name, max_cost_usd)
        if batch.status == "cancelled":
            raise BatchError(f"batch {name} was cancelled; use a new name")
        if (settings.default if provider_batch is None else provider_batch) and long_enough:
            store.allow_provider_batch(batch.id)  # before any line is sent: every attempt sees it
            in_flight = 0  # deferred jobs would fill the window for hours (see the module)
        # From the batch's creation, so a resumed line asks for the same deadline as before
        # (the idempotency fingerprint includes it).
        deadline = batch.created_at + timedelta(seconds=deadline_s)
        if deadline <= utcnow():
            raise BatchError(f"batch {name} is past its deadline ({deadline:%Y-%m-%d %H:%M} UTC)")
        done = Submitted(batch.id, batch.name)
        packer = Packer(pack) if pack is not None and pack > 1 else None
        window = Window(in_flight, yield_to, done) if in_flight else None
        return cls(batch.id, deadline, max_cost_usd, done, packer, window)

    def next_chunk_size(self) -> int:
        """Lines in the next chunk: :data:`CHUNK_LINES`; under a cost ceiling at most
        :data:`COST_CHECK_EVERY` (the spending is read between chunks); with a window, once it
        has room for a quarter of it (:data:`WINDOW_REFILL_SHARE`; while yielding, one line),
        at most that room, so no more of the batch's jobs are stored unsent than the window
        lets through (a stored, unsent job would look stalled to the sweeper)."""
        size = CHUNK_LINES
        if self.max_cost_usd is not None:
            size = min(size, COST_CHECK_EVERY)
        if self.window is not None:
            self.window.wait_for_room(self.packer, self.window.refill())
            size = min(size, max(self.window.limit() - len(self.window.open), 1))
        return size

    def over_budget(self) -> bool:
        """Whether the batch has spent its ceiling; the lines not yet read then stay unsent."""
        if self.max_cost_usd is None:
            return False
        spent = store.batch_cost(self.batch_id)
        if spent < self.max_cost_usd:
            return False
        self.done.stopped_at_cost = spent
        return True

    def submit_chunk(self, chunk: list[tuple[int, dict[str, Any] | BadLine]]) -> None:
        """Check, plan and store the chunk's lines in one transaction, then send them."""
        self.done.lines = chunk[-1][0] + 1
        limits = get_settings().llm.inputs
        mode = get_mode()  # one read per chunk: every line of it is planned under this mode
        items: list[NewLine] = []
        pack_plans: list[TierPlan | None] = []
        for line, spec in chunk:
            try:
                # The key hashes the request too: a changed line is refused, never confused.
                request = _request(spec, f"batch:{self.batch_id}:{line}", self.deadline)
                problems = request.size_problems(limits)
                if problems:
                    raise JobValidationError("; ".join(problems))
            except JobValidationError as exc:
                self.done.errors.append(LineError(line + 1, str(exc)))
                continue
            pack_plan = self.packer.plan_for(request) if self.packer is not None else None
            plan = None if pack_plan is not None else _plan(request, mode)
            stored_plan = (plan.complexity.value, plan.to_json()) if plan is not None else None
            items.append(NewLine(request, line, stored_plan))
            pack_plans.append(pack_plan)
        stored = create_batch_jobs(items, self.batch_id, get_settings().job_deadline_s)
        if self.window is not None:
            self._send_through_window(items, pack_plans, stored)
            return
        firsts: list[FirstAttempt] = []
        with sent_together():  # the chunk's messages in pipelined round trips
            for item, pack_plan, found in zip(items, pack_plans, stored, strict=True):
                if found.conflict is not None:
                    self.done.errors.append(LineError(item.line + 1, str(found.conflict)))
                    continue
                self._send(item, found, pack_plan, firsts)
            enqueue_first_attempts(firsts)  # one fair-share round trip per contended tier

    def _send_through_window(
        self, items: list[NewLine], pack_plans: list[TierPlan | None], stored: list[StoredLine]
    ) -> None:
        """Send the chunk's stored lines one by one, each once the window has room (a job
        must be on the broker before the window waits for it to end)."""
        assert self.window is not None
        for item, pack_plan, found in zip(items, pack_plans, stored, strict=True):
            if found.conflict is not None:
                self.done.errors.append(LineError(item.line + 1, str(found.conflict)))
                continue
            self.window.wait_for_room(self.packer)
            sent = self._send(item, found, pack_plan)
            if sent is not None:
                self.window.open.append(sent)

    def _send(
        self,
        item: NewLine,
        found: StoredLine,
        pack_plan: TierPlan | None,
        firsts: list[FirstAttempt] | None = None,
    ) -> str | None:
        """Send a stored line's job; return its id when it was sent now (None: it was already
        there and is left as it is). A packable line goes to the packer; a planned one straight
        to its first tier, so batch lines never queue on the router and an interactive job's
        routing never waits behind a batch (a line whose plan is an error goes to the router,
        which fails it with the reason). ``firsts``: a planned line's first attempt is added
        there for the caller to send with the chunk's others, instead of sent now."""
        request, job_id = item.request, found.job_id
        if not found.created:
            self.done.existing += 1
            # stored before a crash but maybe never sent (queued, or routed with no attempt
            # yet): packed again, or the router plans it or resends its first attempt (a
            # duplicate send is claimed once)
            queued = found.status == JobStatus.QUEUED.value
            if queued and self.packer is not None and self.packer.add(job_id, request, pack_plan):
                return job_id
            if found.status in (JobStatus.QUEUED.value, JobStatus.ROUTED.value):
                enqueue_route(job_id, request.priority)
                return job_id
            return None
        self.done.sent += 1
        if self.packer is not None and self.packer.add(job_id, request, pack_plan):
            return job_id
        if item.plan is None:
            enqueue_route(job_id, request.priority)
            return job_id
        tier = Tier(item.plan[1]["chain"][0])
        if firsts is not None:
            firsts.append(FirstAttempt(job_id, tier, request.priority, request.action_type))
        else:
            action = request.action_type
            enqueue_attempt(job_id, tier, 0, 0, priority=request.priority, action=action)
        return job_id

    def finish(self) -> Submitted:
        """Send what the packer holds, record the lines read, settle the batch's state."""
        if self.packer is not None:
            self.packer.flush()
        store.note_submitted(self.batch_id, self.done.lines)
        store.settle_batch(self.batch_id)
        return self.done


class Window:
    """The submitter's in-flight window (see the module): the ids of the jobs it sent that may
    still be running, at most ``size`` of them, or ``yield_size`` while daemons' jobs come in."""

    def __init__(self, size: int, yield_size: int, done: Submitted) -> None:
        self.size = size
        self.yield_size = yield_size
        self.done = done
        self.open: list[str] = []

    def limit(self) -> int:
        return self.yield_size if interactive.seen() else self.size

    def refill(self) -> int:
        """The room a new chunk waits for: :data:`WINDOW_REFILL_SHARE` of the window."""
        return max(1, self.size // WINDOW_REFILL_SHARE)

    def wait_for_room(self, packer: Packer | None, room: int = 1) -> None:
        """Return once ``room`` more jobs (at most the limit of the moment) may be sent
        without more than the limit of the sent jobs unfinished. A pending pack is sent first:
        its jobs are in the window and end only once sent."""
        if len(self.open) + room <= self.yield_size:
            return  # room even while yielding: no need to ask whether daemons are at work
        if len(self.open) + min(room, limit := self.limit()) <= limit:
            return
        if packer is not None:
            packer.flush()
        self.open = store.unfinished(self.open)
        while len(self.open) + min(room, limit := self.limit()) > limit:
            self.done.window_waits += 1
            time.sleep(WINDOW_POLL_S)
            self.open = store.unfinished(self.open)


def _plan(request: JobRequest, mode: Mode) -> TierPlan | None:
    """The line's plan under ``mode`` (the fleet's, read once per chunk), or None when it is
    an error (the router then fails the job with it)."""
    config = get_settings().llm
    plan = plan_job(request.action_type, request.prompt, request.context, config, mode)
    return None if plan.error else plan


class Packer:
    """Groups consecutive packable jobs (one action, one first tier) into packs of up to
    ``size`` and sends each as one ``run_pack`` message (see the module). :meth:`add` says
    whether it took the job (else the caller routes it as usual); :meth:`flush` sends what is
    pending (the caller calls it once more at the end)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.config = get_settings().llm
        self.mode = get_mode()
        self.key: tuple[str, Tier] | None = None
        self.pending: list[tuple[str, TierPlan, int]] = []  # (job id, plan, priority)

    def plan_for(self, request: JobRequest) -> TierPlan | None:
        """The job's plan when it can be packed, else None."""
        rule = self.config.routing.actions.get(request.action_type)
        if rule is None or kind_of(rule) != "label" or request.stream:
            return None
        if len(request.prompt) + len(json.dumps(request.context)) > PACK_MAX_PROMPT_CHARS:
            return None
        plan = plan_job(
            request.action_type, request.prompt, request.context, self.config, self.mode
        )
        if plan.error or plan.chain[0] not in LOCAL_TIERS:
            return None
        return plan

    def add(self, job_id: str, request: JobRequest, plan: TierPlan | None) -> bool:
        """Take the job into a pack when ``plan`` (its :meth:`plan_for`) says it can be packed."""
        if plan is None:
            self.flush()  # packs hold consecutive lines only
            return False
        key = (request.action_type, plan.chain[0])
        if key != self.key:
            self.flush()
            self.key = key
        self.pending.append((job_id, plan, request.priority))
        if len(self.pending) >= self.size:
            self.flush()
        return True

    def flush(self) -> None:
        """Route the pending jobs (a job routed meanwhile by someone else is left to them)
        and send them: as a pack, or as an ordinary attempt when one is left."""
        pending, self.pending = self.pending, []
        if not pending or self.key is None:
            return
        action, tier = self.key
        routed = [
            (job_id, priority)
            for job_id, plan, priority in pending
            if store.save_plan(job_id, plan.complexity.value, plan.to_json())
        ]
        if len(routed) == 1:
            job_id, priority = routed[0]
            enqueue_attempt(job_id, tier, 0, 0, priority=priority, action=action)
        elif routed:
            enqueue_pack([j for j, _ in routed], tier, max(p for _, p in routed), action=action)


def estimate_batch(specs: Iterable[dict[str, Any] | BadLine], config: LLMConfig) -> dict[str, Any]:
    """A dry run: jobs per first tier from the router's plan, and the estimated cost (US
    dollars) on each plan's first model beside API-only (the baseline model), from token
    estimates: the prompt's, and an answer of ``ESTIMATED_ANSWER_TOKENS`` capped by max_tokens.
    Nothing is stored or called."""
    mode = get_mode()
    baseline = config.baseline()
    per_tier: dict[str, int] = {}
    cost = api_only = 0.0
    lines = 0
    for spec in specs:
        lines += 1
        if isinstance(spec, BadLine):
            continue  # refused when submitted; the estimate counts the line only
        prompt = str(spec.get("prompt") or "")
        context = spec.get("context") or {}
        plan = plan_job(spec.get("action_type") or "unknown", prompt, context, config, mode)
        per_tier[plan.tier.value] = per_tier.get(plan.tier.value, 0) + 1
        tokens_in = estimate_tokens(prompt + json.dumps(context))
        models = config.tier_models(plan.tier)
        if models:
            out = min(ESTIMATED_ANSWER_TOKENS, models[0].max_tokens)
            cost += models[0].price(tokens_in, out)
        if baseline is not None:
            api_only += baseline.price(tokens_in, min(ESTIMATED_ANSWER_TOKENS, baseline.max_tokens))
    return {"jobs": lines, "per_tier": per_tier, "cost_usd": cost, "api_only_usd": api_only}


@dataclass(frozen=True)
class BatchHandle:
    """A batch by id: its progress, results and cancellation."""

    batch_id: str

    @classmethod
    def find(cls, batch_id_or_name: str) -> BatchHandle:
        batch = store.get_batch(batch_id_or_name)
        if batch is None:
            raise BatchError(f"no batch {batch_id_or_name!r}")
        return cls(batch.id)

    def progress(self) -> dict[str, Any]:
        """Counts by status and tier, cost so far, the batch's state and an ETA (seconds, from
        the finish rate so far; None until two jobs have finished): see
        :func:`tierflow.store.batches.batch_status`."""
        return batch_status(self.batch_id)

    def results(self, order: str = "input") -> Iterator[dict[str, Any]]:
        return store.batch_rows(self.batch_id, order)

    def cancel(self) -> int:
        """Cancel the queued jobs and those waiting for a provider batch (in-flight ones finish
        and are kept); returns how many. A provider batch nobody waits for any more is then
        cancelled at the provider by the fleet's next poll."""
        cancelled = store.cancel_batch(self.batch_id)
        cancelled += store.cancel_deferred_jobs(self.batch_id)
        store.settle_batch(self.batch_id)
        return cancelled

    def wait(self, timeout: float = 3600.0, poll_s: float = 1.0) -> dict[str, Any]:
        """Block until every job of the batch is finished; returns the progress then."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.progress()
            if found["finished"] >= found["jobs"] and found["state"] not in ("running", None):
                return found
            if all(s in TERMINAL_STATUSES for s in found["statuses"]) and found["jobs"]:
                return found
            if time.monotonic() > deadline:
                raise BatchError(f"batch {self.batch_id} not finished after {timeout}s")
            time.sleep(poll_s)
