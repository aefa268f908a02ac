"""What provider batch result lines mean (pure: no service), the batch price and the body sent."""

from __future__ import annotations

import pytest

from tierflow.core import errors
from tierflow.core.config import ModelConfig
from workers.backends.base import CompletionRequest, registry
from workers.provider_batch import results
from workers.provider_batch.poll import anthropic_result, openai_result
from workers.provider_batch.requests import batch_body


def model(provider: str, **extra: object) -> ModelConfig:
    fields: dict = {"name": f"m-{provider}", "provider": provider, "model_id": "x-1"}
    fields.update(input_cost_per_million=3.0, output_cost_per_million=15.0, **extra)
    return ModelConfig(**fields)


def test_batch_price_is_half_unless_the_model_says_otherwise() -> None:
    half = model("openai").at_batch_price()
    assert half.price(1_000_000, 1_000_000) == pytest.approx(9.0)
    assert half.name == "m-openai"
    own = model("anthropic", batch_input_cost_per_million=1.0, batch_output_cost_per_million=2.0)
    assert own.at_batch_price().price(1_000_000, 1_000_000) == pytest.approx(3.0)
    seed = ModelConfig(name="s", provider="openai", model_id="s", cost_per_1k_tokens=0.002)
    assert seed.at_batch_price().price(1000, 0) == pytest.approx(0.001)


def test_openai_lines_map_to_answers_and_errors() -> None:
    ok = {
        "custom_id": "tf-a-0",
        "response": {"status_code": 200, "body": {
            "model": "gpt-x", "usage": {"prompt_tokens": 12, "completion_tokens": 5},
            "choices": [{"message": {"content": "Paris.", "refusal": None},
                         "finish_reason": "stop"}]}},
        "error": None,
    }  # fmt: skip
    custom_id, (kind, fields) = openai_result(ok)
    assert (custom_id, kind) == ("tf-a-0", "succeeded")
    completion = results.completion_of(fields, "openai")
    assert (completion.text, completion.input_tokens, completion.output_tokens) == ("Paris.", 12, 5)
    bad = {"custom_id": "tf-b-0", "error": None, "response": {"status_code": 400, "body": {
        "error": {"type": "invalid_request_error", "message": "max_tokens is too large",
                  "code": None}}}}  # fmt: skip
    _, (kind, fields) = openai_result(bad)
    err = results.error_of(kind, fields)
    assert isinstance(err, errors.InvalidRequest) and "max_tokens is too large" in str(err)
    server = {
        "custom_id": "c",
        "error": None,
        "response": {"status_code": 500, "body": {"error": {"type": "server_error"}}},
    }
    assert results.error_of(*openai_result(server)[1]).retryable
    expired = {
        "custom_id": "tf-c-0",
        "response": None,
        "error": {"code": "batch_expired", "message": "not run in time"},
    }
    err = results.error_of(*openai_result(expired)[1])
    assert err.kind == "expired" and not err.retryable
    cancelled = {"custom_id": "d", "response": None, "error": {"code": "batch_cancelled"}}
    assert results.error_of(*openai_result(cancelled)[1]).kind == "cancelled"
    no_usage = {
        "custom_id": "e",
        "response": {
            "status_code": 200,
            "body": {"choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}]},
        },
    }
    assert results.error_of(*openai_result(no_usage)[1]).kind == "malformed_response"


def test_anthropic_lines_map_to_answers_and_errors() -> None:
    ok = {
        "custom_id": "tf-a-0",
        "result": {
            "type": "succeeded",
            "message": {
                "model": "claude-x",
                "content": [{"type": "text", "text": '"category": "fact"}'}],
                "stop_reason": "end_turn",
                "usage": {"input_tokens": 30, "output_tokens": 9},
            },
        },
    }
    _, (kind, fields) = anthropic_result(ok)
    completion = results.completion_of(fields, "anthropic", prefill="{")
    assert kind == "succeeded" and completion.text == '{"category": "fact"}'
    errored = {
        "custom_id": "b",
        "result": {
            "type": "errored",
            "error": {
                "type": "error",
                "error": {"type": "overloaded_error", "message": "Overloaded"},
            },
        },
    }
    assert results.error_of(*anthropic_result(errored)[1]).kind == "overloaded"
    context = {
        "custom_id": "b",
        "result": {
            "type": "errored",
            "error": {
                "type": "error",
                "error": {
                    "type": "invalid_request_error",
                    "message": "prompt is too long: 300000 tokens",
                },
            },
        },
    }
    assert results.error_of(*anthropic_result(context)[1]).kind == "context_too_long"
    assert (
        results.error_of(
            *anthropic_result({"custom_id": "c", "result": {"type": "expired"}})[1]
        ).kind
        == "expired"
    )
    assert (
        results.error_of(
            *anthropic_result({"custom_id": "d", "result": {"type": "canceled"}})[1]
        ).kind
        == "cancelled"
    )
    refusal = {
        "custom_id": "e",
        "result": {
            "type": "succeeded",
            "message": {
                "content": [],
                "stop_reason": "refusal",
                "usage": {"input_tokens": 1, "output_tokens": 0},
            },
        },
    }
    assert results.error_of(*anthropic_result(refusal)[1]).kind == "content_refused"


def test_the_body_is_what_the_direct_call_would_send() -> None:
    request = CompletionRequest(prompt="Is it a fact?", system="Reply in JSON.", max_tokens=64,
                                temperature=0.1, json_output=True, timeout_s=30)  # fmt: skip
    body, prefill = batch_body(registry.backend_for(model("openai")), request)
    assert body == {
        "model": "x-1",
        "messages": [{"role": "system", "content": "Reply in JSON."},
                     {"role": "user", "content": "Is it a fact?"}],
        "max_tokens": 64, "temperature": 0.1, "response_format": {"type": "json_object"},
    } and prefill == ""  # fmt: skip
    body, prefill = batch_body(registry.backend_for(model("anthropic")), request)
    assert prefill == "{" and body["messages"][-1] == {"role": "assistant", "content": "{"}
    assert body["temperature"] == 0.1 and "timeout" not in body and "extra_body" not in body
    assert body["system"].startswith("Reply in JSON.")
    with pytest.raises(errors.InvalidRequest):
        batch_body(registry.backend_for(model("vllm")), request)
