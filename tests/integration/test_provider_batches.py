"""The providers' Batch APIs on real Redis, PostgreSQL and worker processes, against local
servers that follow OpenAI's Batch and Anthropic's Message Batches wire formats
(:mod:`tests.support.batch_providers`), driven by the official SDKs.

The two beat ticks (submit, poll) are sent by hand here, as an operator may send a sweep, so a
test decides when requests are grouped; everything else runs in the workers.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import select

from router.batch import BatchHandle, submit_batch
from schemas.tables import Job, ProviderBatchItem
from tests.support.batch_providers import AnthropicBatchServer, OpenAIBatchServer
from tests.support.services import fleet_config
from tierflow import store
from tierflow.core.celery_app import app
from tierflow.core.constants import (
    MAINTENANCE_QUEUE,
    TASK_POLL_PROVIDER_BATCHES,
    TASK_RESUME_ATTEMPT,
    TASK_SUBMIT_PROVIDER_BATCHES,
)
from tierflow.core.db import session_scope
from tierflow.core.settings import get_settings
from tierflow.store import provider_batches
from tierflow.store.provider_batches import custom_id_for
from workers.provider_batch.poll import poll_one

# One test of this module runs in the fast lane (pytest -m "not slow", README); the
# others carry the slow mark.
pytestmark = [pytest.mark.integration]

KEYS = {"TF_TEST_OPENAI_KEY": "sk-test-notreal-000000", "TF_TEST_ANT_KEY": "sk-ant-notreal-1111"}
DAY = 24 * 3600
NOTES = [
    "We chose PostgreSQL over MySQL for the job store",
    "The staging cluster runs in eu-west-1",
    "We decided to drop Python 3.10 support in March",
    "Redis keeps its data in memory",
    "The team agreed to review every migration twice",
    "The dashboard listens on port 8080",
]
TRACES = [
    ("KeyError: 'user_id'", "load_profile", "api/users.py", 42),
    ("ZeroDivisionError: division by zero", "average_latency", "metrics/report.py", 17),
    ("RecursionError: maximum recursion depth exceeded", "retry", "client/http.py", 88),
    (
        "AttributeError: 'NoneType' object has no attribute 'id'",
        "save_order",
        "shop/orders.py",
        130,
    ),
]
DECISION = re.compile(r"\b(chose|decided|agreed|will)\b", re.IGNORECASE)
TRACE = re.compile(r"stack trace: (\w+): (.*) in (\w+)\(\) at ([\w/.]+):(\d+)")


def respond(prompt: str) -> str:
    """What a capable model answers to these prompts: a category, or a diagnosis."""
    note = re.search(r"'(.*)'", prompt)
    if prompt.startswith("Is this a decision or a fact?") and note:
        category = "decision" if DECISION.search(note.group(1)) else "fact"
        return json.dumps({"category": category})
    trace = TRACE.search(prompt)
    if trace:
        error, detail, func, path, line = trace.groups()
        return (
            f"The {error} is raised in {func}() at {path} line {line}: {detail}. The function "
            f"assumes its input is always complete; check the value before using it in {func}() "
            "and return a clear error to the caller instead of letting the exception escape."
        )
    return "I need the full stack trace to say where the error comes from."


def specs(count: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for i in range(count):
        if i % 2 == 0:
            note = NOTES[(i // 2) % len(NOTES)]
            rows.append({"prompt": f"Is this a decision or a fact? '{note} (#{i})'",
                         "action_type": "classify_memory"})  # fmt: skip
        else:
            error, func, path, line = TRACES[(i // 2) % len(TRACES)]
            rows.append({"prompt": f"Analyze this stack trace: {error} in {func}() at "
                                   f"{path}:{line + i}", "action_type": "debug_error"})  # fmt: skip
    return rows


def api_entry(name: str, srv: Any, provider: str, key_env: str, price_in: float,
              price_out: float) -> dict[str, Any]:  # fmt: skip
    return {
        "name": name, "provider": provider, "model_id": f"{provider}-batch-model",
        "base_url": srv.url, "api_key_env": key_env, "input_cost_per_million": price_in,
        "output_cost_per_million": price_out, "timeout_s": 5, "max_tokens": 256,
    }  # fmt: skip


def config_for(*api: dict[str, Any]) -> dict[str, Any]:
    config = fleet_config(
        api_fallback=list(api), action_tier_overrides={"classify_memory": "api_fallback"}
    )
    config["provider_batches"] = {"collect_s": 0, "poll_s": 0}
    return config


def jobs_of(batch_id: str) -> list[Job]:
    with session_scope() as session:
        return list(
            session.execute(
                select(Job).where(Job.batch_id == batch_id).order_by(Job.batch_line)
            ).scalars()
        )


def items_of(jobs: list[Job], state: str | None = None) -> list[ProviderBatchItem]:
    ids = [j.id for j in jobs]
    query = select(ProviderBatchItem).where(ProviderBatchItem.job_id.in_(ids))
    if state is not None:
        query = query.where(ProviderBatchItem.state == state)
    with session_scope() as session:
        return list(session.execute(query.order_by(ProviderBatchItem.id)).scalars())


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def tick(task: str) -> None:
    app.send_task(task, queue=MAINTENANCE_QUEUE)


def drive(handle: BatchHandle, timeout: float = 90.0) -> dict[str, Any]:
    """Send submit and poll ticks (as beat would, faster) until every job of the batch ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tick(TASK_SUBMIT_PROVIDER_BATCHES)
        time.sleep(0.4)
        tick(TASK_POLL_PROVIDER_BATCHES)
        time.sleep(0.4)
        found = handle.progress()
        if found["jobs"] and found["finished"] >= found["jobs"]:
            return found
    raise AssertionError(f"batch not finished: {handle.progress()['statuses']}")


