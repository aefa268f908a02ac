"""The ``ollama`` backend against a local server that follows Ollama's native API
(tests/support/fake_ollama.py): pulled or not, keep_alive, num_ctx, usage, streams, errors."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from schemas.tables import Job
from tests.support.fake_ollama import OllamaServer, ollama_model_config
from tierflow.app.embedded import free_port
from tierflow.core import errors
from tierflow.core.config import ActionRule, LLMConfig
from tierflow.core.settings import reset_settings
from workers.backends.base import Backend, CompletionRequest, registry
from workers.backends.ollama import OllamaBackend, base_url_of, check_keep_alive
from workers.pipeline.call import build_request

REQ = CompletionRequest("Name the largest planet.", system="Be brief.", max_tokens=64)


@pytest.fixture
def srv(monkeypatch: pytest.MonkeyPatch) -> Iterator[OllamaServer]:
    monkeypatch.setenv("TIERFLOW_AVAILABILITY_TTL_S", "60")
    reset_settings()
    with OllamaServer(answer="Jupiter is the largest planet.") as server:
        yield server
    reset_settings()


def test_a_model_not_pulled_is_unavailable_saying_ollama_pull(srv: OllamaServer) -> None:
    backend = OllamaBackend(ollama_model_config(srv, model_id="qwen2.5:7b"))
    found = backend.availability()
    assert not found.ok
    assert found.reason == (
        f"model 'qwen2.5:7b' is not pulled on the Ollama server at {srv.url}: "
        "run `ollama pull qwen2.5:7b`"
    )
    assert srv.paths() == ["/api/tags"]  # no chat was tried
    with pytest.raises(errors.BackendUnavailable, match=r"run `ollama pull qwen2\.5:7b`") as exc:
        backend.complete(REQ)  # a pick that raced the probe: the server's 404, in the same words
    assert exc.value.status_code == 404 and exc.value.retryable
    srv.pulled.append("qwen2.5:7b")
    assert not backend.availability().ok  # cached for the TTL: no probe storm
    backend._probe = None  # the TTL passed
    assert backend.availability().ok


def test_name_and_name_latest_are_one_model(srv: OllamaServer) -> None:
    srv.pulled = ["llama3.2"]  # listed by Ollama as llama3.2:latest
    assert OllamaBackend(ollama_model_config(srv, model_id="llama3.2:latest")).availability().ok
    assert OllamaBackend(ollama_model_config(srv, model_id="llama3.2")).availability().ok
    assert not OllamaBackend(ollama_model_config(srv, model_id="llama3.2:1b")).availability().ok


def test_keep_alive_num_ctx_and_sampling_options_are_sent(srv: OllamaServer) -> None:
    model = ollama_model_config(srv, context_window=6000, options={"keep_alive": "2h"})
    request = CompletionRequest("hi", max_tokens=33, temperature=0.0, stop=("\n\n",))
    OllamaBackend(model).complete(request)
    body = srv.calls[0].body
    assert body["keep_alive"] == "2h" and body["stream"] is False
    assert body["options"] == {"num_ctx": 6000, "num_predict": 33, "temperature": 0.0,
                               "stop": ["\n\n"]}  # fmt: skip
    assert body["messages"] == [{"role": "user", "content": "hi"}]
    OllamaBackend(ollama_model_config(srv)).complete(REQ)
    assert srv.calls[1].body["keep_alive"] == "30m"  # the default outlives Ollama's 5 minutes
    assert srv.calls[1].body["messages"][0] == {"role": "system", "content": "Be brief."}


def test_a_long_prompt_is_read_whole_because_num_ctx_is_sent(srv: OllamaServer) -> None:
    prompt = "START " + "word " * 3000 + "END"  # 3002 tokens: over the server's default 2048
    backend = OllamaBackend(ollama_model_config(srv, context_window=8192))
    done = backend.complete(CompletionRequest(prompt))
    assert done.input_tokens == 3002 and srv.seen[-1].startswith("START")
    # What the OpenAI-compatible /v1 left users with: no num_ctx, so the start is cut silently.
    body = backend.request_body(CompletionRequest(prompt), stream=False)
    del body["options"]["num_ctx"]
    cut = backend._http().post("/api/chat", json=body).json()
    assert cut["prompt_eval_count"] == srv.default_num_ctx and not srv.seen[-1].startswith("START")


def test_usage_and_finish_reason_are_mapped(srv: OllamaServer) -> None:
    backend = OllamaBackend(ollama_model_config(srv))
    done = backend.complete(REQ)
    assert done.text == "Jupiter is the largest planet."
    assert (done.input_tokens, done.output_tokens) == (6, 5)  # the server's prompt/eval counts
    assert (done.provider, done.model, done.finish_reason) == ("ollama", "fake-llama", "stop")
    assert (srv.calls[0].input_tokens, srv.calls[0].output_tokens) == (6, 5)
    cut = backend.complete(CompletionRequest("hi", max_tokens=2))
    assert (cut.text, cut.output_tokens, cut.finish_reason) == ("Jupiter is", 2, "length")


def test_json_requests_ask_for_ollama_json_format(srv: OllamaServer) -> None:
    OllamaBackend(ollama_model_config(srv)).complete(CompletionRequest("x", json_output=True))
    OllamaBackend(ollama_model_config(srv, supports_json=False)).complete(
        CompletionRequest("x", json_output=True)
    )
    assert srv.calls[0].body["format"] == "json" and "format" not in srv.calls[1].body


def test_stream_yields_chunks_then_usage(srv: OllamaServer) -> None:
    chunks = list(OllamaBackend(ollama_model_config(srv)).stream(REQ))
    assert srv.calls[0].body["stream"] is True and srv.calls[0].body["keep_alive"] == "30m"
    deltas = [c.delta for c in chunks if not c.done]
    assert len(deltas) == 5 and "".join(deltas) == "Jupiter is the largest planet."
    assert [c.done for c in chunks] == [False] * 5 + [True]
    last = chunks[-1]
    assert last.text == "Jupiter is the largest planet." and last.completion is not None
    assert (last.completion.input_tokens, last.completion.output_tokens) == (6, 5)
    assert last.as_event()["usage"] == {"input_tokens": 6, "output_tokens": 5}


@pytest.mark.parametrize(
    ("behaviour", "error", "retryable"),
    [
        ("500", errors.ServerError, True),
        ("503", errors.ServerError, True),
        ("429:7", errors.RateLimited, True),
        ("drop", errors.ServerError, True),
        ("timeout:3", errors.BackendTimeout, True),
        ("malformed", errors.MalformedResponse, False),
        ("schema", errors.MalformedResponse, False),
    ],
)
def test_http_errors_map_onto_the_error_tree(
    srv: OllamaServer, behaviour: str, error: type[errors.BackendError], retryable: bool
) -> None:
    srv.script([behaviour])
    backend = OllamaBackend(ollama_model_config(srv, timeout_s=1.0))
    with pytest.raises(error) as exc:
        backend.complete(REQ)
    assert exc.value.retryable is retryable and str(exc.value).startswith("ollama: ")
    if behaviour == "429:7":
        assert isinstance(exc.value, errors.RateLimited) and exc.value.retry_after == 7.0


@pytest.mark.parametrize(
    ("behaviour", "error"),
    [("stream_error", errors.ServerError), ("no_done", errors.MalformedResponse),
     ("500", errors.ServerError), ("malformed", errors.MalformedResponse)],
)  # fmt: skip
def test_stream_errors(srv: OllamaServer, behaviour: str, error: type[errors.BackendError]) -> None:
    srv.script([behaviour])
    with pytest.raises(error, match="ollama"):
        list(OllamaBackend(ollama_model_config(srv)).stream(REQ))


def test_a_refused_connection_is_retryable_and_marks_the_server_down(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TIERFLOW_AVAILABILITY_TTL_S", "60")
    reset_settings()
    backend = OllamaBackend(
        ollama_model_config(None, base_url=f"http://127.0.0.1:{free_port()}/v1")
    )
    down = backend.availability()
    assert not down.ok and "127.0.0.1" in down.reason and "connect" in down.reason
    backend._probe = None
    with pytest.raises(errors.BackendUnavailable, match="cannot connect"):
        backend.complete(REQ)
    assert not backend.availability().ok  # the failed call marked it down for one TTL
    with pytest.raises(errors.BackendUnavailable):
        list(backend.stream(REQ))
    reset_settings()


def test_a_context_window_over_the_trained_context_is_refused(srv: OllamaServer) -> None:
    srv.trained_context = 4096
    too_big = OllamaBackend(ollama_model_config(srv, context_window=8192)).availability()
    assert not too_big.ok and "set context_window <= 4096" in too_big.reason
    fits = OllamaBackend(ollama_model_config(srv, context_window=4096))
    assert fits.availability().ok
    assert srv.paths().count("/api/show") == 2  # read once per backend


def test_base_url_with_or_without_v1_reaches_the_native_api(srv: OllamaServer) -> None:
    assert base_url_of(ollama_model_config(None)) == "http://127.0.0.1:11434"
    assert base_url_of(ollama_model_config(None, base_url="http://h:11434/v1/")) == "http://h:11434"
    backend = OllamaBackend(ollama_model_config(srv, base_url=srv.url + "/v1"))
    assert backend.availability().ok and backend.complete(REQ).text
    assert srv.paths()[-1] == "/api/chat"


def test_keep_alive_values_as_ollama_reads_them() -> None:
    sent_as = {"30m": "30m", "1h30m": "1h30m", "-1m": "-1m", " 90s ": "90s", "-1": -1, "300": 300}
    for good, sent in [*sent_as.items(), (-1, -1), (0, 0), (3600, 3600), (1.5, 1.5)]:
        assert check_keep_alive(good) == sent
    for bad in ("forever", "30 minutes", "", "1d", True, None, [1]):
        with pytest.raises(ValueError, match="keep_alive"):
            check_keep_alive(bad)


def _config(options: dict[str, object]) -> LLMConfig:
    model = {"name": "o", "provider": "ollama", "model_id": "llama3.2", "options": options}
    return LLMConfig.model_validate({"tiers": {"local_fast": {"models": [model]}}})


def test_bad_keep_alive_is_refused_at_start_naming_the_field() -> None:
    registry.check(_config({"keep_alive": "1h"}))
    where = r"tiers\.local_fast\.models\.0\.options"
    with pytest.raises(errors.ConfigError, match=where + r": keep_alive '5 minutes' is not"):
        registry.check(_config({"keep_alive": "5 minutes"}))
    with pytest.raises(errors.ConfigError, match=where + ": ollama does not read num_ctx"):
        registry.check(_config({"num_ctx": 4096}))  # the context size is context_window's


def test_registered_for_provider_ollama_with_the_backend_protocol() -> None:
    backend = registry.factories["ollama"](ollama_model_config(None))
    assert isinstance(backend, OllamaBackend) and isinstance(backend, Backend)
    assert backend.provider == "ollama"


def test_a_key_is_sent_only_when_api_key_env_names_one(
    srv: OllamaServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    OllamaBackend(ollama_model_config(srv)).complete(REQ)
    assert "authorization" not in srv.calls[0].headers
    proxied = OllamaBackend(ollama_model_config(srv, api_key_env="TF_TEST_OLLAMA_KEY"))
    assert proxied.availability().reason == "TF_TEST_OLLAMA_KEY not set"
    with pytest.raises(errors.AuthError):
        proxied.complete(REQ)
    monkeypatch.setenv("TF_TEST_OLLAMA_KEY", "sk-proxy-0123456789abcdef")
    proxied.complete(REQ)
    assert srv.calls[-1].headers["authorization"] == "Bearer sk-proxy-0123456789abcdef"
    assert os.environ["TF_TEST_OLLAMA_KEY"] not in repr(proxied.availability())


def test_label_answers_on_ollama_stop_at_the_first_line() -> None:
    # Ollama runs small local models that go on past a label, as the other local servers do.
    rule = ActionRule(answer="label", labels=["bug", "feature"])
    job = Job(prompt="Crash on save", context={})
    request = build_request(job, rule, ollama_model_config(None))
    assert request.stop == ("\n",)
    assert build_request(job, ActionRule(), ollama_model_config(None)).stop == ()
