"""``tierflow serve`` over real HTTP: the official ``openai`` SDK (sync and async, streaming and
not), ``curl``, the jobs API and its keys, against real Celery workers on real Redis and
PostgreSQL; the OpenAPI document checked with schemathesis."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.support import services
from tests.support.services import fake_model, fleet_config
from tierflow import store
from tierflow.app.embedded import free_port

# One test of this module runs in the fast lane (pytest -m "not slow", README); the
# others carry the slow mark.
pytestmark = [pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]


class Gateway:
    def __init__(self, port: int, log: Path, proc: subprocess.Popen[bytes]) -> None:
        self.port = port
        self.log = log
        self.proc = proc

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def http(
        self, method: str, path: str, body: Any = None, key: str | None = None
    ) -> tuple[int, Any, dict[str, str]]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if key:
            request.add_header("Authorization", f"Bearer {key}")
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                raw, status, headers = response.read(), response.status, dict(response.headers)
        except urllib.error.HTTPError as exc:
            raw, status, headers = exc.read(), exc.code, dict(exc.headers)
        return status, json.loads(raw), headers


def start_gateway(log: Path) -> Gateway:
    """``tierflow serve`` in a process of its own on a free port, its output in ``log``."""
    port = free_port()
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tierflow.cli", "serve", "--port", str(port)],
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 30
    while not services.port_open("127.0.0.1", port, 0.2):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"gateway did not start: {log.read_text()}")
        time.sleep(0.1)
    return Gateway(port, log, proc)


@pytest.fixture
def gateway(fleet: Any, tmp_path: Path) -> Iterator[Callable[..., Gateway]]:
    """``gateway(config, env={})``: a fleet on ``config`` and a gateway in front of it."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(config: dict[str, Any], env: dict[str, str] | None = None) -> Gateway:
        fleet(config, env=env)
        gw = start_gateway(tmp_path / "gateway.log")
        procs.append(gw.proc)
        return gw

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=10)