def deferred_all(jobs: list[Job]) -> None:
    wait_for(lambda: len(items_of(jobs, "pending")) == len(jobs), 60, "every job deferred")


def openai_usage(srv: OpenAIBatchServer, custom_id: str) -> tuple[int, int]:
    for state in srv.created:
        kind, body = state.outcomes.get(custom_id, ("", None))
        if kind == "succeeded":
            return body["usage"]["prompt_tokens"], body["usage"]["completion_tokens"]
    raise AssertionError(f"no answer for {custom_id}")


def anthropic_usage(srv: AnthropicBatchServer, custom_id: str) -> tuple[int, int]:
    for state in srv.created:
        kind, body = state.outcomes.get(custom_id, ("", None))
        if kind == "succeeded":
            return body["usage"]["input_tokens"], body["usage"]["output_tokens"]
    raise AssertionError(f"no answer for {custom_id}")


def test_openai_batch_serves_the_api_tier_at_the_batch_price(fleet) -> None:
    with OpenAIBatchServer(respond) as oai:
        workers = fleet(
            config_for(api_entry("gpt", oai, "openai", "TF_TEST_OPENAI_KEY", 2.5, 10.0)),
            env=KEYS, concurrency=4,
        )  # fmt: skip
        done = submit_batch(iter(specs(20)), name="pb-openai", deadline_s=DAY, provider_batch=True)
        jobs = jobs_of(done.batch_id)
        deferred_all(jobs)
        # Waiting for its provider batch: no model called, no job seen as stalled by the sweeper.
        assert not oai.requests_to("POST", r"/v1/chat/completions")
        stalled = {j.id for j in store.stalled_jobs(0.0, 10_000)}
        assert not stalled & {j.id for j in jobs}
        tick(TASK_SUBMIT_PROVIDER_BATCHES)
        wait_for(lambda: oai.created, 30, "the provider batch")
        handle = BatchHandle(done.batch_id)
        final = drive(handle)
        assert final["statuses"] == {"succeeded": 20}
        assert len(oai.created) == 1 and len(oai.created[0].requests) == 20
        assert sorted(oai.created[0].custom_ids) == sorted(custom_id_for(j.id, 0) for j in jobs)
        assert len(oai.requests_to("POST", r"/v1/files")) == 1
        assert len(oai.requests_to("POST", r"/v1/batches")) == 1
        assert len(oai.requests_to("GET", r"/v1/files/[^/]+/content")) == 1  # output only
        assert not oai.requests_to("POST", r"/v1/chat/completions")
        total = 0.0
        for job in jobs_of(done.batch_id):
            (attempt,) = store.attempts_of(job.id)  # exactly one attempt per call
            assert (attempt.tier, attempt.model, attempt.status) == (
                "api_fallback",
                "gpt",
                "passed",
            )
            tokens_in, tokens_out = openai_usage(oai, custom_id_for(job.id, 0))
            assert (attempt.input_tokens, attempt.output_tokens) == (tokens_in, tokens_out)
            batch_price = (tokens_in * 2.5 + tokens_out * 10.0) / 1e6 * 0.5
            assert float(attempt.cost_usd) == pytest.approx(batch_price)
            assert float(job.cost_usd) == pytest.approx(batch_price)
            if job.action_type == "classify_memory":
                assert json.loads(job.text or "")["category"] in ("decision", "fact")
            total += batch_price
        assert final["cost_usd"] == pytest.approx(total)
        (row,) = [b for b in provider_batches.provider_batches_of("openai")
                  if b.remote_id == oai.created[0].id]  # fmt: skip
        assert (row.status, row.remote_status, row.requests) == ("ended", "completed", 20)
        assert row.request_counts == {"total": 20, "completed": 20, "failed": 0}

        # A resume delivered again (twice, for five jobs): no second result or charge.
        costs = {j.id: float(j.cost_usd) for j in jobs_of(done.batch_id)}
        resumes = re.compile(r"tierflow\.resume_attempt\[[^\]]+\] succeeded")
        before = len(resumes.findall(workers[0].output()))
        for job in jobs[:5]:
            for _ in range(2):
                app.send_task(TASK_RESUME_ATTEMPT, args=[job.id, 0], queue="tier.api_fallback")
        wait_for(lambda: len(resumes.findall(workers[0].output())) >= before + 10, 30, "resumes")
        for job in jobs_of(done.batch_id):
            assert len(store.attempts_of(job.id)) == 1
            assert not store.superseded_calls_of(job.id)
            assert job.status == "succeeded" and float(job.cost_usd) == costs[job.id]
        assert BatchHandle(done.batch_id).progress()["cost_usd"] == pytest.approx(total)


