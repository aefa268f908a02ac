"""The SDK backends driven through the real ``openai`` / ``anthropic`` SDKs over local HTTP."""

from __future__ import annotations

import json
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import anthropic
import httpx2
import openai
import pytest

from tests.support.fake_providers import (
    AnthropicServer,
    OpenAIServer,
    anthropic_model_config,
    openai_model_config,
)
from tierflow.app.embedded import free_port
from tierflow.core import errors
from tierflow.core.settings import reset_settings
from workers.backends.anthropic_backend import AnthropicBackend
from workers.backends.base import Backend, CompletionRequest, registry
from workers.backends.openai_compatible import (
    CLIENT_SHARDS,
    OpenAICompatibleBackend,
    thread_shard,
)
from workers.backends.sdk_errors import map_sdk_error, parse_retry_after, scrub

ANT_KEY = "sk-ant-TESTKEY-0123456789abcdef"
OAI_KEY = "sk-proj-TESTKEY-0123456789abcdef"
SDK_ENV = (
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "OPENAI_ADMIN_KEY",
    "OPENAI_ORG_ID",
    "OPENAI_PROJECT_ID",
    "OPENAI_CUSTOM_HEADERS",
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_AUTH_TOKEN",
    "ANTHROPIC_BASE_URL",
    "ANTHROPIC_CUSTOM_HEADERS",
    "ANTHROPIC_PROFILE",
    "TIERFLOW_AVAILABILITY_TTL_S",
)
REQ = CompletionRequest("Name the largest planet.", system="Be brief.", max_tokens=64)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SDK_ENV:
        monkeypatch.delenv(name, raising=False)


@dataclass
class Rig:
    """One provider's fake server and a way to build a backend against it."""

    name: str
    srv: OpenAIServer | AnthropicServer
    make: Callable[..., Any]


@pytest.fixture(params=["openai", "anthropic"])
def rig(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Rig]:
    if request.param == "openai":
        with OpenAIServer(timeout_sleep=3) as srv:
            yield Rig(
                "vllm", srv, lambda **kw: OpenAICompatibleBackend(openai_model_config(srv, **kw))
            )
    else:
        monkeypatch.setenv("ANTHROPIC_API_KEY", ANT_KEY)
        with AnthropicServer(timeout_sleep=3) as srv:
            yield Rig(
                "anthropic", srv, lambda **kw: AnthropicBackend(anthropic_model_config(srv, **kw))
            )


# success and wire fields


def test_success_reports_the_servers_usage(rig: Rig) -> None:
    completion = rig.make().complete(REQ)
    (call,) = rig.srv.calls
    assert completion.text == rig.srv.answer_for(REQ.prompt) and REQ.prompt in completion.text
    assert (completion.input_tokens, completion.output_tokens) == (
        call.input_tokens,
        call.output_tokens,
    )
    assert completion.input_tokens > 0 and completion.output_tokens > 0
    assert completion.provider == rig.name and not completion.fake


def test_openai_wire_fields() -> None:
    with OpenAIServer(answer='{"category": "fact"}') as srv:
        backend = OpenAICompatibleBackend(openai_model_config(srv))
        request = CompletionRequest(
            "Classify.",
            system="sys",
            max_tokens=33,
            temperature=0.7,
            stop=("END", "##"),
            json_output=True,
        )
        assert json.loads(backend.complete(request).text) == {"category": "fact"}
        body, headers = srv.calls[0].body, srv.calls[0].headers
        assert body["model"] == "fake-model"
        assert body["messages"] == [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": "Classify."},
        ]
        assert (body["max_tokens"], body["temperature"], body["stop"]) == (33, 0.7, ["END", "##"])
        assert body["response_format"] == {"type": "json_object"}
        assert headers["authorization"] == "Bearer not-needed"  # local server placeholder key
        assert headers["x-stainless-retry-count"] == "0"
        no_json = OpenAICompatibleBackend(openai_model_config(srv, supports_json=False))
        no_json.complete(CompletionRequest("plain", json_output=True))
        assert "response_format" not in srv.calls[1].body
        assert [m["role"] for m in srv.calls[1].body["messages"]] == ["user"]


