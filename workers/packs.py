"""A pack: the first attempts of several small ``label`` jobs answered by one model call.

The seed's "batch 10 classification tasks → single prompt", for batches on the local tiers
(``submit_batch(..., pack=N)`` sends them, :func:`run_pack_steps` runs one delivery):

1. Each member is read by the pipeline's LoadJob (the claim reads it again under its row lock,
   :class:`~workers.pipeline.claim.ClaimAttempt`). A member that cannot be packed here
   (its chain does not start on this tier, its action's answer is not a ``label``, it streams,
   or its daemon has a budget) is sent on as an ordinary attempt (``run_attempt``).
2. The others go through the pipeline's steps before PickModel (ClaimAttempt, ModeGate, and
   whatever is placed there later). A member finished already (a redelivered pack) replays its
   decision, one held by another delivery waits, one the mode skips is stored skipped: each
   through the rest of the ordinary steps, as ``run_attempt`` would. So a redelivered pack
   calls no model for a member already finished or held, and charges nothing twice.
3. The members still being made share one model: one pick (one concurrency slot and one rate
   reservation: the pack counts as one call against the model's limits) and one call, which
   holds every member's lease while it runs. When no model can serve now but soon (its
   concurrency cap, our own rate limit), every claim is given back and the pack is sent again
   after the same backoff as an attempt's; when no model can serve at all, each member runs the
   ordinary steps (and is skipped with the reasons). A pack left with one member runs it as an
   ordinary attempt.
4. The answer is split (:mod:`workers.packing`); each member's part is its Completion, with its
   share of the call's tokens, and the member goes on through every step after CallModel
   (:mod:`workers.pipeline.preset`): its own gate verdict, price, persist (fenced by its own
   claim), decision, finish and next attempt. A missing or conflicting part is a
   ``malformed_response`` error of that member alone: a permanent error, so the decision sends
   that member alone to the next tier of its chain. A failed call is every member's error, each
   retried or moved on as its own attempt.

Each member's attempt stores its place in the pack under ``quality_components.pack`` (the
call's id, shared by its members; size; item; the call's whole token usage). Latency: each
member's is the whole call's.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

from router.dispatch import enqueue_attempt, enqueue_pack
from router.gate import kind_of
from tierflow import store
from tierflow.core import errors
from tierflow.core.config import ActionRule, LLMConfig
from tierflow.core.constants import Tier
from tierflow.core.tokens import estimate_tokens
from workers.backends.base import Completion, CompletionRequest
from workers.leases import LEASES, call_timeout, capacity_wait, lease_seconds
from workers.limits import FleetLimits
from workers.packing import (
    PackedPrompt,
    compose_pack,
    pack_max_tokens,
    share_tokens,
    split_answer,
)
from workers.pipeline import STEPS, AttemptContext, Step, run_steps
from workers.pipeline.budget import daemon_of
from workers.pipeline.call import account_failure, build_request
from workers.pipeline.claim import ClaimAttempt, LoadJob
from workers.pipeline.preset import (
    preset_completion,
    preset_error,
    run_after_call,
    steps_before,
    steps_from,
)
from workers.pipeline.select import PickModel, fleet_limits
from workers.selection import NoPick, Pick, pick_model


@dataclass
class PackRun:
    """What one delivery of a pack did: members by what happened to them, the model called."""

    members: int
    packed: int = 0  # members answered by the packed call
    model: str | None = None
    sent_on: int = 0  # members sent as ordinary attempts (not packable here)
    resent: bool = False  # the whole pack waits for capacity and was sent again
    moves: Counter[str] = field(default_factory=Counter)

    def summary(self) -> str:
        """One line for Flower: ``pack 4/4 gemma3-270m: succeed=3 fallback=1``."""
        if self.resent:
            return f"pack {self.members}: waits for capacity"
        moves = " ".join(f"{k}={v}" for k, v in sorted(self.moves.items()))
        head = f"pack {self.packed}/{self.members}" + (f" {self.model}" if self.model else "")
        return f"{head}: {moves}" + (f" sent_on={self.sent_on}" if self.sent_on else "")


def _packable(ctx: AttemptContext, tier: Tier) -> bool:
    assert ctx.job is not None
    rule = ctx.config.routing.actions.get(ctx.job.action_type)
    daemon = daemon_of(ctx)
    return (
        ctx.tier is tier
        and ctx.step == 0
        and rule is not None
        and kind_of(rule) == "label"
        and not ctx.job.stream
        and (daemon is None or daemon not in ctx.config.budgets)
    )


def _send_on(ctx: AttemptContext) -> None:
    """The member as an ordinary attempt of its tier."""
    assert ctx.job is not None and ctx.tier is not None
    store.touch_jobs([ctx.job_id])
    enqueue_attempt(
        ctx.job_id,
        ctx.tier,
        ctx.step,
        ctx.attempt_no,
        ctx.retries_in_step,
        priority=ctx.job.priority,
        action=ctx.job.action_type,
    )


def _note(run: PackRun, ctx: AttemptContext) -> None:
    run.moves[ctx.move.kind if ctx.move is not None else "stopped"] += 1


def run_pack_steps(
    job_ids: Sequence[str],
    tier: Tier,
    worker: str,
    config: LLMConfig,
    *,
    waits: int = 0,
    delivery_retry: int = 0,
    steps: tuple[Step, ...] = STEPS,
) -> PackRun:
    """Run (or replay) one delivery of a pack of first attempts on ``tier`` (see the module).

    ``worker`` is the delivery's ``host/run:task_id`` (every member's claim holds it);
    ``waits`` how often this pack already waited for capacity; ``delivery_retry`` Celery's
    retry number (a retry takes its own claims back).
    """
    run = PackRun(len(job_ids))
    load: tuple[Step, ...] = (LoadJob(),)  # read first: the pack checks come before a claim
    claim = steps_before(steps_from(steps, ClaimAttempt), PickModel)
    ordinary = steps_from(steps, PickModel)
    live: list[AttemptContext] = []
    for job_id in job_ids:
        ctx = AttemptContext(
            job_id, 0, 0, 0, worker, config, waits=waits, delivery_retry=delivery_retry
        )
        run_steps(ctx, load)
        if ctx.job is None:
            _note(run, ctx)  # unknown, finished, expired or unrouted: LoadJob said so
            continue
        if not _packable(ctx, tier):
            _send_on(ctx)
            run.sent_on += 1
            continue
        ctx.job = None  # the claim reads it again, under its row lock
        run_steps(ctx, claim)
        if ctx.making:
            live.append(ctx)
        else:  # finished before (replay), held elsewhere (wait), skipped by the mode
            run_steps(ctx, ordinary)
            _note(run, ctx)
    if not live:
        return run
    first = live[0]
    assert first.job is not None
    action = first.job.action_type
    alone = [c for c in live if c.job is not None and c.job.action_type != action]
    live = [c for c in live if c not in alone]
    if len(live) == 1:
        alone += live
        live = []
    for ctx in alone:  # a pack of one, or another action than the pack's: ordinary attempts
        run_steps(ctx, ordinary)
        _note(run, ctx)
    if live:
        _call_pack(run, live, tier, config, steps, ordinary, waits)
    return run


def _pack_tokens(live: list[AttemptContext]) -> int:
    total = 0
    for ctx in live:
        assert ctx.job is not None
        total += estimate_tokens(ctx.job.prompt + json.dumps(ctx.job.context or {})) + 8
    return total + 64  # the instructions and the numbering


def _call_pack(
    run: PackRun,
    live: list[AttemptContext],
    tier: Tier,
    config: LLMConfig,
    steps: tuple[Step, ...],
    ordinary: tuple[Step, ...],
    waits: int,
) -> None:
    limits = fleet_limits()
    picked = pick_model(config, tier, limits, _pack_tokens(live))
    if isinstance(picked, NoPick):
        _no_pick(run, live, tier, picked, ordinary, waits)
        return
    assert live[0].job is not None
    rule = config.routing.actions.get(live[0].job.action_type, ActionRule())
    requests = []
    for ctx in live:
        assert ctx.job is not None
        requests.append(build_request(ctx.job, rule, picked.model))
    packed = compose_pack([r.prompt for r in requests], rule.labels)
    model = picked.model
    request = CompletionRequest(
        prompt=packed.prompt,
        system=packed.system,
        max_tokens=pack_max_tokens(model.max_tokens, len(live)),
        temperature=model.temperature,
        timeout_s=call_timeout(model.timeout_s),
    )
    run.packed, run.model = len(live), model.name
    completion, error, latency_ms = _call(picked, limits, request, live)
    call = PackCall(picked, limits, requests, packed, latency_ms, uuid.uuid4().hex[:12])
    if error is not None:
        _each_failed(run, live, call, error, steps)
    else:
        assert completion is not None
        _each_answered(run, live, call, completion, steps)


@dataclass(frozen=True)
class PackCall:
    """One call for a pack, as its members' outcomes need it: the pick, the members' own
    requests (in member order), the composed pack, the call's latency (ms) and its id (shared
    by the members' attempts as evidence)."""

    picked: Pick
    limits: FleetLimits
    requests: list[CompletionRequest]
    packed: PackedPrompt
    latency_ms: float
    call_id: str

    def info(self, item: int, **more: Any) -> dict[str, Any]:
        """The evidence stored with member ``item`` (1-based)."""
        size = len(self.requests)
        return {"call": self.call_id, "size": size, "item": item,
                "model": self.picked.model.name, **more}  # fmt: skip


