"""Each step of the attempt pipeline on its own, on real PostgreSQL and Redis (no worker).

A job is stored and planned the way ``submit_job`` and ``route_job`` do it; each test builds an
:class:`AttemptContext` and runs one step (or the list up to it), then reads the rows back.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, update

from router.mode import set_mode
from router.plan import plan_job
from schemas.jobs import JobRequest
from schemas.tables import Attempt, DeadLetter
from tests.support import services
from tests.support.services import fake_model, fleet_config
from tierflow import store
from tierflow.core.constants import ALL_QUEUES, AttemptStatus, JobStatus, Mode
from tierflow.core.db import session_scope
from tierflow.core.redis_client import get_keys, get_redis
from tierflow.core.settings import get_settings
from tierflow.store.costs import get_cost_summary
from workers.leases import MAX_CAPACITY_WAIT_S, capacity_wait, max_countdown
from workers.outcome import Move
from workers.pipeline import STEPS, AttemptContext, Step, run_attempt_steps
from workers.pipeline.call import CallModel
from workers.pipeline.claim import ClaimAttempt
from workers.pipeline.decide import Decide
from workers.pipeline.gate import Gate, sampler
from workers.pipeline.notify import Notify
from workers.pipeline.persist import Persist
from workers.pipeline.price import Price
from workers.pipeline.select import ModeGate, PickModel
from workers.queues import queue_depth
from workers.tasks import run_attempt

pytestmark = pytest.mark.integration

WORKER = "test-host:task-1"


@pytest.fixture
def use(database: str, config_file: Callable[[dict[str, Any]], None]) -> Iterator[Callable]:
    """Point the settings at a config (fake models unless given) and reset the mode after."""

    def apply(**config: Any) -> None:
        config_file(fleet_config(**config))

    apply()
    yield apply
    prefix = os.environ["TIERFLOW_KEY_PREFIX"]
    for pattern in ("q:*", "rate:*", "cooldown:*", "circuit:*", "inflight:*", "mode"):
        services.delete_prefix(prefix, pattern)


def planned_job(
    prompt: str = "Extract topic from: 'Fixed the login bug'", action: str = "extract_topic"
) -> str:
    request = JobRequest(prompt=prompt, action_type=action)
    job_id, _ = store.create_job(request, get_settings().job_deadline_s)
    job = store.load_job(job_id)
    assert job is not None
    plan = plan_job(job.action_type, job.prompt, {}, get_settings().llm, Mode.AUTO)
    assert store.save_plan(job_id, plan.complexity.value, plan.to_json())
    return job_id


def context(job_id: str, attempt_no: int = 0, worker: str = WORKER) -> AttemptContext:
    return AttemptContext(job_id, 0, attempt_no, 0, worker, get_settings().llm)


def through(ctx: AttemptContext, last: type) -> AttemptContext:
    """Run the pipeline's steps up to and including the first of type ``last``."""
    for step in STEPS:
        if step.applies(ctx):
            step.run(ctx)
        if isinstance(step, last):
            return ctx
    raise AssertionError(f"{last.__name__} is not in STEPS")


def test_steps_are_wired_once_in_order() -> None:
    names = [type(s).__name__ for s in STEPS]
    assert names == [
        "ClaimAttempt",
        "HeldByProviderBatch",
        "CacheLookup",
        "ModeGate",
        "PickModel",
        "BudgetGate",
        "DeferToProviderBatch",
        "CallModel",
        "Gate",
        "Price",
        "SettleBudget",
        "Persist",
        "DropLease",
        "Decide",
        "Notify",
        "Metrics",
        "Finish",
        "LabelEscalation",
        "CacheStore",
        "Audit",
        "Enqueue",
    ]


def test_claim_stops_on_unknown_and_finished_jobs(use: Callable) -> None:
    unknown = context("00000000-0000-0000-0000-000000000000")
    ClaimAttempt().run(unknown)
    assert unknown.stopped and unknown.job is None and unknown.move is None
    job_id = planned_job()
    ctx = context(job_id)
    ClaimAttempt().run(ctx)
    assert ctx.job is not None and ctx.tier is not None and ctx.making
    assert ctx.job.status == JobStatus.RUNNING.value
    store.finalize_job(job_id, JobStatus.FAILED, error="test")
    done = context(job_id)
    ClaimAttempt().run(done)
    assert done.stopped and done.job is None
    assert [a.attempt_no for a in store.attempts_of(job_id)] == [0]  # the finished job: unclaimed


