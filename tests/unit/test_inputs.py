"""``submit_job`` input checks: sizes from ``inputs:`` of the config, and arbitrary input.

Every refusal is a :class:`JobValidationError` whose every part names the field; nothing is stored
then. Anything accepted is stored exactly as given. Needs PostgreSQL and Redis (the job is stored
and its routing message sent; no worker runs, the queue is emptied afterwards).
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select, update

from router import submit_job
from schemas.tables import Job
from tests.support import services
from tests.support.services import fleet_config
from tierflow.core.db import session_scope
from tierflow.core.errors import JobValidationError

pytestmark = pytest.mark.integration

FIELDS = ("prompt", "action_type", "context", "metadata", "priority", "idempotency_key")
LIMITS = {"max_prompt_chars": 300, "max_context_bytes": 200, "max_metadata_bytes": 120}


@pytest.fixture
def small_limits(database: str, config_file: Any) -> Iterator[None]:
    config_file({**fleet_config(), "inputs": LIMITS})
    with session_scope() as session:
        started = session.execute(select(func.now())).scalar_one()
    yield
    services.delete_prefix(os.environ["TIERFLOW_KEY_PREFIX"], "q:*")  # no worker ran
    # close the jobs stored here, or a later test's sweeper would send them to its fleet
    with session_scope() as session:
        session.execute(
            update(Job)
            .where(Job.status == "queued", Job.created_at >= started)
            .values(status="failed", error="test input, never run")
        )


def job_count() -> int:
    with session_scope() as session:
        return int(session.execute(select(func.count()).select_from(Job)).scalar_one())


def same_json(stored: Any, given: Any) -> bool:
    """Equal as JSON: JSONB keeps numbers as decimals, so 4.86e+16 comes back as an integer."""
    if isinstance(given, bool) or isinstance(stored, bool):
        return stored is given
    if isinstance(given, int | float) and isinstance(stored, int | float):
        return math.isclose(float(stored), float(given), rel_tol=1e-15, abs_tol=0.0)
    if isinstance(given, dict) and isinstance(stored, dict):
        return stored.keys() == given.keys() and all(same_json(stored[k], given[k]) for k in given)
    if isinstance(given, list | tuple) and isinstance(stored, list):
        return len(stored) == len(given) and all(map(same_json, stored, given))
    return bool(stored == given)


def fields_named(message: str) -> list[str]:
    """The field each ``; ``-separated part of a JobValidationError starts with."""
    return [part.split(":", 1)[0].split(".", 1)[0].strip() for part in message.split("; ")]


@pytest.mark.parametrize(
    ("kwargs", "field", "words"),
    [
        ({"prompt": "x" * 301}, "prompt", "301 characters, limit is 300"),
        ({"context": {"blob": "y" * 200}}, "context", "limit is 200"),
        ({"metadata": {"note": "z" * 120}}, "metadata", "limit is 120"),
    ],
)
def test_size_limits_give_a_clear_error_naming_the_field(
    small_limits: None, kwargs: dict[str, Any], field: str, words: str
) -> None:
    before = job_count()
    request: dict[str, Any] = {"prompt": "Summarise this.", "action_type": "summarize", **kwargs}
    with pytest.raises(JobValidationError) as caught:
        submit_job(**request)
    message = str(caught.value)
    assert fields_named(message) == [field], message
    assert words in message
    assert job_count() == before  # nothing stored


def test_every_size_problem_is_reported_at_once(small_limits: None) -> None:
    with pytest.raises(JobValidationError) as caught:
        submit_job("p" * 400, "summarize", {"c": "c" * 300}, metadata={"m": "m" * 300})
    assert fields_named(str(caught.value)) == ["prompt", "context", "metadata"]


def test_at_the_limit_is_accepted(small_limits: None) -> None:
    handle = submit_job("x" * 300, "summarize")
    assert handle.result().status == "queued"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"prompt": "   "}, "prompt"),
        ({"prompt": "a\x00b"}, "prompt"),
        ({"prompt": "lone \ud800 surrogate"}, "prompt"),
        ({"action_type": "Not Valid!"}, "action_type"),
        ({"context": {"k": "nul \x00 inside"}}, "context"),
        ({"context": {"k\x00": 1}}, "context"),
        ({"metadata": {"x": math.nan}}, "metadata"),
        ({"metadata": {"x": {1, 2}}}, "metadata"),
        ({"priority": 10}, "priority"),
        ({"idempotency_key": "k\x00"}, "idempotency_key"),
    ],
)
def test_unstorable_or_invalid_values_name_the_field(
    small_limits: None, kwargs: dict[str, Any], field: str
) -> None:
    before = job_count()
    request: dict[str, Any] = {"prompt": "Summarise this.", "action_type": "summarize", **kwargs}
    with pytest.raises(JobValidationError) as caught:
        submit_job(**request)
    assert fields_named(str(caught.value)) == [field], str(caught.value)
    assert job_count() == before


# -- property-based: anything in, a clear error or a stored job out ------------------------

NASTY = st.sampled_from(["\x00", "\ud800", "\udfff", "\u2028", "é", "😀", "\\u0000", "'", '"'])
TEXT = st.lists(st.one_of(st.text(max_size=12), NASTY), max_size=8).map("".join)
SAFE_TEXT = st.text(
    st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=10
)  # no surrogates
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    SAFE_TEXT,
)


def _json(scalars: st.SearchStrategy[Any], keys: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=3), st.dictionaries(keys, inner, max_size=3)
        ),
        max_leaves=6,
    )


# Valid values: what every field but the one under test gets.
GOOD = {
    "prompt": st.text(min_size=1, max_size=60).filter(lambda p: p.strip() and "\x00" not in p),
    "action_type": st.from_regex(r"[a-z][a-z0-9_]{0,20}", fullmatch=True),
    "context": st.dictionaries(SAFE_TEXT, _json(SCALARS, SAFE_TEXT), max_size=3).filter(
        lambda d: len(json.dumps(d)) < LIMITS["max_context_bytes"]
    ),
    "metadata": st.dictionaries(SAFE_TEXT, SCALARS, max_size=2).filter(
        lambda d: len(json.dumps(d)) < LIMITS["max_metadata_bytes"]
    ),
    "priority": st.integers(min_value=0, max_value=9),
    "idempotency_key": st.none(),
}
# Anything at all for the field under test: valid, invalid, oversized, unstorable.
NASTY_JSON = _json(st.one_of(SCALARS, st.floats(), TEXT), st.one_of(TEXT, st.integers()))
WILD_MAPPING = st.one_of(
    st.none(),
    st.dictionaries(TEXT, NASTY_JSON, max_size=4),
    st.dictionaries(SAFE_TEXT, st.sampled_from([b"bytes", {1, 2}, object()]), min_size=1),
    st.dictionaries(st.integers(), st.integers(), min_size=1, max_size=2),
    st.lists(SCALARS, max_size=2),
    st.text(max_size=5),
    st.dictionaries(SAFE_TEXT, st.text(min_size=60, max_size=120), min_size=1, max_size=3),
)
WILD = {
    "prompt": st.one_of(TEXT, st.text(min_size=250, max_size=350), st.integers(), st.none()),
    "action_type": st.one_of(TEXT, st.text(max_size=70), st.just("x" * 65), st.integers()),
    "context": WILD_MAPPING,
    "metadata": WILD_MAPPING,
    "priority": st.one_of(
        st.integers(min_value=-3, max_value=12), st.sampled_from(["5", "high", 5.0, 5.5, None])
    ),
    "idempotency_key": st.one_of(TEXT, st.text(min_size=190, max_size=210), st.integers()),
}


def test_submit_job_property_clear_error_or_stored_job(small_limits: None) -> None:
    """One field at a time gets any value; the rest are valid. The outcome is a stored job equal
    to the request, or a JobValidationError that names exactly that field (nothing stored)."""
    outcomes: Counter[str] = Counter()

    @settings(
        max_examples=50,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(field=st.sampled_from(sorted(WILD)), data=st.data())
    def check(field: str, data: st.DataObject) -> None:
        values = {name: data.draw(GOOD[name], label=name) for name in GOOD if name != field}
        values[field] = data.draw(WILD[field], label=f"{field} (wild)")
        before = job_count()
        try:
            handle = submit_job(**values)
        except JobValidationError as exc:
            assert fields_named(str(exc)) == [field] * len(fields_named(str(exc))), str(exc)
            assert job_count() == before, "a refused job was stored"
            outcomes[f"refused:{field}"] += 1
            return
        with session_scope() as session:
            job = session.get(Job, handle.job_id)
            assert job is not None
            if not handle.created:  # an idempotency key seen in an earlier example
                assert job.idempotency_key == values["idempotency_key"]
                assert job_count() == before
                outcomes["same key, same job"] += 1
                return
            assert job.status == "queued"
            assert job.prompt == values["prompt"]
            assert job.action_type == values["action_type"]
            assert same_json(job.context, values["context"] or {})
            assert same_json(job.job_metadata, values["metadata"] or {})
            assert job.priority == int(values["priority"])
        outcomes["stored"] += 1

    check()
    print(f"\nsubmit_job property: {dict(sorted(outcomes.items()))}")
    assert outcomes["stored"] and sum(outcomes.values()) - outcomes["stored"]
