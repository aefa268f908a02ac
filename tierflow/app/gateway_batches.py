"""OpenAI's Batch API at the gateway: ``POST /v1/batches``, ``GET /v1/batches`` (``limit``,
``after``), ``GET /v1/batches/{batch_id}`` and ``POST /v1/batches/{batch_id}/cancel``.

A batch is created from an uploaded file (:mod:`.gateway_files`) whose every line is checked
first (:mod:`.gateway_batch_lines`): one bad line and the batch is ``failed`` with OpenAI's
``errors`` (``{"object": "list", "data": [{code, message, param, line}]}``), no job stored.
Else it is ``in_progress`` and its lines run as the jobs of a tierflow batch
(:mod:`.gateway_batch_runs`), scoped to the key's daemon like every job it submits; it ends
``completed`` (or ``cancelled``) with an output and an error file. Only
``endpoint: /v1/chat/completions`` and ``completion_window: 24h`` are served. Another daemon's
batch is a 404.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from schemas.jobs import utcnow
from schemas.tables import GatewayBatch
from tierflow.app.gateway_batch_lines import CHAT_URL, check_file
from tierflow.app.gateway_batch_runs import (
    WINDOW_S,
    cancel,
    open_tierflow_batch,
    refresh,
    start_submitter,
)
from tierflow.app.gateway_http import BadRequest, blocking, guarded, json_body, json_object
from tierflow.store.gateway_batches import (
    ENDED,
    create_gateway_batch,
    file_content,
    file_info,
    gateway_batch,
    list_gateway_batches,
    new_id,
)

WINDOW = "24h"
BATCH_FIELDS = frozenset({"input_file_id", "endpoint", "completion_window", "metadata"})
MAX_METADATA_PAIRS, MAX_METADATA_KEY, MAX_METADATA_VALUE = 16, 64, 512  # OpenAI's limits
MAX_LIST = 100
TIMES = ("created", "in_progress", "finalizing", "completed", "failed", "cancelling", "cancelled")


def _seconds(at: datetime | None) -> int | None:
    return None if at is None else int(at.timestamp())


def batch_object(row: GatewayBatch, counts: dict[str, int]) -> dict[str, Any]:
    """OpenAI's batch object (times in Unix seconds, None until they happen)."""
    errors = [{"param": None, **e} for e in row.errors or []]
    times = {f"{name}_at": _seconds(getattr(row, f"{name}_at")) for name in TIMES}
    return {
        "id": row.id,
        "object": "batch",
        "endpoint": row.endpoint,
        "errors": {"object": "list", "data": errors} if errors else None,
        "input_file_id": row.input_file_id,
        "completion_window": row.completion_window,
        "status": row.status,
        "output_file_id": row.output_file_id,
        "error_file_id": row.error_file_id,
        **times,
        "expires_at": _seconds(row.expires_at),
        "expired_at": None,
        "request_counts": counts,
        "metadata": row.batch_metadata,
    }


def _metadata(value: Any) -> dict[str, str] | None:
    """OpenAI's metadata: at most 16 string pairs (keys 64 characters, values 512)."""
    if value is None:
        return None
    pairs = value.items() if isinstance(value, dict) else None
    if pairs is None or len(value) > MAX_METADATA_PAIRS or not all(
        isinstance(k, str) and isinstance(v, str) and len(k) <= MAX_METADATA_KEY
        and len(v) <= MAX_METADATA_VALUE
        for k, v in pairs
    ):  # fmt: skip
        raise BadRequest(
            400,
            f"metadata: at most {MAX_METADATA_PAIRS} string pairs (keys of at most "
            f"{MAX_METADATA_KEY} characters, values of at most {MAX_METADATA_VALUE})",
            "metadata",
        )
    return dict(value)


def _batch_request(body: dict[str, Any]) -> tuple[str, dict[str, str] | None]:
    """The input file's id and the metadata of a ``POST /v1/batches`` body, checked."""
    unknown = sorted(set(body) - BATCH_FIELDS)
    if unknown:
        raise BadRequest(400, f"{unknown[0]}: unknown field", unknown[0])
    file_id = body.get("input_file_id")
    if not isinstance(file_id, str) or not file_id:
        raise BadRequest(400, "input_file_id is required", "input_file_id")
    if body.get("endpoint") != CHAT_URL:
        raise BadRequest(400, f"endpoint must be {CHAT_URL} (the only one served)", "endpoint")
    if body.get("completion_window") != WINDOW:
        raise BadRequest(400, f"completion_window must be {WINDOW!r}", "completion_window")
    return file_id, _metadata(body.get("metadata"))


