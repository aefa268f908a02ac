"""A batch file stored in chunks (no worker needed): bad lines reported by their number and
stored nowhere, the rest stored once per line across chunks, a rerun resuming line by line,
a changed line refused alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from router.batch import CHUNK_LINES, read_jsonl, submit_batch
from schemas.jobs import JobRequest
from schemas.tables import Job
from tests.support.services import fleet_config
from tierflow.core.db import session_scope
from tierflow.store.batch_jobs import NewLine, create_batch_jobs

pytestmark = [pytest.mark.integration]

LINES = CHUNK_LINES * 2 + 37  # three chunks, the last one short


def _spec(i: int) -> str:
    return json.dumps({"prompt": f"Extract topic from: 'note {i}'", "action_type": "extract_topic"})


def _lines_of(batch_id: str) -> list[tuple[int, str]]:
    with session_scope() as session:
        rows = session.query(Job.batch_line, Job.status).filter(Job.batch_id == batch_id)
        return sorted((line, status) for line, status in rows)


def test_a_file_is_stored_in_chunks_with_its_bad_lines_refused_by_number(
    fleet, tmp_path: Path
) -> None:
    fleet(fleet_config(), workers=0)
    text = [_spec(i) for i in range(LINES)]
    text[2] = "{not json"
    text[CHUNK_LINES + 5] = "[1, 2]"
    path = tmp_path / "chunks.jsonl"
    path.write_text("\n".join(text) + "\n")

    done = submit_batch(read_jsonl(path), name="chunked", in_flight=0)
    bad = [2, CHUNK_LINES + 5]
    assert done.lines == LINES and done.sent == LINES - 2 and done.existing == 0
    assert [e.line for e in done.errors] == [b + 1 for b in bad]
    assert f"{path}:3: not valid JSON" in done.errors[0].reason
    assert "must be a JSON object" in done.errors[1].reason
    stored = _lines_of(done.batch_id)
    assert [line for line, _ in stored] == [i for i in range(LINES) if i not in bad]
    assert {status for _, status in stored} == {"routed"}  # planned by the submitter

    text[7] = _spec(10_000)  # a changed line: its key is bound to the first request
    path.write_text("\n".join(text) + "\n")
    again = submit_batch(read_jsonl(path), name="chunked", in_flight=0)
    assert again.sent == 0 and again.existing == LINES - 3
    assert [e.line for e in again.errors] == [3, 8, CHUNK_LINES + 6]
    assert "idempotency_key" in again.errors[1].reason
    assert _lines_of(done.batch_id) == stored


def test_a_chunk_with_one_key_twice_is_refused_whole(fleet) -> None:
    fleet(fleet_config(), workers=0)
    request = JobRequest(prompt="twice", action_type="extract_topic", idempotency_key="k:twice")
    with pytest.raises(ValueError, match="twice"):
        create_batch_jobs([NewLine(request, 0), NewLine(request, 1)], "no-batch", 60)
    with session_scope() as session:
        assert session.query(Job).filter(Job.idempotency_key == "k:twice").count() == 0
