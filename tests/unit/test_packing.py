"""Packing small label jobs: the packed prompt, the split of adversarial answers, the token
shares (pure), and one delivery of a pack on real PostgreSQL and Redis (no worker): one call,
each member gated and stored on its own, a redelivery that calls nothing again."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from router.plan import plan_job
from schemas.jobs import JobRequest
from tests.support import services
from tests.support.fake_providers import OpenAIServer
from tests.support.services import fake_model, fleet_config
from tierflow import store
from tierflow.core.constants import AttemptStatus, JobStatus, Mode, Tier
from tierflow.core.settings import get_settings
from workers.packing import (
    PACK_TOKENS_PER_ITEM,
    Part,
    compose_pack,
    pack_max_tokens,
    share_tokens,
    split_answer,
)
from workers.packs import run_pack_steps
from workers.pipeline import STEPS
from workers.pipeline.call import CallModel
from workers.pipeline.persist import Persist
from workers.pipeline.preset import NotePack, after_call, steps_after, steps_before
from workers.pipeline.select import fleet_limits
from workers.queues import queue_depth

LABELS = ["positive", "negative"]


def texts(parts: list[Part]) -> list[str | None]:
    return [p.text for p in parts]


# -- compose ----------------------------------------------------------------------------------


def test_compose_numbers_every_item_and_names_the_labels() -> None:
    packed = compose_pack(["Is 'great day' positive?", "  Is 'awful' positive?\n"], LABELS)
    assert "2 lines" in packed.system and "exactly one of: positive, negative" in packed.system
    assert packed.prompt.startswith("Item 1:\nIs 'great day' positive?\n\nItem 2:\n")
    assert "Is 'awful' positive?\n\nAnswers" in packed.prompt
    assert packed.prompt.endswith("\n1:") and packed.primer == "1:"
    with pytest.raises(ValueError):
        compose_pack([], LABELS)


def test_the_primer_starts_the_answer_however_the_model_goes_on() -> None:
    packed = compose_pack(["a", "b"], LABELS)
    for continuation in (" positive\n2: negative", "positive\n2: negative",
                         "1: positive\n2: negative", "\n1: positive\n2: negative"):  # fmt: skip
        assert texts(split_answer(packed.answer(continuation), 2)) == ["positive", "negative"]


def test_a_numbered_line_replaces_a_guessed_one() -> None:
    answer = "1:\nSure, here are the labels:\n1: positive\n2: negative"
    assert texts(split_answer(answer, 2)) == ["positive", "negative"]


def test_pack_max_tokens_grows_with_the_pack() -> None:
    assert pack_max_tokens(96, 4) == 96
    assert pack_max_tokens(96, 16) == 16 * PACK_TOKENS_PER_ITEM


# -- split ------------------------------------------------------------------------------------


def test_a_well_formed_answer_splits_in_order() -> None:
    parts = split_answer("1: positive\n2: negative\n3: positive", 3)
    assert texts(parts) == ["positive", "negative", "positive"]
    assert all(p.problem is None and not p.cut for p in parts)


@pytest.mark.parametrize(
    "line",
    ["2. negative", "2) negative", "Item 2: negative", "**2.** negative", "- 2: negative",
     "(2) negative", "#2: negative", "2 - negative", "item 2 - negative", "  2 :negative"],
)  # fmt: skip
def test_the_usual_numberings_are_read(line: str) -> None:
    assert texts(split_answer(f"1: positive\n{line}", 2)) == ["positive", "negative"]


def test_reordered_lines_go_to_their_numbers() -> None:
    parts = split_answer("3: negative\n1: positive\n2: positive", 3)
    assert texts(parts) == ["positive", "positive", "negative"]


def test_a_missing_number_fails_that_item_alone() -> None:
    parts = split_answer("1: positive\n3: negative", 3)
    assert texts(parts) == ["positive", None, "negative"]
    assert parts[1].problem == "no line for item 2 of 3"


def test_extra_lines_numbers_out_of_range_and_chatter_are_ignored() -> None:
    answer = (
        "Sure! Here are the answers:\n1: positive\nI hope this helps.\n2: negative\n"
        "3: positive\n0: negative\n99: negative"
    )
    assert texts(split_answer(answer, 2)) == ["positive", "negative"]


def test_conflicting_answers_for_one_item_fail_it() -> None:
    parts = split_answer("1: positive\n2: negative\n1: negative", 2)
    assert texts(parts) == [None, "negative"]
    assert parts[0].problem == "conflicting answers for item 1 of 2"


def test_a_repeated_identical_answer_is_not_a_conflict() -> None:
    answer = "1: positive\n2: negative\n1: Positive.\n2: **negative**"
    assert texts(split_answer(answer, 2)) == ["positive", "negative"]


def test_several_items_on_one_line() -> None:
    assert texts(split_answer("1: positive, 2: negative; 3: positive", 3)) == [
        "positive",
        "negative",
        "positive",
    ]
    assert texts(split_answer("1: yes 2: no", 2)) == ["yes", "no"]
    # an inline number that is not the next item stays in the text
    assert texts(split_answer("1: about 3: 1 odds", 3))[0] == "about 3: 1 odds"


def test_an_answer_on_the_line_after_its_number() -> None:
    parts = split_answer("1:\npositive\n2: negative\nextra words", 2)
    assert texts(parts) == ["positive", "negative"]


def test_an_empty_item_is_a_problem() -> None:
    parts = split_answer("1:\n2: negative", 2)
    assert parts[0].text is None and parts[0].problem == "empty answer for item 1 of 2"


def test_an_echoed_question_is_the_part_and_left_to_the_gate() -> None:
    answer = "Item 1:\nIs it positive or negative?\nA: positive\n2: negative"
    assert texts(split_answer(answer, 2)) == ["Is it positive or negative?", "negative"]


def test_no_numbers_at_all_fails_every_item() -> None:
    parts = split_answer("positive\nnegative", 2)
    assert texts(parts) == [None, None]
    assert split_answer("", 1)[0].problem == "no line for item 1 of 1"


def test_a_truncated_answer_marks_only_its_last_part_cut() -> None:
    parts = split_answer("2: negative\n1: posi", 3, truncated=True)
    assert [p.cut for p in parts] == [True, False, False]
    assert texts(parts) == ["posi", "negative", None]
    assert not any(p.cut for p in split_answer("1: a\n2: b", 2))


def test_decimal_numbers_are_not_markers() -> None:
    assert texts(split_answer("1.5 is my answer\n1: positive", 1)) == ["positive"]


# -- token shares -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("total", "weights"),
    [(100, [1, 1, 1]), (7, [3, 1, 0]), (0, [1, 2]), (5, [0, 0]), (1001, [10.5, 3.2, 99, 1])],
)
def test_shares_sum_to_the_total_in_proportion(total: int, weights: list[float]) -> None:
    shares = share_tokens(total, weights)
    assert sum(shares) == total and all(s >= 0 for s in shares)
    effective = weights if sum(weights) > 0 else [1.0] * len(weights)
    for share, weight in zip(shares, effective, strict=True):
        assert abs(share - total * weight / sum(effective)) < 1


def test_shares_need_weights() -> None:
    with pytest.raises(ValueError):
        share_tokens(3, [])


# -- the pipeline cut for a preset answer -----------------------------------------------------


def test_after_call_is_the_list_after_call_model_with_the_pack_note_before_persist() -> None:
    rest = after_call(STEPS)
    plain = steps_after(STEPS, CallModel)
    assert [type(s) for s in rest if not isinstance(s, NotePack)] == [type(s) for s in plain]
    kinds = [type(s) for s in rest]
    assert kinds.index(NotePack) + 1 == kinds.index(Persist) and CallModel not in kinds
    before = steps_before(STEPS, CallModel)
    assert [*before, STEPS[len(before)], *plain] == list(STEPS)
    assert isinstance(STEPS[len(before)], CallModel)


# -- one delivery of a pack, real PostgreSQL and Redis ----------------------------------------

ITEM = re.compile(r"Item (\d+):\n(.*?)(?=\n\nItem \d+:|\n\nAnswers)", re.S)


def pack_answerer(garble: set[str] | None = None) -> Callable[[str], str]:
    """A model that answers each item with the ``[truth: X]`` in it; an item holding a word of
    ``garble`` gets no line."""

    def answer(prompt: str) -> str:
        items = ITEM.findall(prompt)
        if not items:  # an ordinary (unpacked) call
            truth = re.search(r"\[truth: (\w+)\]", prompt)
            return truth[1] if truth else "positive"
        lines = []
        for number, text in items:
            if garble and any(word in text for word in garble):
                continue
            truth = re.search(r"\[truth: (\w+)\]", text)
            lines.append(f"{number}: {truth[1] if truth else 'positive'}")
        return "\n".join(reversed(lines))  # any order: the numbers decide

    return answer


@pytest.fixture
def served(database: str, config_file: Callable[[dict[str, Any]], None]) -> Iterator[Any]:
    """A fake OpenAI-compatible local model answering packs; ``served(garble=...)``."""
    servers: list[OpenAIServer] = []

    def start(
        garble: set[str] | None = None, limits: dict[str, Any] | None = None, **routing: Any
    ) -> OpenAIServer:
        srv = OpenAIServer(answer=pack_answerer(garble)).start()
        servers.append(srv)
        local = {
            "name": "packer",
            "provider": "vllm",
            "model_id": "fake-model",
            "base_url": srv.url,
            "input_cost_per_million": 10.0,
            "output_cost_per_million": 20.0,
            "max_tokens": 32,
            "limits": limits or {},
        }
        actions = {"sentiment": {"answer": "label", "labels": LABELS, "verifiers": ["checks"]}}
        config_file(
            fleet_config(
                local_fast=[local],
                local_quality=[fake_model("quality")],
                actions=actions,
                action_tier_overrides={"sentiment": "local_fast"},
                **routing,
            )
        )
        return srv

    yield start
    for srv in servers:
        srv.close()
    prefix = os.environ["TIERFLOW_KEY_PREFIX"]
    for pattern in ("q:*", "rate:*", "cooldown:*", "circuit:*", "inflight:*", "mode"):
        services.delete_prefix(prefix, pattern)


def routed_jobs(
    prompts: list[str], action: str = "sentiment", tier: Tier | None = Tier.LOCAL_FAST
) -> list[str]:
    ids = []
    for prompt in prompts:
        job_id, _ = store.create_job(
            JobRequest(prompt=prompt, action_type=action), get_settings().job_deadline_s
        )
        plan = plan_job(action, prompt, {}, get_settings().llm, Mode.AUTO)
        assert tier is None or plan.chain[0] is tier
        assert store.save_plan(job_id, plan.complexity.value, plan.to_json())
        ids.append(job_id)
    return ids


def test_one_call_answers_the_pack_and_each_member_is_gated_alone(served) -> None:
    srv = served(garble={"GARBLE"})
    prompts = [f"[truth: {t}] Sentence {i}." for i, t in enumerate(["positive", "negative"] * 2)]
    prompts[2] = "[truth: positive] GARBLE sentence."
    ids = routed_jobs(prompts)
    run = run_pack_steps(ids, Tier.LOCAL_FAST, "host/run1:task-a", get_settings().llm)
    assert srv.request_count == 1, "one call for the whole pack"
    assert (run.packed, run.model) == (4, "packer")
    assert run.moves == {"succeed": 3, "fallback": 1}
    call = srv.calls[0]
    assert call.body["max_tokens"] == 64  # 4 items x 16 tokens, above the model's 32
    for job_id, truth in zip([ids[0], ids[1], ids[3]], ["positive", "negative", "negative"],
                             strict=True):  # fmt: skip
        result = store.job_result(job_id)
        assert result is not None and result.status == "succeeded"
        assert result.text == truth and result.tier == "local_fast"
        (attempt,) = store.attempts_of(job_id)
        assert attempt.status == AttemptStatus.PASSED.value
        pack = (attempt.quality_components or {})["pack"]
        assert pack["size"] == 4 and pack["model"] == "packer"
    # The garbled part: its own error, the job moved on to the next tier alone.
    (failed,) = store.attempts_of(ids[2])
    assert failed.status == AttemptStatus.ERROR.value
    assert failed.error_kind == "malformed_response" and "no line for item 3" in failed.error
    assert store.job_status(ids[2]) == JobStatus.RUNNING.value
    assert queue_depth("tier.local_quality") == 1
    # Usage: the shares add up to the call's usage exactly, charged once.
    attempts = [store.attempts_of(j)[0] for j in ids]
    assert sum(a.input_tokens for a in attempts) == call.input_tokens
    assert sum(a.output_tokens for a in attempts) == call.output_tokens
    whole = (call.input_tokens * 10.0 + call.output_tokens * 20.0) / 1e6
    assert sum(float(a.cost_usd) for a in attempts) == pytest.approx(whole)

    # A redelivery of the same pack: no call, no charge, the decisions replayed.
    again = run_pack_steps(ids, Tier.LOCAL_FAST, "host/run2:task-a", get_settings().llm)
    assert srv.request_count == 1 and again.packed == 0
    assert [len(store.attempts_of(j)) for j in ids] == [1, 1, 1, 1]


def test_members_that_cannot_be_packed_go_on_as_ordinary_attempts(served) -> None:
    srv = served()
    ids = routed_jobs(["[truth: negative] one.", "[truth: positive] two."])
    other = routed_jobs(["Is this a fact?"], action="classify_memory", tier=None)
    job = store.load_job(other[0])
    assert job is not None and job.plan is not None
    run = run_pack_steps([*ids, *other], Tier.LOCAL_FAST, "h/r:t", get_settings().llm)
    assert run.sent_on == 1 and run.packed == 2 and srv.request_count == 1
    # the json job, as an ordinary attempt on its own first tier
    assert queue_depth(f"tier.{job.plan['chain'][0]}") == 1
    assert store.attempts_of(other[0]) == []


def test_a_pack_left_with_one_member_runs_it_as_an_ordinary_attempt(served) -> None:
    srv = served()
    ids = routed_jobs(["[truth: negative] one.", "[truth: positive] two."])
    first = run_pack_steps(ids[:1], Tier.LOCAL_FAST, "h/r1:t1", get_settings().llm)
    assert first.packed == 0 and first.moves == {"succeed": 1}
    assert "Item 1" not in srv.calls[0].body["messages"][-1]["content"]
    # A pack of both now: the finished one is replayed, the other runs alone.
    second = run_pack_steps(ids, Tier.LOCAL_FAST, "h/r2:t2", get_settings().llm)
    assert second.packed == 0 and srv.request_count == 2
    assert all(store.job_status(j) == JobStatus.SUCCEEDED.value for j in ids)


def test_a_pack_at_the_concurrency_cap_gives_its_claims_back_and_waits(served) -> None:
    served(limits={"max_concurrency": 1})
    ids = routed_jobs([f"[truth: positive] {i}." for i in range(3)])
    config = get_settings().llm
    model = config.tier_models(Tier.LOCAL_FAST)[0]
    limits = fleet_limits()
    slots = [limits.take_slot(model)]  # its one slot, held by "another call"
    assert slots[0] is not None and limits.take_slot(model) is None
    try:
        run = run_pack_steps(ids, Tier.LOCAL_FAST, "h/r:t", config)
    finally:
        for slot in slots:
            limits.release_slot(model, slot)
    assert run.resent and run.packed == 0
    assert all(store.attempts_of(j) == [] for j in ids), "claims given back"
    assert queue_depth("tier.local_fast") == 1  # the pack, sent again with a countdown