@pytest.mark.slow
def test_openai_sdk_jobs_api_and_keys(gateway: Any, database: str) -> None:
    gw = gateway(fleet_config())
    key_id, key = store.create_key("daemon-a")
    _, other_key = store.create_key("daemon-b")
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)

    # models: auto plus one per configured action
    names = [m.id for m in client.models.list().data]
    assert names[0] == "auto" and "tierflow/classify_memory" in names

    # non-streaming, with the x-tierflow-* headers
    raw = client.chat.completions.with_raw_response.create(
        model="tierflow/extract_topic" if "tierflow/extract_topic" in names else "auto",
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "Extract topic from: 'gateways are fun'"},
        ],
        extra_headers={"x-tierflow-action": "extract_topic"},
    )
    completion = raw.parse()
    assert completion.choices[0].message.content.startswith("[FAKE")
    assert completion.usage.completion_tokens > 0
    assert raw.headers["x-tierflow-action"] == "extract_topic"
    assert raw.headers["x-tierflow-tier"] == "local_fast"
    assert raw.headers["x-tierflow-model"] == "fake-fast"
    assert raw.headers["x-tierflow-route"] == "local_fast"
    assert float(raw.headers["x-tierflow-cost-usd"]) == 0.0
    job_id = raw.headers["x-tierflow-job-id"]
    assert completion.id == f"chatcmpl-{job_id}"

    # streaming, usage in the last chunk; the text is the stored answer's
    chunks = list(
        client.chat.completions.create(
            model="tierflow/classify_memory",
            messages=[{"role": "user", "content": "Is this a decision or a fact? 'we use PG'"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert json.loads(text)["category"]
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens > 0
    assert chunks[-2].choices[0].finish_reason == "stop"

    # async, streaming and not
    async def run_async() -> tuple[str, str]:
        aclient = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)
        plain = await aclient.chat.completions.create(
            model="auto", messages=[{"role": "user", "content": "Summarize: async works"}]
        )
        stream = await aclient.chat.completions.create(
            model="auto",
            messages=[{"role": "user", "content": "Summarize: async streams"}],
            stream=True,
        )
        parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
        await aclient.close()
        return plain.choices[0].message.content or "", "".join(parts)

    plain, streamed = asyncio.run(run_async())
    assert plain.startswith("[FAKE") and streamed.startswith("[FAKE")

    # a bad body: 400 naming the field, an unknown model: 404
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="auto", messages=[])
    assert bad.value.body["param"] == "messages"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])

    # keys: none, wrong, revoked
    for bad_key in ("", "tf_wrong", "sk-not-ours"):
        status, body, headers = gw.http("GET", "/v1/models", key=bad_key or None)
        assert headers.get("www-authenticate") == "Bearer"
        assert status == 401 and body["error"]["type"] == "authentication_error"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=gw.url + "/v1", api_key="tf_nope", max_retries=0).models.list()
    revoked_id, revoked = store.create_key("daemon-a")
    assert gw.http("GET", "/v1/models", key=revoked)[0] == 200
    assert store.revoke_key(revoked_id)
    assert gw.http("GET", "/v1/models", key=revoked)[0] == 401

    # curl once
    out = subprocess.run(
        ["curl", "-sS", "-H", f"Authorization: Bearer {key}", gw.url + "/v1/models"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert json.loads(out.stdout)["data"][0]["id"] == "auto"

    # jobs API: submit with a key, the same again, a conflict, read, wait, feedback
    job = {"prompt": "Summarize: jobs api", "action_type": "write_memory", "idempotency_key": "k1"}
    status, first, _ = gw.http("POST", "/v1/jobs", job, key)
    assert status == 201 and first["created"] is True
    status, again, _ = gw.http("POST", "/v1/jobs", job, key)
    assert status == 200 and again["job_id"] == first["job_id"] and again["created"] is False
    status, conflict, _ = gw.http("POST", "/v1/jobs", {**job, "prompt": "another"}, key)
    assert status == 409 and conflict["error"]["param"] == "idempotency_key"
    assert "k1" in conflict["error"]["message"] and "daemon-a/" not in conflict["error"]["message"]
    # another daemon's same key is its own job
    status, theirs, _ = gw.http("POST", "/v1/jobs", job, other_key)
    assert status == 201 and theirs["job_id"] != first["job_id"]
    status, bad_job, _ = gw.http("POST", "/v1/jobs", {"prompt": "x", "priority": 12}, key)
    assert status == 400 and bad_job["error"]["param"] == "priority"
    status, waited, _ = gw.http("GET", f"/v1/jobs/{first['job_id']}/wait?timeout=30", key=key)
    assert status == 200 and waited["status"] == "succeeded"
    status, read, _ = gw.http("GET", f"/v1/jobs/{first['job_id']}", key=key)
    assert status == 200 and read["text"] == waited["text"]
    assert gw.http("GET", f"/v1/jobs/{first['job_id']}", key=other_key)[0] == 404
    assert gw.http("GET", f"/v1/jobs/{first['job_id']}/wait?timeout=99", key=key)[0] == 400
    status, label, _ = gw.http(
        "POST", f"/v1/jobs/{first['job_id']}/feedback", {"correct": True}, key
    )
    assert status == 201 and label["label_id"] > 0
    loaded = store.load_job(first["job_id"])
    assert loaded is not None and loaded.job_metadata["daemon"] == "daemon-a"

    # the keys are nowhere in clear: not in the database, not in the gateway's log
    dump = subprocess.run(
        [
            "pg_dump",
            "-h",
            services.PG_HOST,
            "-p",
            str(services.PG_PORT),
            "-U",
            "postgres",
            database.rsplit("/", 1)[1],
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "api_keys" in dump
    for secret in (key, other_key, revoked):
        assert secret not in dump
        assert secret not in gw.log.read_text()
        assert secret[3:20] not in dump
    assert [k.daemon for k in store.list_keys()].count("daemon-a") == 2
    assert key_id in [k.id for k in store.list_keys()]


def test_failed_job_is_an_error_event_then_done(gateway: Any) -> None:
    failing = {"failure_rate": 1.0, "failure": "auth"}
    gw = gateway(
        fleet_config(
            local_fast=[fake_model("f1", **failing)],
            local_quality=[fake_model("f2", **failing)],
            api_fallback=[fake_model("f3", input_cost_per_million=1.0, **failing)],
        )
    )
    _, key = store.create_key("doomed")
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)
    messages = [{"role": "user", "content": "Summarize: this will fail"}]
    with pytest.raises(openai.APIStatusError) as failed:
        client.chat.completions.create(model="auto", messages=messages)
    assert failed.value.status_code == 502
    stream = client.chat.completions.create(model="auto", messages=messages, stream=True)
    with pytest.raises(openai.APIError, match="failed"):
        list(stream)
    # the raw stream: one error event, then [DONE]
    request = urllib.request.Request(
        gw.url + "/v1/chat/completions",
        data=json.dumps({"model": "auto", "messages": messages, "stream": True}).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        events = [line for line in response.read().decode().splitlines() if line]
    assert events[-1] == "data: [DONE]" and len(events) == 2
    assert json.loads(events[0][len("data: ") :])["error"]["code"] == "job_failed"


@pytest.mark.slow
def test_openapi_document_matches_the_gateway(gateway: Any) -> None:
    """schemathesis against ``/openapi.json``: no 5xx, every response as documented.

    Schema-valid bodies may still be refused (400): the gateway enforces what JSON Schema does
    not say (a blank prompt, a NUL, a deadline already past, a conversation with no user text),
    so the check that every schema-valid request is accepted is left out.
    """
    import schemathesis  # a test-only dependency
    from hypothesis import HealthCheck, given, settings
    from schemathesis.specs.openapi.checks import positive_data_acceptance

    gw = gateway(fleet_config())
    _, key = store.create_key("fuzzer")
    status, document, _ = gw.http("GET", "/openapi.json")
    assert status == 200
    schema = schemathesis.openapi.from_dict(document)
    # a job to read, wait on and give feedback on
    status, accepted, _ = gw.http("POST", "/v1/jobs", {"prompt": "Summarize: fuzz me"}, key)
    assert gw.http("GET", f"/v1/jobs/{accepted['job_id']}/wait?timeout=30", key=key)[0] == 200
    seen: dict[str, set[int]] = {}

    def fuzz(operation: Any) -> None:
        path_parameters = {"job_id": accepted["job_id"]} if "job_id" in operation.path else None

        @settings(
            max_examples=25,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        @given(case=operation.as_strategy(path_parameters=path_parameters))
        def check(case: Any) -> None:
            response = case.call(base_url=gw.url, headers={"Authorization": f"Bearer {key}"})
            assert response.status_code < 500 or response.status_code in (502, 504), response.text
            case.validate_response(response, excluded_checks=[positive_data_acceptance])
            seen.setdefault(operation.label, set()).add(response.status_code)

        check()

    for result in schema.get_all_operations():
        fuzz(result.ok())
    assert len(seen) == 15  # 7 chat and jobs operations, 4 of files, 4 of batches
    assert 200 in seen["GET /v1/models"] and 201 in seen["POST /v1/jobs"]