def _each_failed(
    run: PackRun,
    live: list[AttemptContext],
    call: PackCall,
    error: errors.BackendError,
    steps: tuple[Step, ...],
) -> None:
    """The call failed: every member's attempt fails with its error."""
    for k, (ctx, own) in enumerate(zip(live, call.requests, strict=True), start=1):
        preset_error(ctx, call.picked, call.limits, own, error, call.latency_ms, call.info(k))
        run_after_call(ctx, steps)
        _note(run, ctx)


def _each_answered(
    run: PackRun,
    live: list[AttemptContext],
    call: PackCall,
    completion: Completion,
    steps: tuple[Step, ...],
) -> None:
    """Split the answer: each member gets its part (or a malformed-response error when its part
    is missing) and its share of the call's tokens (input by prompt length, output by part)."""
    n = len(live)
    weights = [len(r.prompt) + len(call.packed.system) / n for r in call.requests]
    truncated = completion.finish_reason == "length"
    parts = split_answer(call.packed.answer(completion.text), n, truncated=truncated)
    ins = share_tokens(completion.input_tokens, weights)
    outs = share_tokens(completion.output_tokens, [len(p.text or "") for p in parts])
    for k, (ctx, own, part) in enumerate(zip(live, call.requests, parts, strict=True), start=1):
        info = call.info(
            k, input_tokens=completion.input_tokens, output_tokens=completion.output_tokens
        )
        if part.text is None:
            problem = errors.MalformedResponse(
                f"packed answer: {part.problem}: {completion.text[:300]!r}"
            )
            preset_error(ctx, call.picked, call.limits, own, problem, call.latency_ms, info,
                         input_tokens=ins[k - 1], output_tokens=outs[k - 1])  # fmt: skip
        else:
            mine = Completion(
                text=part.text,
                input_tokens=ins[k - 1],
                output_tokens=outs[k - 1],
                model=completion.model,
                provider=completion.provider,
                finish_reason="length" if part.cut else (completion.finish_reason or "stop"),
                fake=completion.fake,
            )
            preset_completion(ctx, call.picked, call.limits, own, mine, call.latency_ms, info)
        run_after_call(ctx, steps)
        _note(run, ctx)


