"""Poll open provider batches; once one ended, store every request's result and resume its
attempts (one beat tick, fleet-wide).

- OpenAI: ``batches.retrieve``; ended at ``completed``, ``expired``, ``cancelled`` or ``failed``.
  Answers are in the output file, per-request errors in the error file (an HTTP error body, or
  ``batch_expired`` / ``batch_cancelled`` for a request never run), both JSONL keyed by
  ``custom_id``.
- Anthropic: ``messages.batches.retrieve``; ended at ``processing_status: ended``. The results
  (JSONL from ``results_url``) say per ``custom_id``: ``succeeded`` with the message,
  ``errored`` with the error, ``canceled`` or ``expired``.

A batch that ended with only part of its requests run (it expired, or was cancelled) gives the
rest ``expired`` (or ``cancelled``): each attempt resumes with its own answer or error, so the
answers that came are used and only the others fall back. Results are stored in one transaction
with the batch's end (:func:`tierflow.store.provider_batches.store_results`), before any resume
is sent; resumes whose attempt still runs are sent (again) by every tick after
:data:`RESEND_RESUME_AFTER_S`, so a poller that dies between the two loses nothing.

A provider batch every item of which belongs to a job that ended (its batch was cancelled, its
deadline passed) is cancelled at the provider; whatever it still returns is not used.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

import anthropic
import openai

from schemas.tables import ProviderBatch
from tierflow.core import errors
from tierflow.core.config import LLMConfig
from tierflow.store import provider_batches
from workers.provider_batch import results
from workers.provider_batch.clients import (
    SDK_FAILURES,
    anthropic_client,
    batch_error,
    openai_client,
)
from workers.provider_batch.dispatch import enqueue_resume
from workers.provider_batch.late import keep_late_result

log = logging.getLogger(__name__)
OPENAI_ENDED = frozenset({"completed", "expired", "cancelled", "failed"})
RESEND_RESUME_AFTER_S = 900.0
Result = tuple[str, dict[str, Any]]


@dataclass
class Polled:
    """One poll: the provider's status and counts; once ended, every result found and what a
    request with none gets."""

    status: str
    counts: dict[str, Any]
    ended: bool = False
    found: dict[str, Result] = field(default_factory=dict)
    missing: Result = ("", {})


def poll_open(config: LLMConfig) -> dict[str, int]:
    """One tick: cancel the batches nobody waits for, poll the open ones, send resumes."""
    counts = {"cancelled": 0, "polled": 0, "ended": 0, "results": 0, "resumed": 0}
    for batch in provider_batches.batches_to_cancel():
        if _cancel(batch, config):
            counts["cancelled"] += 1
    for batch in provider_batches.batches_to_poll(config.provider_batches.poll_s):
        counts["polled"] += 1
        try:
            polled = poll_one(batch, config)
        except (errors.ConfigError, errors.BackendError, *SDK_FAILURES) as exc:
            err = batch_error(exc, batch.provider)
            if err.retryable:
                log.warning("provider batch %s not polled (%s); next tick", batch.id, err)
                continue
            # The provider no longer knows the batch (or the model left the config): its
            # requests will not be answered, their attempts move on.
            polled = Polled("unknown", {}, True, {}, results.failure(type(err), str(err)))
        if not polled.ended:
            provider_batches.note_polled(batch.id, polled.status, polled.counts)
            continue
        counts["ended"] += 1
        counts["results"] += provider_batches.store_results(
            batch.id, polled.found, polled.missing, polled.status, polled.counts
        )
        for item in provider_batches.items_of_ended_jobs(batch.id):
            keep_late_result(item, config)  # no resume for them: their jobs ended
    for due in provider_batches.items_to_resume(RESEND_RESUME_AFTER_S):
        enqueue_resume(due.job_id, due.attempt_no, due.tier, due.priority)
        counts["resumed"] += 1
    return counts


def poll_one(batch: ProviderBatch, config: LLMConfig) -> Polled:
    model = config.model(batch.model)
    assert batch.remote_id is not None
    if batch.provider == "openai":
        return _poll_openai(batch.remote_id, openai_client(model))
    return _poll_anthropic(batch.remote_id, anthropic_client(model))


def _cancel(batch: ProviderBatch, config: LLMConfig) -> bool:
    try:
        model = config.model(batch.model)
        assert batch.remote_id is not None
        if batch.provider == "openai":
            openai_client(model).batches.cancel(batch.remote_id)
        else:
            anthropic_client(model).messages.batches.cancel(batch.remote_id)
    except (errors.ConfigError, errors.BackendError, *SDK_FAILURES) as exc:
        # Mapped like the other paths: the SDK's own message may carry a key.
        log.warning(
            "provider batch %s not cancelled: %s", batch.id, batch_error(exc, batch.provider)
        )
        return False
    provider_batches.note_cancel_requested(batch.id)
    return True


# OpenAI


def _poll_openai(remote_id: str, client: openai.OpenAI) -> Polled:
    remote = client.batches.retrieve(remote_id)
    counts = remote.request_counts.model_dump() if remote.request_counts else {}
    polled = Polled(remote.status, counts)
    if remote.status not in OPENAI_ENDED:
        return polled
    polled.ended = True
    for file_id in (remote.output_file_id, remote.error_file_id):
        if file_id:
            for line in client.files.content(file_id).text.splitlines():
                if line.strip():
                    custom_id, result = openai_result(json.loads(line))
                    polled.found[custom_id] = result
    if remote.status == "expired":
        polled.missing = results.failure(
            results.BatchRequestExpired, "openai batch expired before this request ran"
        )
    elif remote.status == "cancelled":
        polled.missing = results.failure(
            results.BatchRequestCancelled, "openai batch cancelled before this request ran"
        )
    elif remote.status == "failed":
        reasons = (
            [e.message or e.code or "" for e in (remote.errors.data or [])] if remote.errors else []
        )
        polled.missing = results.failure(
            results.ProviderBatchFailed,
            "openai batch failed: " + ("; ".join(r for r in reasons if r) or "no reason given"),
        )
    else:
        polled.missing = results.failure(
            errors.MalformedResponse, "openai batch completed without a result for this request"
        )
    return polled


def openai_result(line: dict[str, Any]) -> tuple[str, Result]:
    """``(custom_id, result)`` of one line of an OpenAI batch's output or error file."""
    custom_id = str(line.get("custom_id") or "")
    error = line.get("error")
    if error:
        code, message = error.get("code"), str(error.get("message") or error.get("code"))
        cls: type[errors.BackendError] = {
            "batch_expired": results.BatchRequestExpired,
            "batch_cancelled": results.BatchRequestCancelled,
            "request_timeout": errors.BackendTimeout,
        }.get(code, errors.ServerError)
        return custom_id, results.failure(cls, f"openai batch: {code}: {message}")
    response = line.get("response") or {}
    status = int(response.get("status_code") or 0)
    body = response.get("body") or {}
    if status != 200:
        err = body.get("error") if isinstance(body, dict) else None
        err = err if isinstance(err, dict) else {}
        message = " ".join(filter(None, [err.get("code"), err.get("message")]))
        return custom_id, results.http_failure("openai", status, err.get("type"), message)
    choices = body.get("choices") or []
    message_body = (choices[0] or {}).get("message") if choices else None
    if not isinstance(message_body, dict):
        return custom_id, results.failure(errors.MalformedResponse, "openai batch: no choices")
    finish = choices[0].get("finish_reason")
    text = message_body.get("content")
    if message_body.get("refusal") or (finish == "content_filter" and not text):
        return custom_id, results.failure(errors.ContentRefused, "openai: the model refused")
    if not isinstance(text, str):
        return custom_id, results.failure(errors.MalformedResponse, "openai batch: no content")
    usage = body.get("usage") or {}
    return custom_id, results.answer(
        text,
        usage.get("prompt_tokens"),
        usage.get("completion_tokens"),
        finish,
        str(body.get("model") or ""),
    )


