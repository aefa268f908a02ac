"""The lines of an OpenAI batch file: read and checked into tierflow job specs, and the jobs'
results written back as OpenAI's output and error lines.

An input line is ``{"custom_id", "method": "POST", "url": "/v1/chat/completions", "body"}``,
the body a chat request as ``POST /v1/chat/completions`` takes it (the action from its model:
``tierflow/<action>`` or ``auto``; no ``stream``). :func:`check_file` reads the whole file and
returns every bad line's ``{code, message, line}`` (1-based; at most :data:`MAX_ERRORS`), so a
file is refused whole before anything is stored. :func:`job_specs` then yields the specs
:func:`router.batch.submit_batch` takes, one per line, the daemon, the ``custom_id`` and the
model asked for in each job's metadata (the custom_id is how the output finds its line).

An output line is ``{"id", "custom_id", "response": {"status_code": 200, "request_id",
"body": <chat.completion>}, "error": null}``; an error line has ``"response": null`` and
``"error": {"code", "message"}``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from pydantic import ValidationError

from schemas.jobs import CACHE_SWITCH, JobRequest, JobResult
from tierflow.app.gateway_chat import action_for, completion_body, parse_chat
from tierflow.app.gateway_http import BadRequest
from tierflow.core.constants import JobStatus
from tierflow.core.errors import describe_validation_error
from tierflow.core.settings import get_settings

CHAT_URL = "/v1/chat/completions"
MAX_FILE_BYTES = 200 * 1024 * 1024  # OpenAI's limit on a batch input file
MAX_FILE_LINES = 50_000  # OpenAI's limit on the requests of one batch
MAX_ERRORS = 1_000  # bad lines reported at most (the file is refused whatever their number)
MAX_CUSTOM_ID_CHARS = 512
LINE_FIELDS = frozenset({"custom_id", "method", "url", "body"})
# metadata keys of a batch line's job
CUSTOM_ID, REQUEST_MODEL, BATCH_KEY = "custom_id", "request_model", "openai_batch"
ERROR_CODES = {
    JobStatus.FAILED.value: "job_failed",
    JobStatus.EXPIRED.value: "batch_expired",
    JobStatus.CANCELLED.value: "batch_cancelled",
}


class LineError(ValueError):
    """One bad line: OpenAI's error code and a message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _lines(content: bytes) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of the file's non-blank lines (1-based numbers)."""
    for number, raw in enumerate(content.decode("utf-8").split("\n"), start=1):
        if raw.strip():
            yield number, raw


def _object(text: str) -> dict[str, Any]:
    try:
        line = json.loads(text)
    except ValueError:
        raise LineError("invalid_json_line", "the line is not valid JSON") from None
    if not isinstance(line, dict):
        raise LineError("invalid_json_line", "the line must be a JSON object")
    return line


def parse_line(text: str, daemon: str, batch: str) -> dict[str, Any]:
    """One input line as a job spec (``prompt``, ``action_type``, ``context``, ``metadata``);
    :class:`LineError` naming what is wrong."""
    line = _object(text)
    unknown = sorted(set(line) - LINE_FIELDS)
    if unknown:
        raise LineError("invalid_request", f"unknown field {unknown[0]!r}")
    custom_id = line.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id or len(custom_id) > MAX_CUSTOM_ID_CHARS:
        raise LineError(
            "missing_custom_id", f"custom_id must be a string of 1 to {MAX_CUSTOM_ID_CHARS} chars"
        )
    if line.get("method") != "POST":
        raise LineError("invalid_method", "method must be POST")
    if line.get("url") != CHAT_URL:
        raise LineError("invalid_url", f"url must be {CHAT_URL} (the batch's endpoint)")
    body = line.get("body")
    try:
        chat = parse_chat(body)
        action = action_for(chat["model"], None)
    except BadRequest as exc:
        where = f" ({exc.param})" if exc.param else ""
        raise LineError("invalid_body", f"body{where}: {exc.message}") from None
    if chat["stream"]:
        raise LineError("invalid_body", "body (stream): a batch line cannot stream")
    metadata: dict[str, Any] = {
        "daemon": daemon,
        BATCH_KEY: batch,
        CUSTOM_ID: custom_id,
        REQUEST_MODEL: chat["model"],
    }
    if not chat["cache"]:
        metadata[CACHE_SWITCH] = False
    spec = {
        "prompt": chat["prompt"],
        "action_type": action,
        "context": chat["context"],
        "metadata": metadata,
    }
    _check_job(spec)
    return spec


def _check_job(spec: dict[str, Any]) -> None:
    """What ``submit_batch`` would refuse of the spec (its fields, its sizes), refused here."""
    try:
        request = JobRequest(**spec)
    except ValidationError as exc:
        message = describe_validation_error(exc, empty="line")
        raise LineError("invalid_body", f"body: {message}") from None
    problems = request.size_problems(get_settings().llm.inputs)
    if problems:
        raise LineError("invalid_body", "body: " + "; ".join(problems))


def check_file(content: bytes, daemon: str, batch: str) -> tuple[int, list[dict[str, Any]]]:
    """Read every line of an input file: ``(lines, errors)``, ``errors`` OpenAI's
    ``{code, message, line}`` for each bad line (duplicate custom_ids too), at most
    :data:`MAX_ERRORS`; an empty file, one that is not UTF-8 or has over
    :data:`MAX_FILE_LINES` lines is one error without a line."""
    try:
        numbered = list(_lines(content))
    except UnicodeDecodeError:
        return 0, [{"code": "invalid_file", "message": "the file is not UTF-8", "line": None}]
    if not numbered:
        return 0, [{"code": "empty_file", "message": "the file has no lines", "line": None}]
    if len(numbered) > MAX_FILE_LINES:
        message = f"{len(numbered)} lines: a batch holds at most {MAX_FILE_LINES}"
        return len(numbered), [{"code": "too_many_lines", "message": message, "line": None}]
    errors: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for number, text in numbered:
        try:
            spec = parse_line(text, daemon, batch)
            custom_id = spec["metadata"][CUSTOM_ID]
            if custom_id in seen:
                raise LineError(
                    "duplicate_custom_id",
                    f"custom_id {custom_id!r} is already used on line {seen[custom_id]}",
                )
            seen[custom_id] = number
        except LineError as exc:
            if len(errors) < MAX_ERRORS:
                errors.append({"code": exc.code, "message": str(exc), "line": number})
    return len(numbered), errors


def job_specs(content: bytes, daemon: str, batch: str) -> Iterator[dict[str, Any]]:
    """The job spec of each line of a file :func:`check_file` passed, in order, lazily."""
    for _, text in _lines(content):
        yield parse_line(text, daemon, batch)


def output_line(result: JobResult, metadata: dict[str, Any]) -> dict[str, Any]:
    """A succeeded job as OpenAI's output line (its ``chat.completion`` as the body)."""
    created = int(result.finished_at.timestamp()) if result.finished_at else 0
    body = completion_body(result, str(metadata.get(REQUEST_MODEL, "auto")), created)
    return {
        "id": f"batch_req_{result.job_id.replace('-', '')}",
        "custom_id": metadata.get(CUSTOM_ID),
        "response": {"status_code": 200, "request_id": result.job_id, "body": body},
        "error": None,
    }


def error_line(result: JobResult, metadata: dict[str, Any]) -> dict[str, Any]:
    """A job that ended without an answer as OpenAI's error line."""
    code = ERROR_CODES.get(result.status, "job_failed")
    message = f"job {result.job_id} {result.status}: {result.error or 'no answer'}"
    return {
        "id": f"batch_req_{result.job_id.replace('-', '')}",
        "custom_id": metadata.get(CUSTOM_ID),
        "response": None,
        "error": {"code": code, "message": message},
    }


def refused_line(refusal: dict[str, Any]) -> dict[str, Any]:
    """A line the submitter refused (stored as ``{line, custom_id, message}``) as an error line."""
    return {
        "id": f"batch_req_line_{refusal['line']}",
        "custom_id": refusal.get("custom_id"),
        "response": None,
        "error": {"code": "invalid_request", "message": refusal["message"]},
    }


def jsonl(line: dict[str, Any]) -> bytes:
    """One line of a JSONL file."""
    return (json.dumps(line, separators=(",", ":")) + "\n").encode()