def test_claim_owns_then_replays_then_waits_for_a_live_holder(use: Callable) -> None:
    job_id = planned_job()
    first = through(context(job_id), ClaimAttempt)
    assert first.making and not first.replayed
    busy = through(context(job_id, worker="other-host:task-2"), ClaimAttempt)
    assert busy.stopped and busy.move is not None and busy.move.kind == "wait"
    assert busy.move.countdown > 0
    store.finish_attempt(job_id, 0, worker=WORKER, status=AttemptStatus.PASSED.value, cost_usd=0.25)
    replay = through(context(job_id, worker="other-host:task-3"), ClaimAttempt)
    assert replay.replayed and replay.attempt is not None and not replay.making


def test_mode_gate_skips_a_tier_the_mode_forbids(use: Callable) -> None:
    job_id = planned_job()
    set_mode(Mode.CLOUD, reason="test")
    try:
        ctx = through(context(job_id), ModeGate)
    finally:
        set_mode(Mode.AUTO, reason="test teardown")
    assert ctx.outcome is not None and ctx.outcome["error_kind"] == "mode"
    assert ctx.pick is None


def test_pick_model_skips_with_every_reason_when_none_can_serve(use: Callable) -> None:
    use(local_fast=[fake_model("down", unavailable=True)])
    ctx = through(context(planned_job()), PickModel)
    assert ctx.pick is None and ctx.outcome is not None
    assert ctx.outcome["status"] == AttemptStatus.SKIPPED.value
    assert "down: unavailable" in ctx.outcome["error"]


def test_pick_model_waits_at_a_concurrency_cap_and_gives_the_claim_back(use: Callable) -> None:
    use(local_fast=[fake_model("capped", limits={"max_concurrency": 1})])
    holder = through(context(planned_job()), PickModel)
    assert holder.pick is not None  # holds the only slot
    job_id = planned_job("Extract topic from: 'second'")
    waiting = through(context(job_id), PickModel)
    assert waiting.stopped and waiting.move is not None and waiting.move.kind == "wait"
    assert store.attempts_of(job_id) == []  # claim released: the retry claims afresh


def test_call_records_an_error_and_frees_the_slot(use: Callable) -> None:
    use(local_fast=[fake_model("flaky", failure_rate=1.0, limits={"max_concurrency": 1})])
    ctx = through(context(planned_job()), CallModel)
    assert ctx.completion is None and ctx.error is not None
    assert ctx.outcome is not None and ctx.outcome["status"] == AttemptStatus.ERROR.value
    again = through(context(planned_job("Extract topic from: 'again'")), PickModel)
    assert again.pick is not None, "the failed call kept its concurrency slot"


def test_gate_price_persist_store_a_gated_priced_answer(use: Callable) -> None:
    use(local_fast=[fake_model("priced", input_cost_per_million=1.0, output_cost_per_million=2.0)])
    ctx = through(context(planned_job()), Gate)
    assert ctx.report is not None and ctx.outcome is None
    Price().run(ctx)
    assert ctx.outcome is not None
    assert ctx.completion is not None
    expected = (ctx.completion.input_tokens * 1.0 + ctx.completion.output_tokens * 2.0) / 1e6
    assert ctx.outcome["cost_usd"] == pytest.approx(expected)
    Persist().run(ctx)
    assert ctx.attempt is not None
    assert float(ctx.attempt.cost_usd) == pytest.approx(expected)
    assert ctx.attempt.status in (AttemptStatus.PASSED.value, AttemptStatus.REJECTED.value)


def test_consistency_samples_are_charged_at_the_synchronous_price(use: Callable) -> None:
    # A provider batch's answer is priced at the batch price (its pick carries it), but the
    # samples that check it are direct calls made now, at the model's own price.
    use(local_fast=[fake_model("priced", input_cost_per_million=1.0, output_cost_per_million=2.0)])
    ctx = through(context(planned_job()), CallModel)
    assert ctx.pick is not None
    ctx.pick = replace(ctx.pick, model=ctx.pick.model.at_batch_price())
    assert sampler(ctx)(2)
    assert ctx.extra_calls and all(c["purpose"] == "consistency" for c in ctx.extra_calls)
    for call in ctx.extra_calls:
        full = (call["input_tokens"] * 1.0 + call["output_tokens"] * 2.0) / 1e6
        assert call["cost_usd"] == pytest.approx(full) and full > 0


def test_decide_is_a_function_of_the_stored_row(use: Callable) -> None:
    use(local_fast=[fake_model("flaky", failure_rate=1.0)])
    job_id = planned_job()
    ctx = through(context(job_id), Decide)
    assert ctx.move is not None
    replay = through(context(job_id, worker="other-host:task-9"), Decide)
    assert replay.replayed and replay.move == ctx.move


