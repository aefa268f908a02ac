"""Group pending items into provider batches and submit them (one beat tick, fleet-wide).

Items are grouped per (provider, model, base URL); a group goes once it is full
(``provider_batches.max_requests``) or its oldest item has waited ``collect_s``. Per group:

- OpenAI: the lines (``custom_id``, ``method``, ``url``, ``body``) uploaded as one JSONL file
  (``files.create(purpose="batch")``), then ``batches.create(endpoint="/v1/chat/completions",
  completion_window="24h")``;
- Anthropic: ``messages.batches.create(requests=[{custom_id, params}])``.

The provider batch's row and its items' assignment are committed before the provider is asked,
so a submitter that dies in between leaves a ``submitting`` row that the next tick, after
:data:`RESUBMIT_AFTER_S`, submits again (at least once: a provider that accepted the first try
holds the requests twice; each attempt still stores one result). A provider that refuses the
batch for good (a bad key, an invalid request) ends its items with that error at once, so their
jobs fall back instead of waiting; a retryable failure (5xx, timeout) is tried again later.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Literal

from schemas.tables import ProviderBatch, ProviderBatchItem
from tierflow.core import errors
from tierflow.core.config import LLMConfig, ModelConfig
from tierflow.store import provider_batches
from workers.provider_batch import results
from workers.provider_batch.clients import (
    SDK_FAILURES,
    anthropic_client,
    batch_error,
    openai_client,
)
from workers.provider_batch.holds import settle_hold
from workers.provider_batch.requests import OPENAI_ENDPOINT

log = logging.getLogger(__name__)
# The only window OpenAI offers; Anthropic's is fixed at 24 h.
COMPLETION_WINDOW: Literal["24h"] = "24h"
RESUBMIT_AFTER_S = 300.0


def submit_ready(config: LLMConfig) -> dict[str, int]:
    """One tick: drop items of ended jobs, submit every ready group; return counts."""
    settings = config.provider_batches
    dropped = provider_batches.drop_items_of_ended_jobs()
    for item in dropped:  # never sent, nothing charged: the budget hold goes back
        settle_hold(item.job_metadata, item.job_id, item.attempt_no, 0.0)
    counts = {"dropped": len(dropped), "batches": 0, "requests": 0}
    for batch, items in provider_batches.stale_submitting(RESUBMIT_AFTER_S):
        if submit_one(batch, items, config):
            counts["batches"] += 1
            counts["requests"] += len(items)
    for group in provider_batches.ready_groups(settings.collect_s, settings.max_requests):
        while True:
            taken = provider_batches.take_pending(group, settings.max_requests)
            if taken is None:
                break
            batch, items = taken
            if submit_one(batch, items, config):
                counts["batches"] += 1
                counts["requests"] += len(items)
            if len(items) < settings.max_requests:
                break
    return counts


def submit_one(batch: ProviderBatch, items: list[ProviderBatchItem], config: LLMConfig) -> bool:
    """Ask the provider to run ``items`` as ``batch``; True once it accepted them."""
    try:
        model = config.model(batch.model)
        if model.provider == "openai":
            remote_id, status, file_id = _submit_openai(batch, items, model)
        elif model.provider == "anthropic":
            remote_id, status, file_id = _submit_anthropic(items, model), "in_progress", None
        else:
            raise errors.InvalidRequest(f"{model.provider}: no Batch API")
    except (errors.ConfigError, errors.BackendError, *SDK_FAILURES) as exc:
        err = batch_error(exc, batch.provider)
        if err.retryable:
            log.warning("provider batch %s not submitted (%s); trying again later", batch.id, err)
            return False
        log.warning("provider batch %s refused: %s", batch.id, err)
        failed = results.failure(type(err), str(err))
        provider_batches.store_results(batch.id, {}, failed, "refused", {})
        return False
    provider_batches.note_submitted(batch.id, remote_id, status, file_id)
    return True


def openai_lines(items: list[ProviderBatchItem]) -> bytes:
    """The input file: one request per line, keyed by its ``custom_id``."""
    lines = (
        json.dumps(
            {"custom_id": i.custom_id, "method": "POST", "url": OPENAI_ENDPOINT, "body": i.body}
        )
        for i in items
    )
    return ("\n".join(lines) + "\n").encode()


def _submit_openai(
    batch: ProviderBatch, items: list[ProviderBatchItem], model: ModelConfig
) -> tuple[str, str, str]:
    client = openai_client(model)
    upload = client.files.create(
        file=(f"tierflow-{batch.id}.jsonl", openai_lines(items), "application/jsonl"),
        purpose="batch",
    )
    created = client.batches.create(
        input_file_id=upload.id,
        endpoint=OPENAI_ENDPOINT,
        completion_window=COMPLETION_WINDOW,
        metadata={"tierflow_batch": batch.id},
    )
    return created.id, created.status, upload.id


def _submit_anthropic(items: list[ProviderBatchItem], model: ModelConfig) -> str:
    requests: list[Any] = [{"custom_id": i.custom_id, "params": i.body} for i in items]
    created = anthropic_client(model).messages.batches.create(requests=requests)
    return created.id