@pytest.mark.slow
def test_anthropic_batch_per_request_errors_a_retry_and_a_poller_crash(fleet) -> None:
    with AnthropicBatchServer(respond) as ant:
        fleet(
            config_for(api_entry("claude", ant, "anthropic", "TF_TEST_ANT_KEY", 3.0, 15.0)),
            env=KEYS, concurrency=4,
        )  # fmt: skip
        done = submit_batch(iter(specs(12)), name="pb-anthropic", deadline_s=DAY,
                            provider_batch=True)  # fmt: skip
        jobs = jobs_of(done.batch_id)
        deferred_all(jobs)
        too_big = "max_tokens: 100000 > 8192, which is the maximum allowed for this model"
        bad, flaky = jobs[:3], jobs[3]
        ant.fail = {custom_id_for(j.id, 0): (400, "invalid_request_error", too_big) for j in bad}
        ant.fail[custom_id_for(flaky.id, 0)] = (500, "api_error", "Internal server error")
        tick(TASK_SUBMIT_PROVIDER_BATCHES)
        wait_for(lambda: ant.created, 30, "the provider batch")
        assert len(ant.created[0].requests) == 12
        sent = ant.created[0].requests[0]["params"]
        assert sent["model"] == "anthropic-batch-model" and sent["max_tokens"] == 256

        # The poller dies after storing the results and before sending any resume.
        (row,) = wait_for(lambda: [b for b in provider_batches.provider_batches_of("anthropic")
                                   if b.remote_id == ant.created[0].id], 30, "its row")  # fmt: skip
        config = get_settings().llm
        polled = wait_for(lambda: (p := poll_one(row, config)).ended and p, 30, "the batch end")
        provider_batches.store_results(
            row.id, polled.found, polled.missing, polled.status, polled.counts
        )
        assert {i.state for i in items_of(jobs)} == {"done"}
        assert all(j.status == "running" for j in jobs_of(done.batch_id))

        final = drive(BatchHandle(done.batch_id))  # the next tick sends the resumes
        assert final["statuses"] == {"succeeded": 9, "failed": 3}
        by_id = {j.id: j for j in jobs_of(done.batch_id)}
        for job in bad:
            (attempt,) = store.attempts_of(job.id)
            assert (attempt.status, attempt.error_kind) == ("error", "invalid_request")
            assert by_id[job.id].status == "failed" and too_big in (by_id[job.id].error or "")
            assert float(by_id[job.id].cost_usd) == 0.0
        # A 5xx inside the batch is retried in the tier: through a second provider batch.
        first, second = store.attempts_of(flaky.id)
        assert (first.status, first.error_kind, second.status) == (
            "error",
            "server_error",
            "passed",
        )
        assert len(ant.created) == 2
        assert ant.created[1].custom_ids == [custom_id_for(flaky.id, 1)]
        tokens_in, tokens_out = anthropic_usage(ant, custom_id_for(flaky.id, 1))
        price = (tokens_in * 3.0 + tokens_out * 15.0) / 1e6 * 0.5
        assert float(by_id[flaky.id].cost_usd) == pytest.approx(price)
        for job in jobs[4:]:
            (attempt,) = store.attempts_of(job.id)
            assert attempt.status == "passed"
            if job.action_type == "classify_memory":  # the JSON prefill "{" is put back
                assert json.loads(by_id[job.id].text or "")["category"] in ("decision", "fact")
        assert not ant.requests_to("POST", r"/v1/messages")


