"""Secrets stay out of texts: configured key variables, URL passwords, availability reasons, and
the provider-batch paths (submit, poll, cancel) against servers that echo the key they were sent.

The batch servers are real HTTP servers driven by the official SDKs (never patched); a batch is
an in-memory row, so no database is needed: a retryable failure only logs.
"""

from __future__ import annotations

import logging
import socket
import uuid

import pytest

from router.export import scrub as scrub_for_export
from schemas.tables import ProviderBatch, ProviderBatchItem
from tests.support.batch_providers import AnthropicBatchServer, OpenAIBatchServer
from tests.support.services import fleet_config
from tierflow.core.config import LLMConfig, ModelConfig
from tierflow.core.secrets import key_variables, scrub
from workers.backends.openai_compatible import OpenAICompatibleBackend
from workers.provider_batch import poll, submit
from workers.provider_batch.clients import SDK_FAILURES, batch_error

# A key variable whose name does not look secret, holding a value with no key shape: only the
# config's api_key_env tells that it is one.
KEY_VAR = "TIERFLOW_TEST_BATCH_CREDENTIAL"
KEY = "plainSECRETSCANbatch42"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_value_of_a_configured_key_variable_is_scrubbed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name = f"TIERFLOW_TEST_CRED_{uuid.uuid4().hex[:8].upper()}"  # never configured before
    monkeypatch.setenv(name, KEY)
    assert scrub(f"the server said {KEY}.") == f"the server said {KEY}."
    ModelConfig(name="m", provider="openai", model_id="x", api_key_env=name)
    assert name in key_variables()
    assert scrub(f"the server said {KEY}.") == "the server said ***."
    # the usage export and the stored internal errors (workers/outcome.py) use it too
    assert scrub_for_export(f"at http://u:pw123456@h/ {KEY}") == "at http://u:***@h/ ***"
    monkeypatch.setenv(name, "short")  # shorter than 8: would blank ordinary words
    assert scrub("a short word") == "a short word"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("http://bob:hunter2pass@10.0.0.5:8000/v1 down", "http://bob:***@10.0.0.5:8000/v1 down"),
        ("redis://:s3cretpw@redis:6379/0", "redis://:***@redis:6379/0"),
        ("postgresql+psycopg://u:p@db/x", "postgresql+psycopg://u:***@db/x"),
        ("http://host:8000/v1 and user@example.com", "http://host:8000/v1 and user@example.com"),
    ],
)
def test_url_passwords_are_redacted(text: str, expected: str) -> None:
    assert scrub(text) == expected


def test_an_availability_reason_never_carries_the_base_urls_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port = _closed_port()
    model = ModelConfig(
        name="local", provider="vllm", model_id="m",
        base_url=f"http://bob:hunter2pass@127.0.0.1:{port}/v1", timeout_s=2,
    )  # fmt: skip
    answer = OpenAICompatibleBackend(model).availability()
    assert not answer.ok
    assert f"bob:***@127.0.0.1:{port}" in answer.reason
    assert "hunter2pass" not in answer.reason


def _batch_setup(
    provider: str, url: str
) -> tuple[LLMConfig, ProviderBatch, list[ProviderBatchItem]]:
    entry = {"name": "batchy", "provider": provider, "model_id": "model-1", "base_url": url,
             "api_key_env": KEY_VAR, "input_cost_per_million": 1.0}  # fmt: skip
    config = LLMConfig.model_validate(fleet_config(api_fallback=[entry]))
    batch = ProviderBatch(id="pb-secret-1", provider=provider, model="batchy", remote_id="rb_1")
    body = {"model": "model-1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    items = [ProviderBatchItem(custom_id="c1", provider=provider, model="batchy", body=body)]
    return config, batch, items


@pytest.mark.parametrize("server", [OpenAIBatchServer, AnthropicBatchServer])
def test_batch_submit_poll_and_cancel_keep_an_echoed_key_out(
    server: type[OpenAIBatchServer] | type[AnthropicBatchServer],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv(KEY_VAR, KEY)
    provider = "openai" if server is OpenAIBatchServer else "anthropic"
    caplog.set_level(logging.WARNING, logger="workers.provider_batch")
    with server() as srv:
        srv.leak_key = True
        config, batch, items = _batch_setup(provider, srv.url)
        assert submit.submit_one(batch, items, config) is False  # a 500: tried again later
        assert poll._cancel(batch, config) is False
        with pytest.raises(SDK_FAILURES) as raised:
            poll.poll_one(batch, config)
        polled_error = str(batch_error(raised.value, provider))
        sent = [s.headers for s in srv.seen]
    assert len(sent) == 3  # submit (OpenAI: its upload), cancel, poll
    assert all(KEY in str(h) for h in sent)  # the key was really presented...
    assert KEY in str(raised.value)  # ...and echoed back in the SDK's own message
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "not submitted" in logged and "not cancelled" in logged
    assert "HTTP 500" in logged and "HTTP 500" in polled_error
    assert KEY not in logged and KEY not in polled_error