def create_batch(daemon: str, file_id: str, metadata: dict[str, str] | None) -> GatewayBatch:
    """Check the daemon's input file and create the batch: ``failed`` with the bad lines, or
    ``in_progress`` with its submitter started (see the module)."""
    info = file_info(file_id, daemon)
    if info is None:
        raise BadRequest(404, f"no file {file_id}", "input_file_id")
    if info.purpose != "batch":
        raise BadRequest(400, f"file {file_id} is not a batch input file", "input_file_id")
    batch_id = new_id("batch_")
    lines, errors = check_file(file_content(file_id, daemon) or b"", daemon, batch_id)
    fields: dict[str, Any] = {
        "daemon": daemon,
        "input_file_id": file_id,
        "endpoint": CHAT_URL,
        "completion_window": WINDOW,
        "batch_metadata": metadata,
        "total": lines,
        "expires_at": utcnow() + timedelta(seconds=WINDOW_S),
    }
    if errors:
        create_gateway_batch(
            batch_id, **fields, status="failed", errors=errors, failed_at="now", completed=0,
            failed=0,
        )  # fmt: skip
    else:
        fields["batch_id"] = open_tierflow_batch(batch_id)
        create_gateway_batch(batch_id, **fields, status="in_progress", in_progress_at="now")
        start_submitter(batch_id)
    row = gateway_batch(batch_id, daemon)
    assert row is not None
    return row


def _own(batch_id: str, daemon: str) -> GatewayBatch:
    row = gateway_batch(batch_id, daemon)
    if row is None:
        raise BadRequest(404, f"no batch {batch_id}", "batch_id")
    return row


def read_batch(batch_id: str, daemon: str) -> dict[str, Any]:
    """The daemon's batch as OpenAI's object, ended first when its time has come."""
    return batch_object(*refresh(_own(batch_id, daemon)))


def cancel_batch(batch_id: str, daemon: str) -> dict[str, Any]:
    """Cancel the daemon's batch (409 once it has ended); its object after."""
    row = _own(batch_id, daemon)
    if row.status in ENDED:
        raise BadRequest(409, f"batch {batch_id} is {row.status}", "batch_id", "batch_ended")
    cancel(row)
    return read_batch(batch_id, daemon)


def list_batches(daemon: str, limit: int, after: str | None) -> dict[str, Any]:
    """A page of the daemon's batches, newest first (OpenAI's list with ``has_more``)."""
    rows = list_gateway_batches(daemon, limit + 1, after)
    data = [batch_object(*refresh(row)) for row in rows[:limit]]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": len(rows) > limit,
    }


@guarded
async def post_batch(request: Request, daemon: str) -> Response:
    """``POST /v1/batches``: the batch object (``in_progress``, or ``failed`` with errors)."""
    file_id, metadata = _batch_request(json_object(await json_body(request)))
    row = await blocking(request, create_batch, daemon, file_id, metadata)
    return JSONResponse(await blocking(request, read_batch, row.id, daemon))


@guarded
async def get_batch(request: Request, daemon: str) -> Response:
    """``GET /v1/batches/{batch_id}``: the daemon's batch now."""
    batch_id = request.path_params["batch_id"]
    return JSONResponse(await blocking(request, read_batch, batch_id, daemon))


@guarded
async def post_cancel(request: Request, daemon: str) -> Response:
    """``POST /v1/batches/{batch_id}/cancel``: ``cancelling``, then ``cancelled``."""
    batch_id = request.path_params["batch_id"]
    return JSONResponse(await blocking(request, cancel_batch, batch_id, daemon))


@guarded
async def get_batches(request: Request, daemon: str) -> Response:
    """``GET /v1/batches?limit=&after=``: the daemon's batches, newest first."""
    raw = request.query_params.get("limit", "20")
    limit = int(raw) if raw.isdigit() else 0
    if not 1 <= limit <= MAX_LIST:
        raise BadRequest(400, f"limit must be an integer from 1 to {MAX_LIST}", "limit")
    after = request.query_params.get("after") or None
    return JSONResponse(await blocking(request, list_batches, daemon, limit, after))


BATCH_ROUTES = [
    Route("/v1/batches", post_batch, methods=["POST"]),
    Route("/v1/batches", get_batches, methods=["GET"]),
    Route("/v1/batches/{batch_id}", get_batch, methods=["GET"]),
    Route("/v1/batches/{batch_id}/cancel", post_cancel, methods=["POST"]),
]
