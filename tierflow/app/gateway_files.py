"""OpenAI's Files API at the gateway, for batch input files: ``POST /v1/files`` (multipart,
``purpose`` ``batch``), ``GET /v1/files/{file_id}``, ``GET /v1/files/{file_id}/content`` (an
input file, or a batch's output or error file) and ``DELETE /v1/files/{file_id}`` (files are
kept until deleted; an input file is kept while a batch that has not ended reads it: 409).

The bytes are stored in PostgreSQL (:mod:`tierflow.store.gateway_batches`), owned by the key's
daemon: another daemon's file is a 404. An upload is at most
:data:`~tierflow.app.gateway_batch_lines.MAX_FILE_BYTES` (200 MiB, OpenAI's limit); its lines
are checked when a batch is created from it, as OpenAI does. The multipart body is read whole
(refused past the limit as it arrives) and split here: no multipart dependency.
"""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tierflow.app.gateway_batch_lines import MAX_FILE_BYTES
from tierflow.app.gateway_http import BadRequest, blocking, guarded
from tierflow.store.gateway_batches import (
    FileInfo,
    delete_file,
    file_content,
    file_info,
    store_file,
)

MULTIPART_SLACK = 64 * 1024  # bytes of a form besides its file (boundaries, headers, purpose)
PURPOSE = "batch"
_NAME = re.compile(r'(?:^|;)\s*name="([^"]*)"')
_FILENAME = re.compile(r'(?:^|;)\s*filename="([^"]*)"')


def file_object(info: FileInfo) -> dict[str, Any]:
    """OpenAI's file object (``bytes``: size; ``created_at``: Unix seconds)."""
    return {
        "id": info.id,
        "object": "file",
        "bytes": info.size,
        "created_at": int(info.created_at.timestamp()),
        "filename": info.filename,
        "purpose": info.purpose,
        "status": "processed",
        "status_details": None,
        "expires_at": None,
    }


async def limited_body(request: Request, limit: int) -> bytes:
    """The request's body, refused with 413 as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length", "")
    too_large = BadRequest(413, f"the upload is over {limit} bytes", "file", "file_too_large")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _boundary(content_type: str) -> bytes:
    kind, _, params = content_type.partition(";")
    if kind.strip().lower() != "multipart/form-data":
        raise BadRequest(400, "the body must be multipart/form-data (file and purpose)", None)
    for param in params.split(";"):
        key, _, value = param.strip().partition("=")
        if key.lower() == "boundary" and value.strip('"'):
            return value.strip('"').encode()
    raise BadRequest(400, "the multipart body names no boundary", None)


def parse_form(body: bytes, content_type: str) -> dict[str, tuple[str | None, bytes]]:
    """A ``multipart/form-data`` body as ``{name: (filename or None, bytes)}``; BadRequest
    (400) for another content type or a malformed part."""
    delimiter = b"--" + _boundary(content_type)
    fields: dict[str, tuple[str | None, bytes]] = {}
    for part in body.split(delimiter)[1:]:
        if part.startswith(b"--"):
            break  # the closing delimiter
        head, sep, data = part.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        if not sep:
            raise BadRequest(400, "a multipart part has no header block", None)
        disposition = ""
        for header in head.decode("utf-8", "replace").split("\r\n"):
            key, _, text = header.partition(":")
            if key.strip().lower() == "content-disposition":
                disposition = text
        name = _NAME.search(disposition)
        if name is None:
            raise BadRequest(400, "a multipart part has no name", None)
        filename = _FILENAME.search(disposition)
        fields[name.group(1)] = (
            filename.group(1) if filename else None,
            data.removesuffix(b"\r\n"),
        )
    return fields


@guarded
async def create_file(request: Request, daemon: str) -> Response:
    """``POST /v1/files``: store a batch input file; OpenAI's file object."""
    body = await limited_body(request, MAX_FILE_BYTES + MULTIPART_SLACK)
    form = parse_form(body, request.headers.get("content-type", ""))
    purpose = form.get("purpose", (None, b""))[1].decode("utf-8", "replace")
    if purpose != PURPOSE:
        raise BadRequest(400, f"purpose must be {PURPOSE!r} (the only one served)", "purpose")
    if "file" not in form:
        raise BadRequest(400, "file is required (the JSONL batch input)", "file")
    filename, content = form["file"]
    if len(content) > MAX_FILE_BYTES:
        raise BadRequest(413, f"a file is at most {MAX_FILE_BYTES} bytes", "file", "file_too_large")
    name = filename or "batch.jsonl"
    info = await blocking(request, store_file, daemon, PURPOSE, name, content)
    return JSONResponse(file_object(info))


def _not_found(file_id: str) -> BadRequest:
    return BadRequest(404, f"no file {file_id}", "file_id")


@guarded
async def get_file(request: Request, daemon: str) -> Response:
    """``GET /v1/files/{file_id}``: the daemon's file object."""
    file_id = request.path_params["file_id"]
    info = await blocking(request, file_info, file_id, daemon)
    if info is None:
        raise _not_found(file_id)
    return JSONResponse(file_object(info))


@guarded
async def get_file_content(request: Request, daemon: str) -> Response:
    """``GET /v1/files/{file_id}/content``: the daemon's file's bytes."""
    file_id = request.path_params["file_id"]
    content = await blocking(request, file_content, file_id, daemon)
    if content is None:
        raise _not_found(file_id)
    return Response(content, media_type="application/octet-stream")


@guarded
async def remove_file(request: Request, daemon: str) -> Response:
    """``DELETE /v1/files/{file_id}``: OpenAI's deletion object."""
    file_id = request.path_params["file_id"]
    deleted = await blocking(request, delete_file, file_id, daemon)
    if deleted is None:
        raise _not_found(file_id)
    if not deleted:
        message = f"file {file_id} is the input of a batch that has not ended"
        raise BadRequest(409, message, "file_id", "file_in_use")
    return JSONResponse({"id": file_id, "object": "file", "deleted": True})


FILE_ROUTES = [
    Route("/v1/files", create_file, methods=["POST"]),
    Route("/v1/files/{file_id}", get_file, methods=["GET"]),
    Route("/v1/files/{file_id}", remove_file, methods=["DELETE"]),
    Route("/v1/files/{file_id}/content", get_file_content, methods=["GET"]),
]
