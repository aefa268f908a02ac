"""The gateway's OpenAPI 3.1 document, written by hand next to the routes it describes
(:mod:`tierflow.app.gateway`); ``tests/integration/test_gateway.py`` checks the responses
against it with schemathesis."""

from __future__ import annotations

from typing import Any

ERROR = {"$ref": "#/components/schemas/Error"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "invalid request (the error's param names the field)",
        401: "no API key, a wrong one or a revoked one",
        404: "unknown job, model, file or batch",
        409: "conflict",
        413: "the upload is too large",
        502: "the job failed",
        503: "the fleet's stores are unavailable",
        504: "the job did not finish in time",
    }
    return {str(c): _json(ERROR, text[c]) for c in codes}


JOB_ID = {
    "name": "job_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "minLength": 1, "maxLength": 64},
}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["message", "type", "param", "code"],
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "param": {"type": ["string", "null"]},
                    "code": {"type": ["string", "null"]},
                },
            }
        },
    },
    "ChatMessage": {
        "type": "object",
        "required": ["role", "content"],
        "properties": {
            "role": {"enum": ["system", "developer", "user", "assistant", "tool"]},
            "content": {
                "oneOf": [
                    {"type": "string"},
                    {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["type", "text"],
                            "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
                        },
                    },
                ]
            },
        },
    },
    "ChatRequest": {
        "type": "object",
        "required": ["model", "messages"],
        "properties": {
            "model": {
                "type": "string",
                "minLength": 1,
                "description": "auto, or tierflow/<action> (GET /v1/models)",
            },
            "messages": {"type": "array", "minItems": 1, "items": _ref("ChatMessage")},
            "stream": {"type": "boolean"},
            "stream_options": {
                "type": "object",
                "properties": {"include_usage": {"type": "boolean"}},
            },
            "cache": {"type": "boolean", "description": "false: never answered from the cache"},
        },
        "additionalProperties": True,
    },
    "Usage": {
        "type": "object",
        "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
        "properties": {
            "prompt_tokens": {"type": "integer"},
            "completion_tokens": {"type": "integer"},
            "total_tokens": {"type": "integer"},
        },
    },
    "ChatCompletion": {
        "type": "object",
        "required": ["id", "object", "created", "model", "choices", "usage"],
        "properties": {
            "id": {"type": "string"},
            "object": {"const": "chat.completion"},
            "created": {"type": "integer"},
            "model": {"type": "string"},
            "choices": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["index", "message", "finish_reason"],
                    "properties": {
                        "index": {"type": "integer"},
                        "message": {
                            "type": "object",
                            "required": ["role", "content"],
                            "properties": {
                                "role": {"const": "assistant"},
                                "content": {"type": "string"},
                            },
                        },
                        "finish_reason": {"type": "string"},
                    },
                },
            },
            "usage": _ref("Usage"),
        },
    },
    "ModelList": {
        "type": "object",
        "required": ["object", "data"],
        "properties": {
            "object": {"const": "list"},
            "data": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["id", "object", "created", "owned_by"],
                    "properties": {
                        "id": {"type": "string"},
                        "object": {"const": "model"},
                        "created": {"type": "integer"},
                        "owned_by": {"type": "string"},
                    },
                },
            },
        },
    },
    "JobRequest": {
        "type": "object",
        "required": ["prompt"],
        "additionalProperties": False,
        "properties": {
            "prompt": {"type": "string", "minLength": 1},
            "action_type": {"type": "string", "pattern": "^[a-z][a-z0-9_]{0,63}$"},
            "context": {"type": "object"},
            "idempotency_key": {"type": ["string", "null"], "minLength": 1, "maxLength": 135},
            "priority": {"type": "integer", "minimum": 0, "maximum": 9},
            "deadline": {"type": ["string", "null"], "format": "date-time"},
            "metadata": {"type": "object"},
            "stream": {"type": "boolean"},
            "allow_degraded": {"type": "boolean"},
            "cache": {"type": "boolean", "description": "false: never answered from the cache"},
        },
    },
    "JobAccepted": {
        "type": "object",
        "required": ["job_id", "created", "sent", "note", "status"],
        "properties": {
            "job_id": {"type": "string"},
            "created": {"type": "boolean"},
            "sent": {"type": "boolean"},
            "note": {"type": ["string", "null"]},
            "status": {"type": ["string", "null"]},
        },
    },
    "Attempt": {
        "type": "object",
        "required": ["attempt_no", "tier", "model", "status"],
        "properties": {
            "attempt_no": {"type": "integer"},
            "tier": {"type": "string"},
            "model": {"type": ["string", "null"]},
            "status": {"type": "string"},
            "error": {"type": ["string", "null"]},
            "quality": {"type": ["number", "null"]},
            "issues": {"type": "array", "items": {"type": "string"}},
            "input_tokens": {"type": "integer"},
            "output_tokens": {"type": "integer"},
            "cost_usd": {"type": "number"},
            "latency_ms": {"type": ["number", "null"]},
            "cached": {"enum": ["exact", "semantic", None]},
            "queue_ms": {"type": ["number", "null"]},
        },
    },
    "JobResult": {
        "type": "object",
        "required": ["job_id", "status", "attempts", "cost_usd"],
        "properties": {
            "job_id": {"type": "string"},
            "status": {"type": "string"},
            "text": {"type": ["string", "null"]},
            "tier": {"type": ["string", "null"]},
            "model": {"type": ["string", "null"]},
            "provider": {"type": ["string", "null"]},
            "attempts": {"type": "array", "items": _ref("Attempt")},
            "cost_usd": {"type": "number"},
            "api_baseline_cost_usd": {"type": "number"},
            "quality": {"type": ["number", "null"]},
            "latency_ms": {"type": ["number", "null"]},
            "error": {"type": ["string", "null"]},
            "degraded": {"type": "boolean"},
            "fake": {"type": "boolean"},
            "input_tokens": {"type": "integer"},
            "output_tokens": {"type": "integer"},
            "finished_at": {"type": ["string", "null"], "format": "date-time"},
            "cached": {"enum": ["exact", "semantic", None]},
            "queue_ms": {"type": ["number", "null"]},
            "model_ms": {"type": ["number", "null"]},
            "fleet_ms": {"type": ["number", "null"]},
            "overhead_ms": {"type": ["number", "null"]},
        },
    },
    "Feedback": {
        "type": "object",
        "required": ["correct"],
        "additionalProperties": False,
        "properties": {
            "correct": {"type": "boolean"},
            "note": {"type": ["string", "null"], "maxLength": 2000},
        },
    },
    "FeedbackRecorded": {
        "type": "object",
        "required": ["label_id", "job_id"],
        "properties": {"label_id": {"type": "integer"}, "job_id": {"type": "string"}},
    },
}