def _call(
    pick: Pick, limits: FleetLimits, request: CompletionRequest, live: list[AttemptContext]
) -> tuple[Completion | None, errors.BackendError | None, float]:
    """The one call, every member's lease held meanwhile; its slot given back and its
    reservation settled whatever happens (as CallModel does for one attempt)."""
    completion: Completion | None = None
    error: errors.BackendError | None = None
    started = time.perf_counter()
    try:
        with ExitStack() as leases:
            for ctx in live:
                leases.enter_context(
                    LEASES.hold(ctx.job_id, ctx.attempt_no, ctx.worker, lease_seconds())
                )
            completion = pick.backend.complete(request)
    except errors.BackendError as exc:
        limits.settle(pick.model, pick.reservation, pick.reservation.input_tokens, 0)
        account_failure(limits, pick.model, exc)
        error = exc
    finally:
        limits.release_slot(pick.model, pick.slot)
    latency_ms = (time.perf_counter() - started) * 1000
    if completion is not None:
        limits.settle(
            pick.model, pick.reservation, completion.input_tokens, completion.output_tokens
        )
        limits.record_success(pick.model)
    return completion, error, latency_ms


def _no_pick(
    run: PackRun,
    live: list[AttemptContext],
    tier: Tier,
    picked: NoPick,
    ordinary: tuple[Step, ...],
    waits: int,
) -> None:
    if picked.wait_s is None:  # nothing will serve soon: each member is skipped on its own
        for ctx in live:
            run_steps(ctx, ordinary)
            _note(run, ctx)
        return
    ids = [ctx.job_id for ctx in live]
    for ctx in live:
        store.release_attempt(ctx.job_id, ctx.attempt_no, ctx.worker)
    store.touch_jobs(ids)
    job = live[0].job
    assert job is not None
    wait = capacity_wait(ids[0], picked.wait_s, waits)
    enqueue_pack(ids, tier, job.priority, wait, waits + 1, job.action_type)
    run.resent = True
