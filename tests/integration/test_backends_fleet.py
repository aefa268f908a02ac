"""Real backends through the fleet: the embedded model over HTTP, and the official SDKs against
local servers that speak the providers' wire formats."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from router import submit_job
from tests.support.fake_providers import AnthropicServer, OpenAIServer
from tests.support.services import REPO, fake_model, fleet_config
from tierflow import store
from tierflow.app.embedded import free_port

# One test of this module runs in the fast lane (pytest -m "not slow", README); the
# others carry the slow mark.
pytestmark = [pytest.mark.integration]


@pytest.fixture(scope="module")
def local_engine() -> Iterator[str]:
    """``tierflow local-engine`` in its own process: the real Gemma 3 270M over HTTP."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tierflow.cli", "local-engine", "--port", str(port)],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(url + "/models", timeout=2):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail("local engine did not start")
            time.sleep(0.3)
    yield url
    proc.terminate()
    proc.wait(10)


def gemma(name: str, url: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name, "provider": "openai_compatible", "model_id": "gemma-3-270m",
        "base_url": url, "max_tokens": 24, "timeout_s": 60, "supports_json": False, **extra,
    }  # fmt: skip


@pytest.mark.slow
def test_real_local_model_end_to_end(fleet, local_engine: str) -> None:
    fleet(fleet_config(local_fast=[gemma("gemma-fast", local_engine)],
                       local_quality=[gemma("gemma-quality", local_engine)]))  # fmt: skip
    handle = submit_job("The three primary colours are", "extract_topic")
    result = handle.wait(timeout=120)
    assert result.status == "succeeded", result.error
    first = store.attempts_of(handle.job_id)[0]
    assert (first.tier, first.model, first.provider) == (
        "local_fast",
        "gemma-fast",
        "openai_compatible",
    )
    assert first.input_tokens > 3 and first.output_tokens > 0  # real usage from llama.cpp
    assert float(first.cost_usd) == 0.0
    assert first.latency_ms and first.latency_ms > 0
    assert first.fake is False and first.text


def api_entry(name: str, srv: OpenAIServer | AnthropicServer, provider: str, key_env: str,
              price_in: float, price_out: float) -> dict[str, Any]:  # fmt: skip
    return {
        "name": name, "provider": provider, "model_id": "fake-model", "base_url": srv.url,
        "api_key_env": key_env, "input_cost_per_million": price_in,
        "output_cost_per_million": price_out, "timeout_s": 3, "max_tokens": 64,
    }  # fmt: skip


def test_gate_failure_escalates_to_api_priced_from_its_usage(fleet) -> None:
    with OpenAIServer(answer='{"category": "decision"}') as oai:
        fleet(
            fleet_config(
                local_fast=[fake_model("fast-bad", answer="bad_json")],
                local_quality=[fake_model("quality-bad", answer="bad_json")],
                api_fallback=[api_entry("gpt", oai, "openai", "TF_TEST_OPENAI_KEY", 2.5, 10.0)],
            ),
            env={"TF_TEST_OPENAI_KEY": "sk-test-notreal-000000"},
        )
        handle = submit_job("Is this a decision or a fact? 'We chose React'", "classify_memory")
        result = handle.wait(timeout=30)
        assert result.status == "succeeded", result.error
        assert (result.tier, result.model) == ("api_fallback", "gpt")
        attempts = store.attempts_of(handle.job_id)
        assert [a.status for a in attempts] == ["rejected", "rejected", "passed"]
        call = oai.calls[-1]
        usage_in, usage_out = call.input_tokens, call.output_tokens  # its usage block
        final = attempts[-1]
        assert (final.input_tokens, final.output_tokens) == (usage_in, usage_out)
        expected = (usage_in * 2.5 + usage_out * 10.0) / 1e6
        assert float(final.cost_usd) == pytest.approx(expected)
        assert result.cost_usd == pytest.approx(expected)  # the local attempts cost 0
        assert result.api_baseline_cost_usd == pytest.approx(expected)  # baseline = this model


@pytest.mark.parametrize(
    ("behaviour", "kind", "then"),
    [
        # the provider asked us to back off (or the key is bad): the tier's next model serves
        ("529", "overloaded", "gpt"), ("429:3", "rate_limited", "gpt"), ("auth", "auth", "gpt"),
        # a one-off 5xx or timeout only counts towards the circuit: the retry may reuse the model
        ("500", "server_error", None), ("timeout:6", "timeout", None),
    ],
)  # fmt: skip
@pytest.mark.slow
def test_api_error_retries_within_the_tier(
    fleet, behaviour: str, kind: str, then: str | None
) -> None:
    with (
        AnthropicServer(answer="Root cause: the retry loop never resets.") as ant,
        OpenAIServer(answer="Root cause: the retry loop never resets its counter.") as oai,
    ):
        ant.script([behaviour])
        fleet(
            fleet_config(api_fallback=[
                api_entry("claude", ant, "anthropic", "TF_TEST_ANT_KEY", 3.0, 15.0),
                api_entry("gpt", oai, "openai", "TF_TEST_OPENAI_KEY", 2.5, 10.0),
            ]),
            env={"TF_TEST_ANT_KEY": "sk-ant-notreal-1111", "TF_TEST_OPENAI_KEY": "sk-notreal-2222"},
        )  # fmt: skip
        handle = submit_job("Analyze this stack trace: RecursionError in retry()", "debug_error")
        result = handle.wait(timeout=40)
        assert result.status == "succeeded", result.error
        attempts = store.attempts_of(handle.job_id)
        first = attempts[0]
        assert (first.model, first.status, first.error_kind) == ("claude", "error", kind)
        assert [(a.tier, a.status) for a in attempts[1:]] == [("api_fallback", "passed")]
        if then is not None:
            assert attempts[1].model == then
            assert ant.request_count == 1  # the SDK did not retry on its own; the fleet moved on
        else:
            assert ant.request_count == (1 if attempts[1].model == "gpt" else 2)
        if behaviour.startswith("429"):
            assert attempts[0].retry_after_s == pytest.approx(3.0)
