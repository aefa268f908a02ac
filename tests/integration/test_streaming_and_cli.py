"""Streaming jobs deliver chunks to the waiter; the report commands read the same database."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from router import submit_job
from tests.support.services import fake_model, fleet_config
from tierflow.cli import app

# One test of this module runs in the fast lane (pytest -m "not slow", README); the
# others carry the slow mark.
pytestmark = [pytest.mark.integration]


def _cli(*args: str) -> str:
    from tierflow.cli import fleet_cmds, job_cmds, report_cmds  # noqa: F401 - register commands

    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_stream_delivers_chunks_then_the_stored_result(fleet) -> None:
    fleet(fleet_config(local_fast=[fake_model("streamer", latency_ms=5)]))
    handle = submit_job("Extract topic from: 'streaming works'", "extract_topic", stream=True)
    chunks = list(handle.stream(timeout=30))
    assert len(chunks) > 3 and all(c["type"] == "chunk" for c in chunks)
    assert chunks[-1]["done"] is True and chunks[-1]["usage"]["output_tokens"] > 0
    assert "".join(c["delta"] for c in chunks) == chunks[-1]["text"]
    assert all(set(c) >= {"delta", "text", "done", "provider"} for c in chunks)
    result = handle.wait(timeout=5)
    assert result.status == "succeeded" and result.text == chunks[-1]["text"]


@pytest.mark.slow
def test_rejected_stream_is_reset_before_the_next_tier(fleet) -> None:
    fleet(fleet_config(local_fast=[fake_model("bad-stream", answer="bad_json")]))
    handle = submit_job("Is this a decision or a fact? 'X'", "classify_memory", stream=True)
    events = list(handle.stream(timeout=30))
    kinds = [e["type"] for e in events]
    assert "reset" in kinds and kinds[-1] == "chunk" and events[-1]["done"]
    assert handle.wait(timeout=5).tier == "local_quality"


@pytest.mark.slow
def test_report_commands(fleet, tmp_path: Path) -> None:
    fleet(fleet_config())
    handle = submit_job("Summarize these decisions into a note", "write_memory")
    assert handle.wait(timeout=30).ok
    costs = _cli("costs")
    assert "savings" in costs and "local_quality" in costs
    out = tmp_path / "usage.jsonl"
    assert "attempts written" in _cli("export", "--jsonl", str(out))
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert any(line["job_id"] == handle.job_id for line in lines)
    assert "local" in _cli("mode", "local", "--reason", "test")
    assert "mode local" in _cli("mode")
    explained = _cli("route", "--explain", "--action", "spawn_daemon", "ORCHESTRATE: auth")
    assert "quality-critical" in explained and "mode local" in explained
    _cli("mode", "auto")
    status = _cli("status")
    assert "Mode" in status and "fake-fast (FAKE)" in status
