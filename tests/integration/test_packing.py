"""Packed batches on real Redis, PostgreSQL and worker processes: small label jobs answered a
pack per call, each job with its own result and gate verdict; a garbled part escalates alone;
a rerun resumes without a duplicate; other lines of the same batch are sent one by one."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest

from router.batch import BatchError, BatchHandle, submit_batch
from schemas.tables import Job
from tests.support.fake_providers import OpenAIServer
from tests.support.services import fake_model, fleet_config
from tierflow import store
from tierflow.core.db import session_scope

# One test of this module runs in the fast lane (pytest -m "not slow", README); the
# others carry the slow mark.
pytestmark = [pytest.mark.integration]

LABELS = ["positive", "negative"]
ITEM = re.compile(r"Item (\d+):\n(.*?)(?=\n\nItem \d+:|\n\nAnswers)", re.S)
TRUTH = re.compile(r"\[truth: (\w+)\]")


def answerer(garble: str = "GARBLE") -> Callable[[str], str]:
    """Each item answered with its ``[truth: X]``; an item holding ``garble`` gets a line with
    no label, and one unpacked prompt gets its truth alone."""

    def answer(prompt: str) -> str:
        items = ITEM.findall(prompt)
        if not items:
            found = TRUTH.search(prompt)
            return found[1] if found else "positive"
        lines = []
        for number, text in items:
            found = TRUTH.search(text)
            label = "no idea" if garble in text else (found[1] if found else "positive")
            lines.append(f"{number}: {label}")
        return "Here you go:\n" + "\n".join(lines)

    return answer


def config(srv: OpenAIServer) -> dict[str, Any]:
    local = {"name": "packer", "provider": "vllm", "model_id": "fake-model",
             "base_url": srv.url, "max_tokens": 32}  # fmt: skip
    actions = {
        "sentiment": {"answer": "label", "labels": LABELS},
        "consolidate": {"answer": "text"},
    }
    return fleet_config(
        local_fast=[local],
        local_quality=[fake_model("quality")],
        actions=actions,
        action_tier_overrides={"sentiment": "local_fast"},
    )


def rows(count: int, garbled: set[int] | None = None) -> list[dict[str, Any]]:
    out = []
    for i in range(count):
        truth = LABELS[i % 2]
        mark = " GARBLE" if garbled and i in garbled else ""
        prompt = f"[truth: {truth}] Is sentence {i} positive or negative?{mark}"
        out.append({"prompt": prompt, "action_type": "sentiment"})
    return out


def jobs_of(batch_id: str) -> list[Job]:
    with session_scope() as session:
        return list(session.query(Job).filter(Job.batch_id == batch_id).order_by(Job.batch_line))


def completions(srv: OpenAIServer) -> int:
    return sum(1 for c in srv.calls if c.path.endswith("/chat/completions"))


def test_a_packed_batch_answers_each_job_on_its_own(fleet) -> None:
    with OpenAIServer(answer=answerer()) as srv:
        fleet(config(srv), workers=1, concurrency=4)
        specs = rows(12, garbled={5})
        done = submit_batch(iter(specs), name="packed", pack=4)
        assert (done.lines, done.sent, done.errors) == (12, 12, [])
        final = BatchHandle(done.batch_id).wait(timeout=60)
        assert final["statuses"] == {"succeeded": 12}
        assert completions(srv) == 3, "one call per pack of 4"
        jobs = jobs_of(done.batch_id)
        for i, job in enumerate(jobs):
            attempts = store.attempts_of(job.id)
            first = attempts[0]
            assert (first.tier, (first.quality_components or {})["pack"]["size"]) == (
                "local_fast",
                4,
            )
            if i == 5:  # the garbled part: rejected by its own gate, escalated alone
                assert first.status == "rejected" and "no label" in " ".join(
                    first.quality_issues or []
                )
                assert [a.tier for a in attempts] == ["local_fast", "local_quality"]
                assert job.tier == "local_quality"
                continue
            assert first.status == "passed" and len(attempts) == 1
            assert job.text == LABELS[i % 2] and job.tier == "local_fast"
        in_tokens = sum(store.attempts_of(j.id)[0].input_tokens for j in jobs)
        assert in_tokens == sum(c.input_tokens for c in srv.calls if c.input_tokens)


@pytest.mark.slow
def test_a_part_missing_from_the_answer_is_that_jobs_error_alone(fleet) -> None:
    def drop_second(prompt: str) -> str:
        return "\n".join(
            line for line in answerer()(prompt).splitlines() if not line.startswith("2:")
        )

    with OpenAIServer(answer=drop_second) as srv:
        fleet(config(srv), workers=1, concurrency=4)
        done = submit_batch(iter(rows(3)), name="missing-part", pack=3)
        BatchHandle(done.batch_id).wait(timeout=60)
        jobs = jobs_of(done.batch_id)
        assert [j.status for j in jobs] == ["succeeded"] * 3
        assert [j.tier for j in jobs] == ["local_fast", "local_quality", "local_fast"]
        first = store.attempts_of(jobs[1].id)[0]
        assert first.error_kind == "malformed_response" and "no line for item 2" in first.error
        assert completions(srv) == 1


@pytest.mark.slow
def test_a_rerun_resumes_a_packed_batch_without_a_duplicate(fleet) -> None:
    with OpenAIServer(answer=answerer()) as srv:
        fleet(config(srv), workers=1, concurrency=4)
        specs = rows(10)
        first = submit_batch(iter(specs[:6]), name="resume", pack=4)
        BatchHandle(first.batch_id).wait(timeout=60)
        calls = completions(srv)
        assert calls == 2  # 4 + 2
        again = submit_batch(iter(specs), name="resume", pack=4)
        assert (again.sent, again.existing) == (4, 6)
        final = BatchHandle(first.batch_id).wait(timeout=60)
        assert final["statuses"] == {"succeeded": 10}
        assert completions(srv) == calls + 1, "only the 4 new lines were called, as one pack"
        jobs = jobs_of(first.batch_id)
        assert [j.batch_line for j in jobs] == list(range(10))
        assert all(len(store.attempts_of(j.id)) == 1 for j in jobs)
        # And once more: everything is done, nothing is sent or called.
        last = submit_batch(iter(specs), name="resume", pack=4)
        assert (last.sent, last.existing) == (0, 10)
        assert completions(srv) == calls + 1


@pytest.mark.slow
def test_other_lines_of_a_packed_batch_are_sent_on_their_own(fleet) -> None:
    with OpenAIServer(answer=answerer()) as srv:
        fleet(config(srv), workers=1, concurrency=4)
        specs = rows(6)
        specs.insert(3, {"prompt": "Merge these notes: a, b", "action_type": "consolidate"})
        specs.append({"prompt": "x" * 3000 + " [truth: negative]", "action_type": "sentiment"})
        done = submit_batch(iter(specs), name="mixed", pack=8)
        final = BatchHandle(done.batch_id).wait(timeout=60)
        assert final["statuses"] == {"succeeded": 8}
        firsts = [store.attempts_of(j.id)[0] for j in jobs_of(done.batch_id)]
        packed = [(a.quality_components or {}).get("pack") is not None for a in firsts]
        # Lines 0-2 and 4-6 are two packs (the text line between them ends the first); the
        # text line and the large one are ordinary jobs.
        assert packed == [True, True, True, False, True, True, True, False]
        alone_here = sum(
            1 for a, p in zip(firsts, packed, strict=True) if not p and a.model == "packer"
        )
        assert completions(srv) == 2 + alone_here


@pytest.mark.slow
def test_pack_size_is_checked() -> None:
    with pytest.raises(BatchError, match="pack must be"):
        submit_batch(iter(rows(1)), name="bad-pack", pack=0)