@pytest.mark.slow
def test_an_expired_openai_batch_keeps_its_partial_results(fleet) -> None:
    with OpenAIBatchServer(respond) as oai:
        oai.expire, oai.run_before_end = True, 4
        fleet(config_for(api_entry("gpt", oai, "openai", "TF_TEST_OPENAI_KEY", 2.5, 10.0)),
              env=KEYS, concurrency=4)  # fmt: skip
        done = submit_batch(iter(specs(10)), name="pb-expired", deadline_s=DAY,
                            provider_batch=True)  # fmt: skip
        jobs = jobs_of(done.batch_id)
        deferred_all(jobs)
        tick(TASK_SUBMIT_PROVIDER_BATCHES)
        wait_for(lambda: oai.created, 30, "the provider batch")
        final = drive(BatchHandle(done.batch_id))
        assert final["statuses"] == {"succeeded": 4, "failed": 6}
        ran = set(oai.created[0].custom_ids[:4])
        for job in jobs_of(done.batch_id):
            (attempt,) = store.attempts_of(job.id)
            if custom_id_for(job.id, 0) in ran:
                assert (job.status, attempt.status) == ("succeeded", "passed")
                assert float(attempt.cost_usd) > 0
            else:
                assert (attempt.status, attempt.error_kind) == ("error", "expired")
                assert job.status == "failed" and "expired" in (job.error or "")
                assert float(job.cost_usd) == 0.0
        (row,) = [b for b in provider_batches.provider_batches_of("openai")
                  if b.remote_id == oai.created[0].id]  # fmt: skip
        assert row.remote_status == "expired"
        assert row.request_counts == {"total": 10, "completed": 4, "failed": 6}


@pytest.mark.slow
def test_cancel_ends_jobs_waiting_for_a_provider_batch_and_cancels_it(fleet) -> None:
    with OpenAIBatchServer(respond, delay_s=3600) as oai:
        oai.run_before_end = 2  # two requests had run when the cancel reached the provider
        fleet(config_for(api_entry("gpt", oai, "openai", "TF_TEST_OPENAI_KEY", 2.5, 10.0)),
              env=KEYS, concurrency=4)  # fmt: skip
        done = submit_batch(iter(specs(8)), name="pb-cancel", deadline_s=DAY, provider_batch=True)
        jobs = jobs_of(done.batch_id)
        deferred_all(jobs)
        tick(TASK_SUBMIT_PROVIDER_BATCHES)
        wait_for(lambda: oai.created, 30, "the provider batch")
        handle = BatchHandle(done.batch_id)
        assert handle.cancel() == 8
        assert handle.progress()["state"] == "cancelled"
        for job in jobs_of(done.batch_id):
            (attempt,) = store.attempts_of(job.id)
            assert job.status == "cancelled"
            assert (attempt.status, attempt.error_kind) == ("error", "cancelled")

        def cancel_sent() -> bool:  # a poll tick every 0.5 s, as beat would send them
            tick(TASK_POLL_PROVIDER_BATCHES)
            time.sleep(0.5)
            return bool(oai.requests_to("POST", r"/v1/batches/[^/]+/cancel"))

        wait_for(cancel_sent, 30, "the cancel")

        def ended() -> bool:
            tick(TASK_POLL_PROVIDER_BATCHES)
            time.sleep(0.3)
            return all(b.status == "ended" for b in provider_batches.provider_batches_of("openai")
                       if b.remote_id == oai.created[0].id)  # fmt: skip

        wait_for(ended, 30, "the cancelled batch's end")
        ran = oai.created[0].custom_ids[:2]
        late = [j for j in jobs if custom_id_for(j.id, 0) in ran]
        for job in jobs_of(done.batch_id):
            (attempt,) = store.attempts_of(job.id)  # no resume ran: the jobs had ended
            assert job.status == "cancelled" and attempt.error_kind == "cancelled"
        for job in late:  # what the provider charged for the two answers is kept, once
            (call,) = store.superseded_calls_of(job.id)
            tokens_in, tokens_out = openai_usage(oai, custom_id_for(job.id, 0))
            price = (tokens_in * 2.5 + tokens_out * 10.0) / 1e6 * 0.5
            assert call.status == "late_result" and float(call.cost_usd) == pytest.approx(price)
        assert not oai.requests_to("POST", r"/v1/chat/completions")