# Anthropic


def _poll_anthropic(remote_id: str, client: anthropic.Anthropic) -> Polled:
    remote = client.messages.batches.retrieve(remote_id)
    counts = remote.request_counts.model_dump() if remote.request_counts else {}
    polled = Polled(remote.processing_status, counts)
    if remote.processing_status != "ended":
        return polled
    polled.ended = True
    for entry in client.messages.batches.results(remote_id):
        custom_id, result = anthropic_result(entry.model_dump(mode="json"))
        polled.found[custom_id] = result
    polled.missing = results.failure(
        errors.MalformedResponse, "anthropic batch ended without a result for this request"
    )
    return polled


def anthropic_result(line: dict[str, Any]) -> tuple[str, Result]:
    """``(custom_id, result)`` of one line of an Anthropic batch's results."""
    custom_id = str(line.get("custom_id") or "")
    result = line.get("result") or {}
    kind = result.get("type")
    if kind == "canceled":
        return custom_id, results.failure(
            results.BatchRequestCancelled, "anthropic batch cancelled before this request ran"
        )
    if kind == "expired":
        return custom_id, results.failure(
            results.BatchRequestExpired, "anthropic batch expired before this request ran"
        )
    if kind == "errored":
        envelope = result.get("error") or {}
        inner = envelope.get("error")
        err: dict[str, Any] = inner if isinstance(inner, dict) else envelope
        return custom_id, results.http_failure("anthropic", 0, err.get("type"), err.get("message"))
    if kind != "succeeded":
        return custom_id, results.failure(errors.MalformedResponse, f"anthropic batch: {kind}")
    message = result.get("message") or {}
    if message.get("stop_reason") == "refusal":
        return custom_id, results.failure(
            errors.ContentRefused, "anthropic: the model refused the request (stop_reason refusal)"
        )
    blocks = message.get("content") or []
    text = "".join(b.get("text", "") for b in blocks if b.get("type") == "text")
    usage = message.get("usage") or {}
    return custom_id, results.answer(
        text,
        usage.get("input_tokens"),
        usage.get("output_tokens"),
        message.get("stop_reason"),
        str(message.get("model") or ""),
    )