_TIME = {"type": ["integer", "null"], "description": "Unix seconds"}
_ID = {"type": ["string", "null"]}

SCHEMAS.update(
    {
        "File": {
            "type": "object",
            "required": ["id", "object", "bytes", "created_at", "filename", "purpose"],
            "properties": {
                "id": {"type": "string"},
                "object": {"const": "file"},
                "bytes": {"type": "integer", "description": "size in bytes"},
                "created_at": {"type": "integer", "description": "Unix seconds"},
                "filename": {"type": "string"},
                "purpose": {"enum": ["batch", "batch_output"]},
                "status": {"type": "string"},
            },
        },
        "FileDeleted": {
            "type": "object",
            "required": ["id", "object", "deleted"],
            "properties": {
                "id": {"type": "string"},
                "object": {"const": "file"},
                "deleted": {"const": True},
            },
        },
        "FileUpload": {
            "type": "object",
            "required": ["file", "purpose"],
            "properties": {
                "file": {"type": "string", "contentMediaType": "application/octet-stream"},
                "purpose": {"const": "batch"},
            },
        },
        "BatchRequest": {
            "type": "object",
            "required": ["input_file_id", "endpoint", "completion_window"],
            "additionalProperties": False,
            "properties": {
                "input_file_id": {"type": "string", "minLength": 1},
                "endpoint": {"const": "/v1/chat/completions"},
                "completion_window": {"const": "24h"},
                "metadata": {
                    "type": ["object", "null"],
                    "maxProperties": 16,
                    "additionalProperties": {"type": "string", "maxLength": 512},
                },
            },
        },
        "Batch": {
            "type": "object",
            "required": [
                *("id", "object", "endpoint", "input_file_id", "completion_window"),
                *("status", "created_at", "request_counts"),
            ],
            "properties": {
                "id": {"type": "string"},
                "object": {"const": "batch"},
                "endpoint": {"type": "string"},
                "errors": {
                    "type": ["object", "null"],
                    "properties": {
                        "object": {"const": "list"},
                        "data": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["code", "message", "line"],
                                "properties": {
                                    "code": {"type": "string"},
                                    "message": {"type": "string"},
                                    "param": _ID,
                                    "line": {"type": ["integer", "null"]},
                                },
                            },
                        },
                    },
                },
                "input_file_id": {"type": "string"},
                "completion_window": {"type": "string"},
                "status": {
                    "enum": [
                        *("validating", "in_progress", "finalizing", "completed"),
                        *("failed", "expired", "cancelling", "cancelled"),
                    ]
                },
                "output_file_id": _ID,
                "error_file_id": _ID,
                **{
                    f"{name}_at": _TIME
                    for name in (
                        *("created", "in_progress", "finalizing", "completed", "failed"),
                        *("cancelling", "cancelled", "expires", "expired"),
                    )
                },
                "request_counts": {
                    "type": "object",
                    "required": ["total", "completed", "failed"],
                    "properties": {
                        "total": {"type": "integer"},
                        "completed": {"type": "integer"},
                        "failed": {"type": "integer"},
                    },
                },
                "metadata": {"type": ["object", "null"]},
            },
        },
        "BatchList": {
            "type": "object",
            "required": ["object", "data", "has_more"],
            "properties": {
                "object": {"const": "list"},
                "data": {"type": "array", "items": _ref("Batch")},
                "first_id": _ID,
                "last_id": _ID,
                "has_more": {"type": "boolean"},
            },
        },
    }
)