def test_notify_announces_a_fallback_once_never_on_replay(use: Callable) -> None:
    use(
        local_fast=[fake_model("broken", failure="auth", failure_rate=1.0)],
        max_retries_per_tier=0,
    )
    keys = get_keys()
    get_redis().delete(keys.fallback_history)
    job_id = planned_job()
    ctx = through(context(job_id), Notify)
    assert ctx.move is not None and ctx.move.kind == "fallback"
    assert get_redis().llen(keys.fallback_history) == 1
    through(context(job_id, worker="other-host:task-7"), Notify)
    assert get_redis().llen(keys.fallback_history) == 1


def test_whole_pipeline_runs_once_and_a_replay_charges_nothing(use: Callable) -> None:
    """A priced answer the gate rejects (not the JSON the action expects): a redelivery of the
    same message replays the stored decision, with no second call and no second charge."""
    priced = fake_model(
        "priced", answer="bad_json", input_cost_per_million=5.0, output_cost_per_million=5.0
    )
    use(local_fast=[priced])
    job_id = planned_job("Is this a decision or a fact? 'We chose React'", "classify_memory")
    config = get_settings().llm
    first = run_attempt_steps(job_id, 0, 0, 0, WORKER, config)
    assert first.completion is not None and first.move is not None
    assert first.move.kind in ("retry", "fallback")
    (row,) = store.attempts_of(job_id)
    assert row.status == AttemptStatus.REJECTED.value and float(row.cost_usd) > 0
    replay = run_attempt_steps(job_id, 0, 0, 0, "other-host:task-5", config)
    assert replay.replayed and replay.completion is None and replay.move == first.move
    (again,) = store.attempts_of(job_id)
    assert again.cost_usd == row.cost_usd


def test_a_new_concern_is_a_new_step(use: Callable) -> None:
    """A step added to the list sees the context the others filled, and changes nothing else."""
    seen: list[tuple[str | None, Move | None]] = []

    class Audit(Persist):  # runs once the attempt row exists
        def applies(self, ctx: AttemptContext) -> bool:
            return ctx.attempt is not None

        def run(self, ctx: AttemptContext) -> None:
            assert ctx.attempt is not None
            seen.append((ctx.attempt.status, ctx.move))

    job_id = planned_job()
    run_attempt_steps(job_id, 0, 0, 0, WORKER, get_settings().llm, steps=(*STEPS, Audit()))
    assert len(seen) == 1 and seen[0][1] is not None


def capacity_cap() -> float:
    """The longest wait for capacity: the capacity cap, within the broker's bound."""
    return min(MAX_CAPACITY_WAIT_S, max_countdown())


def test_waits_at_a_cap_back_off_and_the_counter_travels_with_the_wait(use: Callable) -> None:
    use(local_fast=[fake_model("capped", limits={"max_concurrency": 1})])
    holder = through(context(planned_job()), PickModel)
    assert holder.pick is not None
    job_id = planned_job("Extract topic from: 'waiting'")
    countdowns = []
    for waits in range(10):
        ctx = AttemptContext(job_id, 0, 0, 0, f"h:t{waits}", get_settings().llm, waits=waits)
        through(ctx, PickModel)
        assert ctx.move is not None and ctx.move.kind == "wait" and ctx.move.waits == waits + 1
        assert ctx.move.countdown == capacity_wait(job_id, 0.5, waits)
        countdowns.append(ctx.move.countdown)
    assert countdowns[0] < 1.0 and countdowns[-1] == capacity_cap()
    assert all(b >= a for a, b in itertools.pairwise(countdowns))


def test_a_held_attempt_waits_for_the_lease_and_keeps_its_wait_count(use: Callable) -> None:
    job_id = planned_job()
    through(context(job_id), ClaimAttempt)
    ctx = AttemptContext(job_id, 0, 0, 0, "other-host:task-2", get_settings().llm, waits=3)
    through(ctx, ClaimAttempt)
    assert ctx.move is not None and ctx.move.kind == "wait" and ctx.move.waits == 3


