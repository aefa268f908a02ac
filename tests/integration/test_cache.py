"""The answer cache on real workers, Redis and PostgreSQL, with the embedding model loaded in the
worker: a repeated prompt is an exact hit, a paraphrase a semantic one, both at cost 0; a
different prompt, ``cache: false``, another daemon and a rejected answer are misses; the cost
summary and ``tierflow costs`` count the hits and the dollars they saved.

The answers come from the fake backend (labelled fake), paid so that a hit saves dollars; the
gate passes them for its own reasons (the same ``write_memory`` answers as the budget tests).
"""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from router import submit_job
from tests.support.services import fake_model, fleet_config
from tierflow.cli import app
from tierflow.core.db import session_scope
from tierflow.core.redis_client import get_keys, get_redis
from tierflow.core.settings import get_settings
from tierflow.store.costs import get_cost_summary
from workers.cache import AnswerCache

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROMPT = "Summarize note: How do I reset my password?"
PARAPHRASE = "Summarize note: What's the way to reset my password?"  # 0.986 alike
DIFFERENT = "Summarize note: The cat sat on the mat"  # 0.18 alike
REJECTED = "Write the full history of the project"  # long_essay: too short on every tier


def cached_config(**caching: object) -> dict:
    paid = fake_model(
        "paid-api", input_cost_per_million=100.0, output_cost_per_million=100.0, max_tokens=40
    )
    config = fleet_config(
        api_fallback=[paid],
        action_tier_overrides={"write_memory": "api_fallback"},
        enable_caching=True,
    )
    # an answer kind no fake answer meets (50,000 characters at least): rejected on every tier
    config["routing"]["actions"]["long_essay"] = {"answer": "text", "min_length": 50_000}
    config["caching"] = {"ttl_s": 600, **caching}
    return config


def database_now():  # type: ignore[no-untyped-def]
    with session_scope() as session:
        return session.execute(text("SELECT now()")).scalar_one()


def run(prompt: str, action: str = "write_memory", daemon: str | None = None, **kw: object):  # type: ignore[no-untyped-def]
    metadata = {"daemon": daemon} if daemon else {}
    return submit_job(prompt, action, metadata=metadata, **kw).wait(timeout=90)  # type: ignore[arg-type]


def test_exact_and_semantic_hits_and_every_kind_of_miss(fleet) -> None:
    fleet(cached_config())
    since = database_now()
    daemon, other = f"bot-{uuid.uuid4().hex[:8]}", f"bot-{uuid.uuid4().hex[:8]}"

    first = run(PROMPT, daemon=daemon)
    assert first.ok and first.cached is None and first.cost_usd > 0 and first.fake

    again = run(PROMPT, daemon=daemon)
    assert again.ok and again.cached == "exact"
    assert again.cost_usd == 0 and again.text == first.text and again.model == first.model
    assert [a.status for a in again.attempts] == ["passed"]
    assert again.attempts[0].cost_usd == 0 and again.provider == "cache:exact"
    assert again.fake  # a fake answer stays labelled fake when it is served again

    similar = run(PARAPHRASE, daemon=daemon)
    assert similar.ok and similar.cached == "semantic", similar
    assert similar.cost_usd == 0 and similar.text == first.text

    different = run(DIFFERENT, daemon=daemon)
    assert different.ok and different.cached is None and different.cost_usd > 0

    skipped = run(PROMPT, daemon=daemon, cache=False)
    assert skipped.ok and skipped.cached is None and skipped.cost_usd > 0

    elsewhere = run(PROMPT, daemon=other)  # another daemon's cache is its own
    assert elsewhere.cached is None and elsewhere.cost_usd > 0
    nobody = run(PROMPT)  # so is the cache of jobs with no daemon
    assert nobody.cached is None and nobody.cost_usd > 0

    # a rejected answer is never cached: the second job calls the models again. (The last
    # tier's answer, rejected only for its shape, is returned degraded, not failed.)
    rejected = run(REJECTED, "long_essay", daemon=daemon)
    assert rejected.degraded and all(a.status != "passed" for a in rejected.attempts)
    again_rejected = run(REJECTED, "long_essay", daemon=daemon)
    assert again_rejected.cached is None and len(again_rejected.attempts) > 0
    assert all(a.status != "passed" for a in again_rejected.attempts)
    cache = AnswerCache(get_redis(), get_keys(), get_settings().llm.caching)
    assert cache.lookup(daemon, "long_essay", REJECTED, {}, semantic=False) is None

    # the attempt rows say where the answers came from and what the hits saved
    with session_scope() as session:
        rows = session.execute(
            text(
                "SELECT cached, cost_usd, cache_saved_usd FROM attempts "
                "WHERE job_id IN (:a, :b) ORDER BY job_id"
            ),
            {"a": again.job_id, "b": similar.job_id},
        ).all()
    assert sorted(r.cached for r in rows) == ["exact", "semantic"]
    assert all(float(r.cost_usd) == 0 for r in rows)
    assert all(float(r.cache_saved_usd) == pytest.approx(first.cost_usd) for r in rows)

    summary = get_cost_summary(since=since)["cache"]
    jobs = 9
    print(f"cache: {summary['hits']} hits of {summary['jobs']} jobs, ${summary['saved_usd']:.6f}")
    assert (summary["hits"], summary["exact_hits"], summary["semantic_hits"]) == (2, 1, 1)
    assert summary["jobs"] == jobs and summary["hit_rate"] == pytest.approx(2 / jobs)
    assert summary["saved_usd"] == pytest.approx(2 * first.cost_usd)
    # a hit called no model: not counted as a call
    assert get_cost_summary(since=since)["calls"] == sum(
        1
        for r in (first, different, skipped, elsewhere, nobody, rejected, again_rejected)
        for a in r.attempts
        if a.status in ("passed", "rejected", "error")
    )

    from tierflow.cli import report_cmds  # noqa: F401 - registers ``costs``

    output = CliRunner().invoke(app, ["costs"]).output
    assert "Cache:" in output and "semantic" in output and "saved" in output, output


def test_shared_cache_serves_every_daemon(fleet) -> None:
    fleet(cached_config(share_across_daemons=True))
    one, two = f"bot-{uuid.uuid4().hex[:8]}", f"bot-{uuid.uuid4().hex[:8]}"
    prompt = f"Summarize note: rotate the {uuid.uuid4().hex[:6]} signing keys every quarter"
    first = run(prompt, daemon=one)
    assert first.ok and first.cached is None
    shared = run(prompt, daemon=two)
    assert shared.ok and shared.cached == "exact" and shared.cost_usd == 0