RESULT_HEADERS = {
    name: {"schema": {"type": "string"}, "description": text}
    for name, text in (
        ("x-tierflow-job-id", "the job's id"),
        ("x-tierflow-action", "the action the job ran as"),
        ("x-tierflow-route", "the tiers tried, in order, comma-separated"),
        ("x-tierflow-tier", "the tier that answered"),
        ("x-tierflow-model", "the model that answered"),
        ("x-tierflow-cost-usd", "what the job cost, US dollars"),
        ("x-tierflow-quality", "the gate's score of the answer"),
        ("x-tierflow-cached", "exact or semantic: the answer came from the cache (else -)"),
    )
}


def openapi_document() -> dict[str, Any]:
    """The document served at ``/openapi.json``: every route of the gateway, its bodies and
    answers, and the bearer key all but this one need."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "tierflow gateway",
            "version": "1",
            "description": "OpenAI-compatible chat completions, files and batches, and a jobs "
            "API over the fleet.",
        },
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"apiKey": []}],
        "paths": {
            **_chat_paths(),
            **_job_paths(),
            **_file_paths(),
            **_batch_paths(),
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "security": [],
                    "responses": {"200": {"description": "this document"}},
                }
            },
        },
    }


def _body(schema: str) -> dict[str, Any]:
    """A required JSON request body of the named schema."""
    return {"required": True, "content": {"application/json": {"schema": _ref(schema)}}}


def _chat_paths() -> dict[str, Any]:
    """``/v1/chat/completions`` (a JSON answer or SSE, with the result headers) and
    ``/v1/models``."""
    chat_ok = _json(_ref("ChatCompletion"), "the answer (or, with stream, an SSE stream)")
    chat_ok["content"]["text/event-stream"] = {"schema": {"type": "string"}}
    chat_ok["headers"] = RESULT_HEADERS
    chat_failed = _json(ERROR, "the job failed")
    chat_failed["headers"] = RESULT_HEADERS
    action = {"name": "x-tierflow-action", "in": "header", "required": False}
    return {
        "/v1/chat/completions": {
            "post": {
                "operationId": "createChatCompletion",
                "requestBody": _body("ChatRequest"),
                "parameters": [{**action, "schema": {"type": "string"}}],
                "responses": {
                    "200": chat_ok,
                    "502": chat_failed,
                    **_errors(400, 401, 404, 503, 504),
                },
            }
        },
        "/v1/models": {
            "get": {
                "operationId": "listModels",
                "responses": {
                    "200": _json(_ref("ModelList"), "auto and tierflow/<action>"),
                    **_errors(401, 503),
                },
            }
        },
    }


def _job_paths() -> dict[str, Any]:
    """The jobs API: submit, read, wait, feedback."""
    timeout = {
        "name": "timeout",
        "in": "query",
        "required": False,
        "schema": {"type": "number", "minimum": 0, "maximum": 60},
    }
    return {
        "/v1/jobs": {
            "post": {
                "operationId": "submitJob",
                "requestBody": _body("JobRequest"),
                "responses": {
                    "201": _json(_ref("JobAccepted"), "stored and sent"),
                    "200": _json(_ref("JobAccepted"), "the idempotency key's earlier job"),
                    **_errors(400, 401, 409, 503),
                },
            }
        },
        "/v1/jobs/{job_id}": {
            "get": {
                "operationId": "getJob",
                "parameters": [JOB_ID],
                "responses": {
                    "200": _json(_ref("JobResult"), "the job now"),
                    **_errors(401, 404, 503),
                },
            }
        },
        "/v1/jobs/{job_id}/wait": {
            "get": {
                "operationId": "waitJob",
                "parameters": [JOB_ID, timeout],
                "responses": {
                    "200": _json(_ref("JobResult"), "finished"),
                    "202": _json(_ref("JobResult"), "not finished when the timeout ran out"),
                    **_errors(400, 401, 404, 503),
                },
            }
        },
        "/v1/jobs/{job_id}/feedback": {
            "post": {
                "operationId": "jobFeedback",
                "parameters": [JOB_ID],
                "requestBody": _body("Feedback"),
                "responses": {
                    "201": _json(_ref("FeedbackRecorded"), "the label is stored"),
                    **_errors(400, 401, 404, 409, 503),
                },
            }
        },
    }


def _path_id(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _file_paths() -> dict[str, Any]:
    """OpenAI's Files API for batch input (and the batches' output and error files)."""
    upload = {"multipart/form-data": {"schema": _ref("FileUpload")}}
    content = {
        "description": "the file's bytes (JSONL)",
        "content": {"application/octet-stream": {"schema": {"type": "string"}}},
    }
    return {
        "/v1/files": {
            "post": {
                "operationId": "createFile",
                "requestBody": {"required": True, "content": upload},
                "responses": {
                    "200": _json(_ref("File"), "stored"),
                    **_errors(400, 401, 413, 503),
                },
            }
        },
        "/v1/files/{file_id}": {
            "get": {
                "operationId": "retrieveFile",
                "parameters": [_path_id("file_id")],
                "responses": {"200": _json(_ref("File"), "the file"), **_errors(401, 404, 503)},
            },
            "delete": {
                "operationId": "deleteFile",
                "parameters": [_path_id("file_id")],
                "responses": {
                    "200": _json(_ref("FileDeleted"), "deleted"),
                    **_errors(401, 404, 409, 503),
                },
            },
        },
        "/v1/files/{file_id}/content": {
            "get": {
                "operationId": "downloadFile",
                "parameters": [_path_id("file_id")],
                "responses": {"200": content, **_errors(401, 404, 503)},
            }
        },
    }


def _batch_paths() -> dict[str, Any]:
    """OpenAI's Batch API: create, list, retrieve, cancel."""
    batch_id = [_path_id("batch_id")]
    page = [
        {"name": "limit", "in": "query", "required": False}
        | {"schema": {"type": "integer", "minimum": 1, "maximum": 100}},
        {"name": "after", "in": "query", "required": False, "schema": {"type": "string"}},
    ]
    return {
        "/v1/batches": {
            "post": {
                "operationId": "createBatch",
                "requestBody": _body("BatchRequest"),
                "responses": {
                    "200": _json(_ref("Batch"), "in_progress, or failed with its errors"),
                    **_errors(400, 401, 404, 503),
                },
            },
            "get": {
                "operationId": "listBatches",
                "parameters": page,
                "responses": {
                    "200": _json(_ref("BatchList"), "newest first"),
                    **_errors(400, 401, 503),
                },
            },
        },
        "/v1/batches/{batch_id}": {
            "get": {
                "operationId": "retrieveBatch",
                "parameters": batch_id,
                "responses": {"200": _json(_ref("Batch"), "the batch"), **_errors(401, 404, 503)},
            }
        },
        "/v1/batches/{batch_id}/cancel": {
            "post": {
                "operationId": "cancelBatch",
                "parameters": batch_id,
                "responses": {
                    "200": _json(_ref("Batch"), "cancelling, or cancelled"),
                    **_errors(401, 404, 409, 503),
                },
            }
        },
    }
