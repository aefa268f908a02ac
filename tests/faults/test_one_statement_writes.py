"""The job's own path in one statement per write (issue 18): the claim of a routed job's
attempt (:func:`tierflow.store.claim_routed_attempt`), the outcome with the job's end
(:func:`tierflow.store.finish_attempt` given the tier), the route's plan, and the driver-level
execution under them (:mod:`tierflow.store.rows`). Each must keep every rule of the transaction
it replaced: who may claim, what is refused, the fence, the first outcome winning, the job's
cost as the sum of its attempts and superseded calls, and errors raised as SQLAlchemy's.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
import sqlalchemy.exc
from sqlalchemy import func, select, update

from router.mode import get_mode
from router.plan import plan_job
from schemas.jobs import JobRequest, utcnow
from schemas.tables import Attempt, Job
from tierflow import store
from tierflow.core.constants import AttemptStatus, JobStatus
from tierflow.core.db import session_scope
from tierflow.core.settings import get_settings
from tierflow.store import Claim, rows
from tierflow.store.jobs import routing
from tierflow.store.modes import last_switched_to
from workers.outcome import success_fields

pytestmark = pytest.mark.integration


def new_job(*, routed: bool = True, deadline_s: float | None = None) -> str:
    request = JobRequest(
        prompt=f"Extract topic from: 'one statement {uuid.uuid4().hex[:6]}'",
        action_type="extract_topic",
    )
    job_id, _ = store.create_job(request, get_settings().job_deadline_s)
    if deadline_s is not None:
        with session_scope() as session:
            session.execute(
                update(Job)
                .where(Job.id == job_id)
                .values(deadline=utcnow() + timedelta(seconds=deadline_s))
            )
    if routed:
        config = get_settings().llm
        with routing(job_id) as (job, _mode, save):
            assert job is not None and job.status == JobStatus.QUEUED.value
            plan = plan_job(job.action_type, job.prompt, job.context, config, get_mode())
            assert save(plan.complexity.value, plan.to_json())
    return job_id


@pytest.fixture
def job_id(database: str) -> Iterator[str]:
    job_id = new_job()
    yield job_id
    store.finalize_job(job_id, JobStatus.FAILED, error="test fixture, never run")


def fast(job_id: str, worker: str, *, lease_s: float = 30.0, retry: int = 0, step: int = 0,
         attempt_no: int = 0, now: Any = None) -> store.ClaimResult | None:  # fmt: skip
    return store.claim_routed_attempt(
        job_id, attempt_no, step, worker, lease_s, retry, now or utcnow()
    )


def attempt_rows(job_id: str) -> list[Attempt]:
    return store.attempts_of(job_id)


def test_the_claim_owns_starts_the_job_and_then_waits_like_the_transaction(job_id: str) -> None:
    owned = fast(job_id, "host-a/run:task-1")
    assert owned is not None and owned.claim is Claim.OWNED and owned.job is not None
    assert owned.job.status == JobStatus.RUNNING.value and owned.job.plan is not None
    assert store.job_status(job_id) == JobStatus.RUNNING.value
    (row,) = attempt_rows(job_id)
    assert row.status == AttemptStatus.RUNNING.value and row.worker == "host-a/run:task-1"
    assert row.tier == owned.job.plan["chain"][0] and row.lease_until is not None
    # another delivery: not claimed here, and the transaction says why (a live lease)
    assert fast(job_id, "host-b/run:task-2") is None
    busy = store.claim_attempt(job_id, 0, 0, row.tier, "host-b/run:task-2", 30.0)
    assert busy.claim is Claim.BUSY and busy.lease_left_s > 25
    # a retry of the same task takes it back at once; the same run handed out again does not
    assert fast(job_id, "host-c/run:task-1", retry=0) is None
    retried = fast(job_id, "host-c/run:task-1", retry=1)
    assert retried is not None and retried.claim is Claim.OWNED
    assert attempt_rows(job_id)[0].worker == "host-c/run:task-1"


def test_a_task_id_with_like_wildcards_matches_only_itself(job_id: str) -> None:
    assert fast(job_id, "host-a/run:taXk%1") is not None
    # '_' and '%' are literal: another task whose id the pattern would match is not a retry
    assert fast(job_id, "host-b/run:ta_k%1", retry=1) is None
    assert fast(job_id, "host-b/run:taXk%1", retry=1) is not None


def test_an_abandoned_lease_is_taken_over_a_finished_attempt_is_not(job_id: str) -> None:
    assert fast(job_id, "host-a/run:task-1", lease_s=0.2) is not None
    time.sleep(0.3)
    taken = fast(job_id, "host-b/run:task-2")
    assert taken is not None and taken.claim is Claim.OWNED
    done = store.finish_attempt(
        job_id, 0, worker="host-b/run:task-2", status=AttemptStatus.REJECTED.value, cost_usd=0.1
    )
    assert done.landed
    assert fast(job_id, "host-c/run:task-3", lease_s=0.0) is None  # finished: a replay
    replay = store.claim_attempt(job_id, 0, 0, "local_fast", "host-c/run:task-3", 30.0)
    assert replay.claim is Claim.DONE


def test_what_the_claim_refuses_it_neither_claims_nor_touches(database: str) -> None:
    unrouted = new_job(routed=False)
    past = new_job(deadline_s=0.5)
    ended = new_job()
    store.finalize_job(ended, JobStatus.CANCELLED, error="cancelled by the test")
    live = new_job()
    later = utcnow() + timedelta(seconds=5)
    cases = {
        "unknown": (str(uuid.uuid4()), {}),
        "unrouted": (unrouted, {}),
        "past its deadline": (past, {"now": later}),
        "finished": (ended, {}),
        "step past the chain": (live, {"step": 9}),
    }
    for why, (job, options) in cases.items():
        assert fast(job, "host-a/run:task-1", **options) is None, why
        assert attempt_rows(job) == [], why
    assert store.job_status(unrouted) == JobStatus.QUEUED.value
    assert store.job_status(ended) == JobStatus.CANCELLED.value
    for job in (unrouted, past, live):
        store.finalize_job(job, JobStatus.FAILED, error="test fixture, never run")


def succeed(row: Attempt) -> tuple[JobStatus, dict[str, Any]] | None:
    if row.status != AttemptStatus.PASSED.value:
        return None
    return JobStatus.SUCCEEDED, success_fields(row, get_settings().llm)


def passed(cost: float, text: str = "quarterly report") -> dict[str, Any]:
    return {
        "status": AttemptStatus.PASSED.value,
        "model": "fake-fast",
        "provider": "fake",
        "text": text,
        "cost_usd": cost,
        "input_tokens": 11,
        "output_tokens": 3,
        "quality_score": 0.9,
        "quality_components": {"shape": {"ok": True}},
        "quality_issues": [],
        "fake": True,
    }


def test_a_success_ends_the_job_in_its_statement_with_every_cost(job_id: str) -> None:
    assert fast(job_id, "host-a/run:task-1", lease_s=0.2) is not None
    time.sleep(0.3)
    assert fast(job_id, "host-b/run:task-2") is not None  # the first holder stalled
    assert store.record_superseded_call(
        job_id, 0, "host-a/run:task-1", status="passed", cost_usd=0.25
    )
    done = store.finish_attempt(
        job_id, 0, worker="host-b/run:task-2", ending=succeed, tier="local_fast", **passed(0.5)
    )
    assert done.landed and done.ended and done.result is not None
    assert done.attempt is not None and done.attempt.quality_components == {"shape": {"ok": True}}
    assert done.attempt.quality_issues == [] and done.attempt.finished_at is not None
    result = done.result
    assert result.status == JobStatus.SUCCEEDED.value and result.text == "quarterly report"
    assert result.cost_usd == pytest.approx(0.75)  # the answer and the superseded call
    assert [a.attempt_no for a in result.attempts] == [0] and result.input_tokens == 11
    job = store.load_job(job_id)
    assert job is not None and job.status == JobStatus.SUCCEEDED.value
    assert float(job.cost_usd) == pytest.approx(0.75) and job.tier == "local_fast"
    assert store.job_result(job_id) == result  # what a waiter reads back is what it was woken with
    # the first outcome wins: a twin's write lands nowhere, charges nothing
    twin = store.finish_attempt(
        job_id, 0, worker="host-b/run:task-2", ending=succeed, tier="local_fast", **passed(9.0)
    )
    assert not twin.landed and twin.attempt is not None and float(twin.attempt.cost_usd) == 0.5
    job = store.load_job(job_id)
    assert job is not None and float(job.cost_usd) == pytest.approx(0.75)


def test_a_fenced_out_writer_lands_nothing_and_reads_the_holders_row(job_id: str) -> None:
    assert fast(job_id, "host-a/run:task-1", lease_s=0.2) is not None
    time.sleep(0.3)
    assert fast(job_id, "host-b/run:task-2") is not None
    late = store.finish_attempt(
        job_id, 0, worker="host-a/run:task-1", ending=succeed, tier="local_fast", **passed(0.7)
    )
    assert not late.landed and not late.ended and late.attempt is not None
    assert late.attempt.status == AttemptStatus.RUNNING.value
    assert late.attempt.worker == "host-b/run:task-2" and float(late.attempt.cost_usd) == 0
    assert store.job_status(job_id) == JobStatus.RUNNING.value


def test_an_outcome_that_does_not_end_the_job_leaves_it_open(job_id: str) -> None:
    assert fast(job_id, "host-a/run:task-1") is not None
    rejected = {**passed(0.2), "status": AttemptStatus.REJECTED.value, "error_kind": "quality"}
    done = store.finish_attempt(
        job_id, 0, worker="host-a/run:task-1", ending=succeed, tier="local_fast", **rejected
    )
    assert done.landed and not done.ended and done.result is None
    assert store.job_status(job_id) == JobStatus.RUNNING.value
    # the next attempt passes: the job's cost is both attempts', its story both rows
    owned = fast(job_id, "host-a/run:task-7", attempt_no=1, step=1)
    assert owned is not None
    done = store.finish_attempt(
        job_id, 1, worker="host-a/run:task-7", ending=succeed, tier="local_quality", **passed(0.5)
    )
    assert done.ended and done.result is not None
    assert [a.attempt_no for a in done.result.attempts] == [0, 1]
    assert done.result.cost_usd == pytest.approx(0.7)


def test_an_outcome_for_a_job_that_ended_meanwhile_lands_but_ends_nothing(job_id: str) -> None:
    assert fast(job_id, "host-a/run:task-1") is not None
    assert store.finalize_job(job_id, JobStatus.CANCELLED, error="its batch was cancelled")
    done = store.finish_attempt(
        job_id, 0, worker="host-a/run:task-1", ending=succeed, tier="local_fast", **passed(0.5)
    )
    assert done.landed and done.ended and done.result is None
    job = store.load_job(job_id)
    assert job is not None and job.status == JobStatus.CANCELLED.value and job.text is None


def test_the_plan_is_saved_once_and_never_over_a_cancel(database: str) -> None:
    job_id = new_job(routed=False)
    config = get_settings().llm
    with routing(job_id) as (job, _mode, save):
        assert job is not None
        plan = plan_job(job.action_type, job.prompt, job.context, config, get_mode())
        store.finalize_job(job_id, JobStatus.CANCELLED, error="cancelled between read and save")
        assert not save(plan.complexity.value, plan.to_json())
    with routing(job_id) as (job, _mode, _save):
        assert job is not None and job.status == JobStatus.CANCELLED.value and job.plan is None


def test_driver_errors_are_sqlalchemys_and_a_lost_connection_recovers(database: str) -> None:
    job_id = new_job()
    dup = rows.statement(
        "INSERT INTO attempts (job_id, attempt_no, step, tier, status, input_tokens,"
        " output_tokens, cost_usd, fake) VALUES (:job, 0, 0, 'local_fast', 'running', 0, 0, 0,"
        " false)"
    )
    rows.run_one(dup, {"job": job_id})
    with pytest.raises(sqlalchemy.exc.IntegrityError):
        rows.run_one(dup, {"job": job_id})
    # a connection killed under a statement: an OperationalError (the tasks retry those)
    marker = f"one-statement-{uuid.uuid4().hex[:8]}"
    sleeper = rows.statement(f"SELECT pg_sleep(5), '{marker}'")
    raised: list[BaseException] = []

    def run() -> None:
        try:
            rows.run_one(sleeper, {})
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    admin = psycopg.connect(database.replace("postgresql+psycopg://", "postgresql://"),
                            autocommit=True)  # fmt: skip
    try:
        for _ in range(100):
            killed = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE query LIKE %s AND pid <> pg_backend_pid()",
                (f"%{marker}%",),
            ).fetchall()
            if killed:
                break
            time.sleep(0.05)
    finally:
        admin.close()
    thread.join(10)
    assert len(raised) == 1 and isinstance(raised[0], sqlalchemy.exc.OperationalError)
    assert raised[0].connection_invalidated
    # the pool gave that connection up: the next statement runs
    found = rows.run_one(rows.statement("SELECT count(*) FROM attempts WHERE job_id = :j"),
                         {"j": job_id})  # fmt: skip
    assert found == (1,)
    with session_scope() as session:  # and sessions on the same pool are unaffected
        n = session.execute(select(func.count()).select_from(Attempt)).scalar_one()
        assert n >= 1
    store.finalize_job(job_id, JobStatus.FAILED, error="test fixture, never run")


# -- the route from the message's facts -------------------------------------------------------


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """The attempts the routing task sends, recorded instead of sent (no worker consumes here)."""
    from workers import tasks

    calls: list[tuple[Any, ...]] = []
    monkeypatch.setattr(tasks, "enqueue_attempt", lambda *a, **k: calls.append((a, k)))
    return calls


def statements_during(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    seen: list[str] = []
    run_one = rows.run_one

    def counted(stmt: rows.Statement, params: Any) -> Any:
        seen.append(" ".join(stmt.sql.split())[:40])
        return run_one(stmt, params)

    monkeypatch.setattr(rows, "run_one", counted)
    return seen


def facts_of(job_id: str) -> Any:
    from router.dispatch import route_facts
    from workers.tasks import check_route_facts

    job = store.load_job(job_id)
    assert job is not None
    return check_route_facts(route_facts(job.action_type, job.prompt, job.context, job.priority))


def test_a_route_from_the_facts_is_one_statement_and_stores_the_plan_a_read_makes(
    database: str, sent: list[tuple[Any, ...]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from workers import tasks

    read, told = new_job(routed=False), new_job(routed=False)
    assert tasks._route(read) is not None  # reads the job and the mode: the process learns it
    facts = facts_of(told)
    statements = statements_during(monkeypatch)
    assert tasks._route_from_facts(told, facts) == "local_fast"
    assert len(statements) == 1 and statements[0].startswith("UPDATE jobs"), statements
    a, b = store.load_job(read), store.load_job(told)
    assert a is not None and b is not None
    assert b.status == a.status == JobStatus.ROUTED.value
    assert b.plan == a.plan and b.complexity == a.complexity
    fast = tasks.Tier.LOCAL_FAST
    assert [c[0][:2] for c in sent] == [(read, fast), (told, fast)]
    # a redelivery of the same message stores nothing and sends nothing: the job is routed
    assert tasks._route_from_facts(told, facts) is None
    assert len(sent) == 2
    for job_id in (read, told):
        store.finalize_job(job_id, JobStatus.FAILED, error="test, never run")


def test_a_plan_made_for_a_mode_that_is_not_the_fleets_is_refused_and_the_read_plans_again(
    database: str, sent: list[tuple[Any, ...]]
) -> None:
    from workers import tasks

    job_id = new_job(routed=False)
    current = last_switched_to()
    tasks._seen_mode.last = "cloud" if current != "cloud" else "local"  # a stale guess
    assert tasks._route_from_facts(job_id, facts_of(job_id)) is None
    job = store.load_job(job_id)
    assert job is not None and job.status == JobStatus.QUEUED.value and job.plan is None
    assert sent == []
    tasks._seen_mode.last = tasks._SeenMode.UNKNOWN  # a new process: no guess, no try
    assert tasks._route_from_facts(job_id, facts_of(job_id)) is None and sent == []
    assert tasks._route(job_id) == "local_fast"  # the read: the plan for the real mode
    assert tasks._seen_mode.last == current
    job = store.load_job(job_id)
    assert job is not None and job.plan is not None and job.plan["mode"] == get_mode().value
    store.finalize_job(job_id, JobStatus.FAILED, error="test, never run")


def test_facts_that_are_not_as_submit_job_makes_them_are_never_used() -> None:
    from router.dispatch import FACTS_MAX_CHARS, route_facts
    from workers.tasks import check_route_facts

    good = route_facts("extract_topic", "Extract topic from: 'x'", {"k": 1}, 5)
    assert check_route_facts(good) is not None
    assert route_facts("a", "p" * (FACTS_MAX_CHARS + 1), {}, 5) is None  # read, not carried
    assert route_facts("a", "p", {"big": "x" * FACTS_MAX_CHARS}, 5) is None
    for bad in (
        None, [], "facts", {**(good or {}), "priority": True}, {**(good or {}), "priority": 10},
        {**(good or {}), "context": []}, {**(good or {}), "prompt": 3},
        {k: v for k, v in (good or {}).items() if k != "action"},
        {**(good or {}), "prompt": "p" * (FACTS_MAX_CHARS + 1)},
    ):  # fmt: skip
        assert check_route_facts(bad) is None, bad


def test_a_statement_for_one_job_finds_it_by_key_however_many_share_its_status(
    database: str,
) -> None:
    """With a fresh table's statistics PostgreSQL tied the status index with the key and took
    it: each route of a 600-job backlog read all 600 queued jobs. Here a fresh ``jobs`` (a
    temporary table of the same shape, which the statements then find first) holds 300 jobs in
    each status the statements look for; each statement must reach its job by key alone."""
    from tierflow.store.attempts import _CLAIM_SQL
    from tierflow.store.jobs import _SAVE_PLAN_FOR_MODE_SQL, _SAVE_PLAN_SQL

    url = get_settings().sqlalchemy_url.replace("+psycopg", "")
    target = str(uuid.uuid4())
    params: dict[str, Any] = {"id": target, "job_id": target, "complexity": "simple",
        "plan": {"chain": ["local_fast"]}, "mode": None,
        "attempt_no": 0, "step": 0, "worker": "w/r:t", "retry": 0, "lease_s": 30.0,
        "same_task": "%:t", "now": utcnow()}  # fmt: skip
    with psycopg.connect(url) as conn:  # one transaction, rolled back
        conn.execute("CREATE TEMP TABLE jobs (LIKE public.jobs INCLUDING ALL)")
        seed = new_job(routed=False)  # the template row: every column as the store writes it
        names = [c.name for c in rows.JOB_COLUMNS]
        copied = {"id": "gen_random_uuid()::text", "idempotency_key": "NULL", "status": "s"}
        conn.execute(
            f"INSERT INTO jobs ({', '.join(names)})"
            f" SELECT {', '.join(copied.get(n, 't.' + n) for n in names)}"
            " FROM public.jobs t, generate_series(1, 300), unnest(ARRAY['queued', 'routed']) s"
            " WHERE t.id = %(seed)s",
            {"seed": seed},
        )
        for name, stmt in (("save_plan", _SAVE_PLAN_SQL[False]),
                           ("save_plan_for_mode", _SAVE_PLAN_FOR_MODE_SQL),
                           ("claim", _CLAIM_SQL)):  # fmt: skip
            plan = "\n".join(
                row[0] for row in conn.execute("EXPLAIN " + stmt.sql, stmt.bind(params))
            )
            on_jobs = [line for line in plan.splitlines() if "Scan" in line and " on jobs" in line]
            assert on_jobs and all("pkey" in line for line in on_jobs), f"{name}:\n{plan}"
        conn.rollback()


def test_no_index_of_jobs_holds_a_column_the_route_or_the_claim_writes(database: str) -> None:
    """The route's and the claim's updates of a job change only columns no index of ``jobs``
    holds (in its key or its predicate), so PostgreSQL can write them in place (HOT), with no
    index entry (migration 0011). The columns are read from the statements themselves."""
    from tierflow.store.attempts import _CLAIM_SQL
    from tierflow.store.jobs import _SAVE_PLAN_FOR_MODE_SQL, _SAVE_PLAN_SQL

    written: set[str] = set()
    for stmt in (_SAVE_PLAN_SQL[False], _SAVE_PLAN_SQL[True], _SAVE_PLAN_FOR_MODE_SQL, _CLAIM_SQL):
        found = re.findall(r"UPDATE jobs SET (.*?)(?:\s+FROM\s|\s+WHERE\s)", stmt.sql, re.S)
        assert found, stmt.sql
        for sets in found:
            written.update(re.findall(r"(\w+)\s*=", sets))
    assert {"status", "updated_at", "plan"} <= written
    url = get_settings().sqlalchemy_url.replace("+psycopg", "")
    with psycopg.connect(url) as conn:
        indexes = conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes"
            " WHERE schemaname = 'public' AND tablename = 'jobs'"
        ).fetchall()
    assert {name for name, _ in indexes} >= {"jobs_pkey", "ix_jobs_open"}
    for name, definition in indexes:
        held = {column for column in written if re.search(rf"\b{column}\b", definition)}
        assert not held, f"{name} holds {sorted(held)}: {definition}"


def test_the_sweeps_read_the_open_jobs_from_their_index_not_the_table(database: str) -> None:
    """The expiry sweep's and the stalled-job sweep's queries, as the store sends them, planned
    over a ``jobs`` of 3,000 finished jobs and 3 open ones (a temporary table of the same shape
    and indexes): each reads ``ix_jobs_open``'s few entries, never every row of the table."""
    from sqlalchemy import event

    from tierflow.core.db import get_engine
    from tierflow.store.sweeps import stalled_jobs

    sent: list[tuple[str, Any]] = []

    def keep(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "FROM jobs" in statement:
            sent.append((statement, parameters))

    engine = get_engine()
    event.listen(engine, "before_cursor_execute", keep)
    try:
        store.open_jobs_past(utcnow())
        stalled_jobs(120.0)
    finally:
        event.remove(engine, "before_cursor_execute", keep)
    assert len(sent) == 2, sent
    url = get_settings().sqlalchemy_url.replace("+psycopg", "")
    seed = new_job(routed=False)
    names = [c.name for c in rows.JOB_COLUMNS]
    with psycopg.connect(url) as conn:  # one transaction, rolled back
        conn.execute("CREATE TEMP TABLE jobs (LIKE public.jobs INCLUDING ALL)")
        for finished, count in ((True, 3000), (False, 3)):
            copied = {"id": "gen_random_uuid()::text", "idempotency_key": "NULL"}
            if finished:
                copied.update(status="'succeeded'", finished_at="now()")
            conn.execute(
                f"INSERT INTO jobs ({', '.join(names)})"
                f" SELECT {', '.join(copied.get(n, 't.' + n) for n in names)}"
                f" FROM public.jobs t, generate_series(1, {count}) WHERE t.id = %(seed)s",
                {"seed": seed},
            )
        conn.execute("ANALYZE jobs")
        for statement, parameters in sent:
            plan = "\n".join(row[0] for row in conn.execute("EXPLAIN " + statement, parameters))
            assert "Seq Scan on jobs" not in plan, plan
            assert "Index Scan using jobs_deadline_idx on jobs" in plan, plan
        conn.rollback()