def test_capacity_wait_doubles_is_deterministic_and_capped() -> None:
    job = "6f1c2a8e-0000-4000-8000-000000000001"
    assert capacity_wait(job, 0.5, 0) == 0.5  # the first wait is the wait asked for
    for waits in range(1, 12):
        got = capacity_wait(job, 0.5, waits)
        assert got == capacity_wait(job, 0.5, waits)  # a replay gets the same countdown
        assert min(0.5 * 2 ** (waits - 1), capacity_cap()) <= got
        assert got <= min(0.5 * 2**waits, capacity_cap())
    assert capacity_wait(job, 0.01, 0) == 0.25  # a floor: no 10 ms spin
    assert capacity_wait(job, 3.0, 2) >= 3.0  # never below a rate limit's known next room
    assert capacity_wait(job, 0.5, 10_000) == capacity_cap()
    others = {capacity_wait(f"{job[:-1]}{i}", 0.5, 3) for i in range(10)}
    assert len(others) > 5  # jobs that waited together come back apart


def test_run_attempt_refuses_a_bad_wait_count_as_a_dead_letter(use: Callable) -> None:
    job_id = planned_job()
    result = run_attempt.apply(args=[job_id, 0, 0, 0, "many"]).get()
    assert result is None
    with session_scope() as session:
        reasons = session.execute(
            select(DeadLetter.reason).where(DeadLetter.reason.like("waits must be%"))
        ).scalars()
        assert any("'many'" in r for r in reasons)
    assert store.attempts_of(job_id) == []


class TakenOver(Step):
    """Between the call and the write, this delivery stalls past its lease and another delivery
    takes the attempt over and makes its own call (as a paused VM or a stop-the-world pause
    would leave it); the new holder's delivery is left just before its own write."""

    def __init__(self) -> None:
        self.holder: AttemptContext | None = None

    def applies(self, ctx: AttemptContext) -> bool:
        return ctx.outcome is not None and ctx.attempt is None

    def run(self, ctx: AttemptContext) -> None:
        with session_scope() as session:
            session.execute(
                update(Attempt)
                .where(Attempt.job_id == ctx.job_id, Attempt.attempt_no == ctx.attempt_no)
                .values(lease_until=func.now() - timedelta(seconds=1))
            )
        self.holder = through(context(ctx.job_id, worker=NEW), Price)
        assert self.holder.outcome is not None and self.holder.attempt is None


NEW = "new-host:task-2"


def test_a_fenced_out_delivery_records_its_call_and_leaves_the_job_to_the_new_holder(
    use: Callable,
) -> None:
    use(local_fast=[fake_model("priced", input_cost_per_million=4.0, output_cost_per_million=8.0)])
    job_id = planned_job()
    prefix = os.environ["TIERFLOW_KEY_PREFIX"]
    steps = tuple(s for s in STEPS if not isinstance(s, Persist))
    at = [type(s) for s in steps].index(Price) + 1
    takeover = TakenOver()
    stalled = (*steps[:at], takeover, Persist(), *steps[at:])
    late = run_attempt_steps(job_id, 0, 0, 0, WORKER, get_settings().llm, steps=stalled)

    assert late.superseded and late.stopped and late.move is None and late.attempt is None
    assert late.completion is not None and late.outcome is not None
    holder = late.holder_attempt
    assert holder is not None and holder.worker == NEW and holder.status == "running"
    (row,) = store.attempts_of(job_id)  # the new holder's row, untouched
    assert row.worker == NEW and row.status == "running" and row.text is None
    assert float(row.cost_usd) == 0 and row.lease_until is not None
    (call,) = store.superseded_calls_of(job_id)
    assert call.worker == WORKER and call.model == "priced" and call.tier == "local_fast"
    assert late.outcome["cost_usd"] > 0
    assert float(call.cost_usd) == pytest.approx(late.outcome["cost_usd"])
    assert call.input_tokens == late.completion.input_tokens
    # no next attempt sent, the job not ended: the new holder drives it
    assert sum(queue_depth(q) for q in ALL_QUEUES) == 0, prefix
    assert store.job_status(job_id) == JobStatus.RUNNING.value

    # the new holder's delivery goes on to its write: it lands, and the job's cost is both calls
    mine = takeover.holder
    assert mine is not None
    for step in STEPS[[type(s) for s in STEPS].index(Persist) :]:
        if step.applies(mine):
            step.run(mine)
    assert not mine.superseded and mine.move is not None and mine.move.kind == "succeed"
    job = store.load_job(job_id)
    assert job is not None and job.status == JobStatus.SUCCEEDED.value
    (done,) = store.attempts_of(job_id)
    assert done.worker == NEW and float(job.cost_usd) == pytest.approx(
        float(done.cost_usd) + float(call.cost_usd)
    )
    summary = get_cost_summary()
    assert summary["superseded"] >= 1
    assert summary["total_cost"] >= float(job.cost_usd)
