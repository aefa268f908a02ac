"""The gateway's batch input checks and its multipart reading, without a fleet: every bad line
is named with its number, a good line is the job spec ``submit_batch`` takes."""

from __future__ import annotations

import json

import pytest

from tierflow.app.gateway_batch_lines import MAX_FILE_LINES, check_file, job_specs
from tierflow.app.gateway_files import parse_form
from tierflow.app.gateway_http import BadRequest


def line(custom_id: str = "a", **changes: object) -> str:
    body = {"model": "tierflow/classify_memory", "messages": [{"role": "user", "content": "hi"}]}
    entry = {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}
    return json.dumps({**entry, **changes})


def test_good_lines_become_job_specs_carrying_daemon_and_custom_id() -> None:
    content = (line("a") + "\n\n" + line("b", body={"model": "auto", "messages": [
        {"role": "system", "content": "be brief"}, {"role": "user", "content": "Summarize: x"}
    ], "cache": False}) + "\n").encode()  # fmt: skip
    assert check_file(content, "d1", "batch_1") == (2, [])
    first, second = job_specs(content, "d1", "batch_1")
    assert first["action_type"] == "classify_memory" and first["prompt"] == "hi"
    assert first["metadata"] == {
        "daemon": "d1",
        "openai_batch": "batch_1",
        "custom_id": "a",
        "request_model": "tierflow/classify_memory",
    }
    assert second["action_type"] == "unknown" and second["metadata"]["cache"] is False
    assert second["context"]["conversation"] == [{"role": "system", "content": "be brief"}]


def test_every_bad_line_is_named_with_its_number() -> None:
    content = "\n".join(
        [
            line("a"),
            "[1, 2]",
            line("a"),
            line("s", body={"model": "auto", "stream": True, "messages": [
                {"role": "user", "content": "x"}]}),
            line("p", body={"model": "tierflow/Bad Name", "messages": [
                {"role": "user", "content": "x"}]}),
            line(""),
            line("e", extra=1),
        ]
    ).encode()  # fmt: skip
    lines, errors = check_file(content, "d1", "b")
    assert lines == 7
    assert [(e["line"], e["code"]) for e in errors] == [
        (2, "invalid_json_line"),
        (3, "duplicate_custom_id"),
        (4, "invalid_body"),
        (5, "invalid_body"),
        (6, "missing_custom_id"),
        (7, "invalid_request"),
    ]
    assert "line 1" in errors[1]["message"] and "stream" in errors[2]["message"]


def test_an_empty_or_oversized_file_is_one_error() -> None:
    assert check_file(b"\n \n", "d", "b")[1][0]["code"] == "empty_file"
    assert check_file(b"\xff\xfe", "d", "b")[1][0]["code"] == "invalid_file"
    many = (line("x") + "\n") * (MAX_FILE_LINES + 1)
    assert check_file(many.encode(), "d", "b")[1][0]["code"] == "too_many_lines"


def test_multipart_form_is_read_as_the_sdk_sends_it() -> None:
    body = (
        b'--xyz\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
        b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="in.jsonl"\r\n'
        b'Content-Type: application/octet-stream\r\n\r\n{"a": 1}\n\r\n--xyz--\r\n'
    )
    form = parse_form(body, "multipart/form-data; boundary=xyz")
    assert form == {"purpose": (None, b"batch"), "file": ("in.jsonl", b'{"a": 1}\n')}
    with pytest.raises(BadRequest):
        parse_form(body, "application/json")
    with pytest.raises(BadRequest):
        parse_form(b"--xyz\r\nno header end", "multipart/form-data; boundary=xyz")
