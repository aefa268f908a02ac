"""An ``ollama`` model through the fleet: a real Celery worker, in its own process, calls a local
server that follows Ollama's native API (tests/support/fake_ollama.py)."""

from __future__ import annotations

from typing import Any

import pytest

from router import submit_job
from tests.support.fake_ollama import OllamaServer
from tests.support.services import fake_model, fleet_config
from tierflow import store

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ANSWER = "The topic is the three primary colours of light."


def ollama_entry(srv: OllamaServer, model_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": "ollama-fast", "provider": "ollama", "model_id": model_id,
        # what users wrote for the OpenAI-compatible backend: the native API is found behind it
        "base_url": srv.url + "/v1", "max_tokens": 48, "timeout_s": 10, "context_window": 4096,
        "supports_json": False, **extra,
    }  # fmt: skip


def test_a_worker_runs_a_job_on_an_ollama_model(fleet) -> None:
    with OllamaServer(answer=ANSWER) as srv:
        srv.pulled = ["llama3.2:1b"]
        entry = ollama_entry(srv, "llama3.2:1b", options={"keep_alive": "1h"})
        fleet(fleet_config(local_fast=[entry]))
        handle = submit_job("The three primary colours are red, green and blue.", "extract_topic")
        result = handle.wait(timeout=60)
        assert result.status == "succeeded", result.error
        first = store.attempts_of(handle.job_id)[0]
        assert (first.tier, first.model, first.provider) == ("local_fast", "ollama-fast", "ollama")
        assert first.text == ANSWER and first.fake is False
        call = srv.calls[0]
        assert (first.input_tokens, first.output_tokens) == (call.input_tokens, call.output_tokens)
        assert call.body["model"] == "llama3.2:1b" and call.body["keep_alive"] == "1h"
        assert call.body["options"]["num_ctx"] == 4096
        assert call.body["options"]["num_predict"] == 48
        assert "/api/tags" in srv.paths()  # the worker checked the model was pulled first


def test_a_model_not_pulled_is_skipped_saying_ollama_pull(fleet) -> None:
    with OllamaServer(answer=ANSWER) as srv:
        srv.pulled = []
        fleet(fleet_config(local_fast=[ollama_entry(srv, "qwen2.5:0.5b")],
                           local_quality=[fake_model("fake-quality")]))  # fmt: skip
        handle = submit_job("The three primary colours are red, green and blue.", "extract_topic")
        result = handle.wait(timeout=60)
        assert result.status == "succeeded", result.error
        assert result.tier != "local_fast"  # the next tier served it; no crash loop
        first = store.attempts_of(handle.job_id)[0]
        assert first.tier == "local_fast" and first.status != "passed"
        assert first.error is not None and "run `ollama pull qwen2.5:0.5b`" in first.error
        assert srv.calls == []  # never called: the probe said why first