def test_anthropic_wire_fields_and_json_prefill(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", ANT_KEY)
    with AnthropicServer(answer='{"category": "fact"}') as srv:
        backend = AnthropicBackend(anthropic_model_config(srv))
        request = CompletionRequest(
            "Classify.",
            system="sys",
            max_tokens=33,
            temperature=0.7,
            stop=("END",),
            json_output=True,
        )
        completion = backend.complete(request)
        assert completion.text == '{"category": "fact"}'  # the prefilled "{" is put back
        body, headers = srv.calls[0].body, srv.calls[0].headers
        assert body["model"] == "claude-fake-1"
        assert body["system"].startswith("sys\n\n") and "JSON" in body["system"]
        assert body["messages"] == [
            {"role": "user", "content": "Classify."},
            {"role": "assistant", "content": "{"},
        ]
        assert (body["max_tokens"], body["temperature"], body["stop_sequences"]) == (
            33,
            0.7,
            ["END"],
        )
        assert srv.presented_key(headers) == ANT_KEY and "anthropic-version" in headers
        plain = AnthropicBackend(
            anthropic_model_config(srv, options={"prefill": False, "send_temperature": False})
        )
        assert plain.complete(request).text == '{"category": "fact"}'
        assert srv.calls[1].body["messages"] == [{"role": "user", "content": "Classify."}]
        assert "temperature" not in srv.calls[1].body
        plain.complete(CompletionRequest("no system"))
        assert "system" not in srv.calls[2].body and "stop_sequences" not in srv.calls[2].body


def test_stop_sequence_cuts_the_answer(rig: Rig) -> None:
    rig.srv.answer = "alpha beta STOP gamma"
    completion = rig.make().complete(CompletionRequest("x", stop=("STOP",)))
    assert completion.text == "alpha beta "
    assert completion.finish_reason in ("stop", "stop_sequence")


# errors


RETRY_CASES = [("429:2", 2.0), ("429ms:1500", 1.5)]
ERROR_CASES = [
    ("500", errors.ServerError, 500),
    ("503", errors.ServerError, 503),
    ("529", errors.Overloaded, 529),
    ("overloaded", errors.Overloaded, 529),
    ("auth", errors.AuthError, 401),
    ("forbidden", errors.AuthError, 403),
    ("context", errors.ContextTooLong, 400),
    ("malformed", errors.MalformedResponse, None),
    ("schema", errors.MalformedResponse, None),
    ("refusal", errors.ContentRefused, None),
    ("drop", errors.BackendUnavailable, None),
]


@pytest.mark.parametrize(("behaviour", "seconds"), RETRY_CASES)
def test_rate_limited_carries_retry_after(rig: Rig, behaviour: str, seconds: float) -> None:
    rig.srv.script([behaviour])
    with pytest.raises(errors.RateLimited) as info:
        rig.make().complete(REQ)
    assert info.value.retry_after == seconds and info.value.status_code == 429
    assert info.value.retryable
    assert rig.srv.request_count == 1  # the SDK did not retry on its own


def test_retry_after_as_http_date(rig: Rig) -> None:
    rig.srv.script(["429date:30"])
    with pytest.raises(errors.RateLimited) as info:
        rig.make().complete(REQ)
    assert info.value.retry_after is not None and 27 <= info.value.retry_after <= 31
    assert rig.srv.request_count == 1


@pytest.mark.parametrize(("behaviour", "cls", "status"), ERROR_CASES)
def test_errors_map_onto_the_tree(
    rig: Rig, behaviour: str, cls: type[errors.BackendError], status: int | None
) -> None:
    rig.srv.script([behaviour])
    with pytest.raises(cls) as info:
        rig.make().complete(REQ)
    assert type(info.value) is cls
    assert info.value.status_code == status
    assert rig.srv.request_count == 1
    assert rig.make().complete(REQ).text  # the script is consumed; the next call succeeds


def test_timeout(rig: Rig) -> None:
    rig.srv.script(["timeout"])
    started = time.monotonic()
    with pytest.raises(errors.BackendTimeout):
        rig.make(timeout_s=0.5).complete(REQ)
    assert time.monotonic() - started < 2.0
    assert rig.srv.request_count == 1


def test_connection_refused(rig: Rig) -> None:
    url = f"http://127.0.0.1:{free_port()}" + ("/v1" if rig.name == "vllm" else "")
    with pytest.raises(errors.BackendUnavailable):
        rig.make(base_url=url).complete(REQ)
    with pytest.raises(errors.BackendUnavailable):
        list(rig.make(base_url=url).stream(REQ))


def test_missing_key_fails_before_any_request(monkeypatch: pytest.MonkeyPatch) -> None:
    with OpenAIServer() as oai, AnthropicServer() as ant:
        backend = OpenAICompatibleBackend(openai_model_config(oai, provider="openai"))
        with pytest.raises(errors.AuthError, match="OPENAI_API_KEY not set"):
            backend.complete(REQ)
        monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
        with pytest.raises(errors.AuthError, match="ANTHROPIC_API_KEY not set"):
            AnthropicBackend(anthropic_model_config(ant)).complete(REQ)
        assert oai.request_count == ant.request_count == 0


# streaming


def test_stream_concatenates_and_ends_with_usage(rig: Rig) -> None:
    chunks = list(rig.make().stream(REQ))
    (call,) = rig.srv.calls
    assert len(chunks) > 2 and chunks[-1].done and not any(c.done for c in chunks[:-1])
    assert "".join(c.delta for c in chunks) == chunks[-1].text
    assert chunks[-1].text == rig.srv.answer_for(REQ.prompt)
    assert all(c.text == "".join(d.delta for d in chunks[: i + 1]) for i, c in enumerate(chunks))
    done = chunks[-1].completion
    assert done is not None and all(c.completion is None for c in chunks[:-1])
    assert (done.input_tokens, done.output_tokens) == (call.input_tokens, call.output_tokens)
    assert chunks[-1].as_event()["usage"] == {
        "input_tokens": done.input_tokens,
        "output_tokens": done.output_tokens,
    }
    assert call.body["stream"] is True
    if rig.name == "vllm":
        assert call.body["stream_options"] == {"include_usage": True}


def test_anthropic_stream_json_prefill(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", ANT_KEY)
    with AnthropicServer(answer='{"a": 1, "b": 2}') as srv:
        chunks = list(
            AnthropicBackend(anthropic_model_config(srv)).stream(
                CompletionRequest("j", json_output=True)
            )
        )
    assert chunks[0].delta == "{" and json.loads(chunks[-1].text) == {"a": 1, "b": 2}


@pytest.mark.parametrize(
    ("behaviour", "cls"),
    [
        ("429:4", errors.RateLimited),
        ("529", errors.Overloaded),
        ("auth", errors.AuthError),
        ("malformed", errors.MalformedResponse),
        ("schema", errors.MalformedResponse),
        ("refusal", errors.ContentRefused),
    ],
)
def test_stream_errors(rig: Rig, behaviour: str, cls: type[errors.BackendError]) -> None:
    rig.srv.script([behaviour])
    with pytest.raises(cls) as info:
        list(rig.make().stream(REQ))
    if isinstance(info.value, errors.RateLimited):
        assert info.value.retry_after == 4.0
    assert rig.srv.request_count == 1


def test_stream_errors_inside_a_200_stream() -> None:
    with OpenAIServer() as srv:
        srv.script(["malformed_stream"])
        with pytest.raises(errors.MalformedResponse):
            list(OpenAICompatibleBackend(openai_model_config(srv)).stream(REQ))
    with AnthropicServer() as srv, pytest.MonkeyPatch.context() as mp:
        mp.setenv("ANTHROPIC_API_KEY", ANT_KEY)
        srv.script(["stream_overloaded"])
        with pytest.raises(errors.Overloaded):
            list(AnthropicBackend(anthropic_model_config(srv)).stream(REQ))


def test_stream_timeout(rig: Rig) -> None:
    rig.srv.script(["timeout"])
    with pytest.raises(errors.BackendTimeout):
        list(rig.make(timeout_s=0.5).stream(REQ))


# availability and configuration


def test_local_server_availability_is_probed_and_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIERFLOW_AVAILABILITY_TTL_S", "60")
    srv = OpenAIServer().start()
    backend = OpenAICompatibleBackend(openai_model_config(srv, provider="openai_compatible"))
    try:
        assert backend.availability().ok and backend.availability().ok
        assert [r.path for r in srv.requests] == ["/v1/models"]  # second answer from the cache
    finally:
        srv.close()
    assert backend.availability().ok  # still cached
    monkeypatch.setenv("TIERFLOW_AVAILABILITY_TTL_S", "0")
    reset_settings()  # the TTL is a setting, read once per process
    down = backend.availability()
    assert not down.ok and "127.0.0.1" in down.reason and "connect" in down.reason


def test_unhealthy_local_server_is_not_available(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIERFLOW_AVAILABILITY_TTL_S", "0")
    with OpenAIServer() as srv:
        backend = OpenAICompatibleBackend(openai_model_config(srv))
        srv.models_ok = False
        assert not backend.availability().ok
        srv.models_ok = True
        assert backend.availability().ok
        assert srv.request_count == 0  # probes never count as completion calls


def test_api_availability_depends_on_the_key_only(monkeypatch: pytest.MonkeyPatch) -> None:
    oai = OpenAICompatibleBackend(openai_model_config(None, provider="openai", model_id="gpt-x"))
    ant = AnthropicBackend(anthropic_model_config(None))
    custom = AnthropicBackend(anthropic_model_config(None, api_key_env="MY_CLAUDE_KEY"))
    assert oai.availability() == (oai.availability().__class__(False, "OPENAI_API_KEY not set"))
    assert ant.availability().reason == "ANTHROPIC_API_KEY not set" and not ant.availability().ok
    assert custom.availability().reason == "MY_CLAUDE_KEY not set"
    monkeypatch.setenv("OPENAI_API_KEY", OAI_KEY)
    monkeypatch.setenv("ANTHROPIC_API_KEY", ANT_KEY)
    monkeypatch.setenv("MY_CLAUDE_KEY", ANT_KEY)
    assert oai.availability().ok and ant.availability().ok and custom.availability().ok
    assert OAI_KEY not in repr(oai.availability()) and ANT_KEY not in repr(ant.__dict__)


def test_base_urls_and_sdk_client_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    vllm = OpenAICompatibleBackend(openai_model_config(None, provider="vllm"))
    assert vllm.base_url == "http://127.0.0.1:8000/v1"  # Ollama: workers/backends/ollama.py
    client = vllm._sdk()
    assert client.max_retries == 0 and client.timeout == 5.0
    with OpenAIServer() as srv, AnthropicServer() as ant_srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.url)  # honoured for provider "openai" only
        monkeypatch.setenv("OPENAI_API_KEY", OAI_KEY)
        api = OpenAICompatibleBackend(openai_model_config(None, provider="openai"))
        assert (
            api.complete(REQ).text and srv.calls[0].headers["authorization"] == f"Bearer {OAI_KEY}"
        )
        monkeypatch.setenv("ANTHROPIC_BASE_URL", ant_srv.url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", ANT_KEY)
        claude = AnthropicBackend(anthropic_model_config(None))
        assert claude.complete(REQ).text and ant_srv.request_count == 1
        assert claude._sdk().max_retries == 0
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-ROTATED-0123456789")  # key rotation
        claude.complete(REQ)
        assert ant_srv.presented_key(ant_srv.calls[-1].headers) == "sk-ant-ROTATED-0123456789"


def test_threads_share_clients_in_shards_and_a_rotated_key_rebuilds_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with OpenAIServer() as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.url)
        monkeypatch.setenv("OPENAI_API_KEY", OAI_KEY)
        api = OpenAICompatibleBackend(openai_model_config(None, provider="openai"))
        threads = 2 * CLIENT_SHARDS
        barrier = threading.Barrier(threads)
        seen: list[tuple[int, int]] = []  # (thread's shard, id of the client it got)

        def call() -> None:
            barrier.wait()  # all alive at once: no thread id is reused
            seen.append((thread_shard(), id(api._sdk())))

        workers = [threading.Thread(target=call) for _ in range(threads)]
        for t in workers:
            t.start()
        for t in workers:
            t.join(30)
        assert len(seen) == threads
        by_shard: dict[int, set[int]] = {}
        for shard, client in seen:
            by_shard.setdefault(shard, set()).add(client)
        assert len(by_shard) == CLIENT_SHARDS, "threads are spread over every shard"
        assert all(len(clients) == 1 for clients in by_shard.values()), "one client a shard"
        assert len({c for clients in by_shard.values() for c in clients}) == CLIENT_SHARDS
        api.complete(REQ)
        monkeypatch.setenv("OPENAI_API_KEY", OAI_KEY.replace("sk-", "sk-ROTATED-"))
        api.complete(REQ)
        assert srv.calls[-1].headers["authorization"] == "Bearer " + OAI_KEY.replace(
            "sk-", "sk-ROTATED-"
        )
        assert len(api._clients) == 1, "the old key's clients are dropped"


def test_registration_and_protocol(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("openai_compatible", "openai", "vllm"):
        backend = registry.factories[name](openai_model_config(None, provider=name))
        assert isinstance(backend, OpenAICompatibleBackend) and backend.provider == name
        assert isinstance(backend, Backend)
    claude = registry.factories["anthropic"](anthropic_model_config(None))
    assert isinstance(claude, AnthropicBackend) and isinstance(claude, Backend)


# secrets


LEAKY = [
    "429:1",
    "500",
    "529",
    "auth",
    "forbidden",
    "context",
    "malformed",
    "schema",
    "refusal",
    "drop",
]


def _assert_clean(err: BaseException, *keys: str) -> None:
    rendered = [str(err), repr(err), "".join(traceback.format_exception(err))]
    for key in keys:
        assert all(key not in text for text in rendered), rendered


@pytest.mark.parametrize("behaviour", LEAKY)
def test_keys_never_appear_in_errors(monkeypatch: pytest.MonkeyPatch, behaviour: str) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", OAI_KEY)
    monkeypatch.setenv("ANTHROPIC_API_KEY", ANT_KEY)
    with OpenAIServer() as oai, AnthropicServer() as ant:
        oai.leak_key = ant.leak_key = True  # the servers echo the presented key in every error
        backends: list[tuple[OpenAIServer | AnthropicServer, Backend]] = [
            (oai, OpenAICompatibleBackend(openai_model_config(oai, provider="openai"))),
            (ant, AnthropicBackend(anthropic_model_config(ant))),
        ]
        for srv, backend in backends:
            for call in (backend.complete, lambda r, b=backend: list(b.stream(r))):
                srv.script([behaviour])
                with pytest.raises(errors.BackendError) as info:
                    call(REQ)
                _assert_clean(info.value, OAI_KEY, ANT_KEY)
                err = info.value  # the SDK exception (whose message embeds the body) is not chained
                assert err.__cause__ is None and (
                    err.__context__ is None or err.__suppress_context__
                )
            assert srv.presented_key(srv.calls[-1].headers) in (OAI_KEY, ANT_KEY)


def test_scrub_and_direct_mapping(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOME_SERVICE_TOKEN", "plain-secret-value-123")
    text = f"key {ANT_KEY} bearer: Bearer abcdefghijkl api_key=zzzzzzzzzz plain-secret-value-123"
    cleaned = scrub(text)
    for secret in (ANT_KEY, "abcdefghijkl", "zzzzzzzzzz", "plain-secret-value-123"):
        assert secret not in cleaned
    request = httpx2.Request("POST", "http://127.0.0.1/v1/messages", headers={"x-api-key": ANT_KEY})
    response = httpx2.Response(
        429,
        request=request,
        headers={"retry-after": "7"},
        json={
            "type": "error",
            "error": {"type": "rate_limit_error", "message": f"slow down {ANT_KEY}"},
        },
    )
    exc = anthropic.RateLimitError(
        f"Error code: 429 - {ANT_KEY}", response=response, body=response.json()
    )
    mapped = map_sdk_error(exc, "anthropic")
    assert isinstance(mapped, errors.RateLimited) and mapped.retry_after == 7.0
    _assert_clean(mapped, ANT_KEY)
    assert isinstance(map_sdk_error(httpx2.ReadTimeout("slow"), "x"), errors.BackendTimeout)
    assert isinstance(map_sdk_error(httpx2.RemoteProtocolError("cut"), "x"), errors.ServerError)
    assert isinstance(
        map_sdk_error(json.JSONDecodeError("bad", "{", 0), "x"), errors.MalformedResponse
    )
    timeout = openai.APITimeoutError(request=request)
    assert isinstance(map_sdk_error(timeout, "openai"), errors.BackendTimeout)
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # past


def test_fake_server_counts_requests_per_rolling_window() -> None:
    with OpenAIServer() as srv:
        backend = OpenAICompatibleBackend(openai_model_config(srv))
        for _ in range(5):
            backend.complete(REQ)
        assert srv.max_requests_in_window(60) == 5
        for call, at in zip(srv.calls, [0.0, 10.0, 59.0, 61.0, 200.0], strict=True):
            call.at = at  # pretend they were spread over minutes
        assert srv.max_requests_in_window(60) == 3  # 10, 59, 61
        per_call = srv.calls[0].input_tokens + srv.calls[0].output_tokens
        assert srv.max_tokens_in_window(60) == 3 * per_call
        assert srv.max_tokens_in_window(60, kind="input") == 3 * srv.calls[0].input_tokens


def test_openai_insufficient_quota_is_not_a_rate_limit() -> None:
    """OpenAI's 429 'insufficient_quota' means no credit: retrying later will not help."""
    import httpx2
    import openai

    from tierflow.core import errors
    from workers.backends.sdk_errors import map_sdk_error

    request = httpx2.Request("POST", "http://127.0.0.1/v1/chat/completions")
    response = httpx2.Response(429, request=request, json={"error": {"code": "insufficient_quota"}})
    exc = openai.RateLimitError(
        "quota",
        response=response,
        body={"code": "insufficient_quota", "type": "insufficient_quota"},
    )
    mapped = map_sdk_error(exc, "openai")
    assert isinstance(mapped, errors.AuthError) and not mapped.retryable
