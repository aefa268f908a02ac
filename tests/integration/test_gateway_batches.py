"""OpenAI's Batch API at ``tierflow serve``, through the official ``openai`` SDK over HTTP
(``files.create``, ``batches.create``/``retrieve``/``list``/``cancel``, ``files.content``),
against real Celery workers on fake backends, real Redis and PostgreSQL (the fleet and gateway
fixtures of :mod:`tests.integration.test_gateway`)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import openai
import pytest
from sqlalchemy import func, select

from schemas.tables import GatewayBatch, Job
from tests.integration.test_gateway import gateway, start_gateway  # noqa: F401  (a fixture)
from tests.support.services import fake_model, fleet_config
from tierflow import store
from tierflow.core.constants import BATCH_PRIORITY
from tierflow.core.db import session_scope

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ENDED = ("completed", "failed", "expired", "cancelled")


def chat_line(custom_id: str, text: str, model: str = "auto") -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": model, "messages": [{"role": "user", "content": text}]},
    }


def jsonl(lines: list[Any]) -> bytes:
    return "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines).encode()


def jobs_stored() -> int:
    with session_scope() as session:
        return int(session.execute(select(func.count()).select_from(Job)).scalar_one())


def wait_ended(client: openai.OpenAI, batch_id: str, timeout: float = 90.0) -> Any:
    deadline = time.monotonic() + timeout
    batch = client.batches.retrieve(batch_id)
    while batch.status not in ENDED:
        assert time.monotonic() < deadline, f"batch still {batch.status}: {batch}"
        time.sleep(0.3)
        batch = client.batches.retrieve(batch_id)
    return batch


def upload(client: openai.OpenAI, data: bytes) -> Any:
    return client.files.create(file=("requests.jsonl", data), purpose="batch")


def test_a_batch_file_runs_as_jobs_and_answers_by_custom_id(gateway: Any) -> None:  # noqa: F811
    gw = gateway(fleet_config())
    _, key = store.create_key("batcher-a")
    _, other_key = store.create_key("batcher-b")
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)
    other = openai.OpenAI(base_url=gw.url + "/v1", api_key=other_key, max_retries=0)
    lines = [chat_line(f"req-{i}", f"Summarize: batch line {i}") for i in range(5)]
    lines.append(
        chat_line(
            "classify", "Is this a decision or a fact? 'we use PG'", "tierflow/classify_memory"
        )
    )
    data = jsonl(lines)

    uploaded = upload(client, data)
    assert uploaded.purpose == "batch" and uploaded.bytes == len(data)
    assert client.files.retrieve(uploaded.id).filename == "requests.jsonl"
    assert client.files.content(uploaded.id).content == data

    created = client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"run": "sdk-test"},
    )
    assert created.object == "batch" and created.status == "in_progress"
    assert created.request_counts is not None and created.request_counts.total == 6
    assert created.metadata == {"run": "sdk-test"} and created.input_file_id == uploaded.id

    batch = wait_ended(client, created.id)
    assert batch.status == "completed", batch
    assert batch.request_counts is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (6, 0)
    assert batch.completed_at is not None and batch.error_file_id is None
    assert batch.output_file_id is not None

    output = [json.loads(x) for x in client.files.content(batch.output_file_id).text.splitlines()]
    assert sorted(o["custom_id"] for o in output) == sorted(x["custom_id"] for x in lines)
    for line in output:
        assert line["error"] is None and line["response"]["status_code"] == 200
        result = store.job_result(line["response"]["request_id"])
        assert result is not None and result.status == "succeeded"
        body = line["response"]["body"]
        assert body["object"] == "chat.completion"
        assert body["choices"][0]["message"]["content"] == result.text
        assert body["usage"]["completion_tokens"] == result.output_tokens > 0
        job = store.load_job(result.job_id)
        assert job is not None and job.batch_id is not None and job.priority == BATCH_PRIORITY
        assert job.job_metadata["daemon"] == "batcher-a"
        assert job.job_metadata["custom_id"] == line["custom_id"]
        expected_action = "classify_memory" if line["custom_id"] == "classify" else "unknown"
        assert job.action_type == expected_action
    classified = next(o for o in output if o["custom_id"] == "classify")
    assert json.loads(classified["response"]["body"]["choices"][0]["message"]["content"])

    listed = client.batches.list(limit=10)
    assert [b.id for b in listed.data] == [created.id]

    # another daemon sees none of it
    for call in (
        lambda: other.batches.retrieve(created.id),
        lambda: other.batches.cancel(created.id),
        lambda: other.files.retrieve(uploaded.id),
        lambda: other.files.content(uploaded.id),
        lambda: other.files.content(batch.output_file_id),
        lambda: other.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        ),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    assert other.batches.list().data == []
    # an ended batch is not cancelled again
    with pytest.raises(openai.ConflictError):
        client.batches.cancel(created.id)
    # files are kept until deleted, by their daemon only
    with pytest.raises(openai.NotFoundError):
        other.files.delete(uploaded.id)
    assert client.files.delete(uploaded.id).deleted is True
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(uploaded.id)


def test_a_bad_file_is_refused_with_its_line_numbers_and_stores_no_job(
    gateway: Any,  # noqa: F811
) -> None:
    gw = gateway(fleet_config())
    _, key = store.create_key("batcher-a")
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)
    good = chat_line("a", "Summarize: fine")
    no_id = {k: v for k, v in chat_line("x", "Summarize: no id").items() if k != "custom_id"}
    data = jsonl(
        [
            good,
            "{not json",
            no_id,
            chat_line("a", "Summarize: the same id again"),
            {**chat_line("u", "Summarize: wrong url"), "url": "/v1/embeddings"},
            {**chat_line("m", "Summarize: wrong method"), "method": "GET"},
            {**chat_line("b", "x"), "body": {"model": "auto", "messages": []}},
            chat_line("n", "Summarize: unknown model", "gpt-4o"),
        ]
    )
    before = jobs_stored()
    batch = client.batches.create(
        input_file_id=upload(client, data).id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    assert batch.status == "failed" and batch.failed_at is not None
    assert batch.errors is not None and batch.errors.data is not None
    found = [(e.line, e.code) for e in batch.errors.data]
    assert found == [
        (2, "invalid_json_line"),
        (3, "missing_custom_id"),
        (4, "duplicate_custom_id"),
        (5, "invalid_url"),
        (6, "invalid_method"),
        (7, "invalid_body"),
        (8, "invalid_body"),
    ]
    assert "messages" in (batch.errors.data[5].message or "")
    assert jobs_stored() == before
    assert store.get_batch(batch.id) is None  # no tierflow batch either
    assert client.batches.retrieve(batch.id).status == "failed"

    # what the endpoint itself refuses: another endpoint or window, a missing file
    with pytest.raises(openai.BadRequestError):
        client.batches.create(
            input_file_id="file-x", endpoint="/v1/embeddings", completion_window="24h"
        )
    with pytest.raises(openai.NotFoundError):
        client.batches.create(
            input_file_id="file-none", endpoint="/v1/chat/completions", completion_window="24h"
        )
    with pytest.raises(openai.BadRequestError):
        client.files.create(file=("x.jsonl", b"{}\n"), purpose="fine-tune")


def test_cancel_stops_the_unfinished_lines(gateway: Any) -> None:  # noqa: F811
    slow = [fake_model("slow-fast", latency_ms=300)]
    gw = gateway(
        fleet_config(local_fast=slow, local_quality=[fake_model("slow-q", latency_ms=300)])
    )
    _, key = store.create_key("batcher-a")
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)
    lines = [chat_line(f"c-{i}", f"Summarize: slow line {i}") for i in range(40)]
    batch = client.batches.create(
        input_file_id=upload(client, jsonl(lines)).id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    time.sleep(1.0)  # some lines run
    with pytest.raises(openai.ConflictError):  # an open batch's input is kept
        client.files.delete(batch.input_file_id)
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled")
    assert cancelling.cancelling_at is not None
    ended = wait_ended(client, batch.id)
    assert ended.status == "cancelled" and ended.cancelled_at is not None
    counts = ended.request_counts
    assert counts is not None and counts.total == 40 and counts.completed < 40
    assert ended.error_file_id is not None
    errors = [json.loads(x) for x in client.files.content(ended.error_file_id).text.splitlines()]
    cancelled = [e for e in errors if e["error"]["code"] == "batch_cancelled"]
    assert cancelled and all(e["response"] is None for e in cancelled)
    assert counts.failed == len(errors)
    tierflow_batch = store.get_batch(batch.id)
    assert tierflow_batch is not None and tierflow_batch.status == "cancelled"
    progress = store.batch_progress(tierflow_batch.id)
    assert progress["statuses"].get("cancelled", 0) == len(cancelled)
    assert progress["finished"] == progress["jobs"]  # nothing left running


def test_a_batch_whose_gateway_stopped_mid_way_is_resumed_by_the_next_one(
    gateway: Any,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The first gateway is stopped while its submitter waits on a window of 2 (lines of
    200 ms); a second gateway's first read of the batch resumes it: every line answered once."""
    slow = fleet_config(
        local_fast=[fake_model("slow-fast", latency_ms=200)],
        local_quality=[fake_model("slow-quality", latency_ms=200)],
    )
    first = gateway(slow, env={"TIERFLOW_BATCH_IN_FLIGHT": "2"})
    _, key = store.create_key("batcher-a")
    client = openai.OpenAI(base_url=first.url + "/v1", api_key=key, max_retries=0)
    lines = [chat_line(f"r-{i}", f"Summarize: resumed line {i}") for i in range(24)]
    batch = client.batches.create(
        input_file_id=upload(client, jsonl(lines)).id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    time.sleep(1.0)
    first.proc.terminate()
    first.proc.wait(timeout=10)
    with session_scope() as session:
        row = session.get(GatewayBatch, batch.id)
        assert row is not None and row.submitted_at is None and row.batch_id is not None
        tierflow_batch = row.batch_id
    stored = store.batch_progress(tierflow_batch)["jobs"]
    assert 0 < stored < len(lines)  # stopped mid-way

    second = start_gateway(tmp_path / "second.log")
    try:
        client = openai.OpenAI(base_url=second.url + "/v1", api_key=key, max_retries=0)
        ended = wait_ended(client, batch.id)
        assert ended.status == "completed" and ended.output_file_id is not None
        output_file = client.files.content(ended.output_file_id).text
    finally:
        second.proc.terminate()
        second.proc.wait(timeout=10)
    assert ended.request_counts is not None
    assert (ended.request_counts.completed, ended.request_counts.failed) == (len(lines), 0)
    output = [json.loads(x) for x in output_file.splitlines()]
    assert sorted(o["custom_id"] for o in output) == sorted(x["custom_id"] for x in lines)
    assert store.batch_progress(tierflow_batch)["jobs"] == len(lines)  # none stored twice


def test_lines_whose_jobs_fail_are_error_lines(gateway: Any) -> None:  # noqa: F811
    failing = {"failure_rate": 1.0, "failure": "auth"}
    gw = gateway(
        fleet_config(
            local_fast=[fake_model("f1", **failing)],
            local_quality=[fake_model("f2", **failing)],
            api_fallback=[fake_model("f3", input_cost_per_million=1.0, **failing)],
        )
    )
    _, key = store.create_key("batcher-c")
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)
    lines = [chat_line(f"f-{i}", f"Summarize: doomed line {i}") for i in range(3)]
    batch = client.batches.create(
        input_file_id=upload(client, jsonl(lines)).id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    ended = wait_ended(client, batch.id)
    assert ended.status == "completed" and ended.request_counts is not None
    assert (ended.request_counts.completed, ended.request_counts.failed) == (0, 3)
    assert ended.output_file_id is None and ended.error_file_id is not None
    errors = [json.loads(x) for x in client.files.content(ended.error_file_id).text.splitlines()]
    assert sorted(e["custom_id"] for e in errors) == ["f-0", "f-1", "f-2"]
    for line in errors:
        assert line["response"] is None and line["error"]["code"] == "job_failed"
        assert "failed" in line["error"]["message"]
