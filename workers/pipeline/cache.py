"""Serve a job from the answer cache (:class:`CacheLookup`), and cache a passed answer
(:class:`CacheStore`); the cache itself is :mod:`workers.cache`.

A hit ends the attempt the way any answer does: the lookup writes the attempt's outcome
(status ``passed``, the cached text, the model that first made it, cost 0, ``cached`` =
``exact`` or ``semantic``, ``cache_saved_usd`` = what the answer first cost, provider
``cache:<kind>``), so :class:`~workers.pipeline.persist.Persist` stores it under the claim,
:class:`~workers.pipeline.decide.Decide` succeeds from the row and
:class:`~workers.pipeline.finish.Finish` ends the job: no model is called, nothing is charged,
no budget is touched. A streaming waiter gets the answer as one chunk.

When caching applies: ``routing.enable_caching`` is true, the action's ``caching.actions``
entry does not turn it off, and the request did not say ``cache: false``
(``metadata.cache`` false, :data:`schemas.jobs.CACHE_SWITCH`). The lookup runs on the job's
first attempt only (attempt 0, before the mode and the model pick): a later attempt exists
because an earlier one was tried, and a cache miss then would be a miss again.
"""

from __future__ import annotations

import json
import logging
import time

import redis

from schemas.jobs import CACHE_PROVIDER_PREFIX, CACHE_SWITCH
from schemas.tables import Job
from tierflow.core.config import ActionCaching, LLMConfig
from tierflow.core.constants import AttemptStatus
from tierflow.core.redis_client import get_keys, get_redis
from workers import notify
from workers.cache import AnswerCache, CachedAnswer, scope_of
from workers.pipeline.context import AttemptContext, Step

log = logging.getLogger(__name__)


def caching_of(job: Job | None, config: LLMConfig) -> ActionCaching | None:
    """The job's caching (the action's, defaults filled in), or None when it is off for it."""
    if job is None or not config.routing.enable_caching:
        return None
    if (job.job_metadata or {}).get(CACHE_SWITCH) is False:
        return None
    rule = config.caching.for_action(job.action_type)
    return rule if rule.enabled else None


def scope_for(job: Job, config: LLMConfig) -> str:
    daemon = (job.job_metadata or {}).get("daemon")
    return scope_of(daemon if isinstance(daemon, str) else None, config.caching)


def answer_cache(config: LLMConfig) -> AnswerCache:
    return AnswerCache(get_redis(), get_keys(), config.caching)


def hit_fields(hit: CachedAnswer, latency_ms: float) -> dict:
    """The attempt's fields for an answer served from the cache."""
    entry = hit.entry
    evidence = dict(entry.get("quality_components") or {})
    evidence["cache"] = {
        "kind": hit.kind,
        "similarity": round(hit.similarity, 4),
        "source_job": entry.get("job_id"),
        "source_prompt": str(entry.get("prompt", ""))[:500] if hit.kind == "semantic" else None,
    }
    return {
        "model": entry.get("model"),
        "provider": f"{CACHE_PROVIDER_PREFIX}{hit.kind}",
        "status": AttemptStatus.PASSED.value,
        "input_tokens": 0,
        "output_tokens": 0,
        "latency_ms": latency_ms,
        "cost_usd": 0.0,
        "text": entry.get("text"),
        "fake": bool(entry.get("fake")),
        "quality_score": entry.get("quality_score"),
        "quality_components": evidence,
        "quality_issues": [],
        "error": None,
        "error_kind": None,
        "cached": hit.kind,
        "cache_saved_usd": float(entry.get("cost_usd") or 0.0),
    }


class CacheLookup(Step):
    """On the job's first attempt, answer from the cache when it holds this request's answer."""

    def applies(self, ctx: AttemptContext) -> bool:
        return ctx.making and ctx.attempt_no == 0 and caching_of(ctx.job, ctx.config) is not None

    def run(self, ctx: AttemptContext) -> None:
        job = ctx.job
        rule = caching_of(job, ctx.config)
        assert job is not None and rule is not None
        started = time.perf_counter()
        cache = answer_cache(ctx.config)
        semantic = bool(rule.semantic)
        try:
            if semantic:
                ctx.cache_vector = cache.embed(job.prompt)
            hit = cache.lookup(
                scope_for(job, ctx.config),
                job.action_type,
                job.prompt,
                job.context or {},
                semantic=semantic and ctx.cache_vector is not None,
                vector=ctx.cache_vector,
            )
        except (redis.RedisError, ValueError) as exc:
            log.warning("cache lookup for job %s failed, a miss: %s", ctx.job_id, exc)
            return
        if hit is None:
            return
        ctx.outcome = hit_fields(hit, (time.perf_counter() - started) * 1000)
        if job.stream:
            text = ctx.outcome["text"] or ""
            event = {"delta": text, "text": text, "done": True, "provider": "cache"}
            notify.publish_job_event(job.id, {"type": "chunk", **event})


class CacheStore(Step):
    """After a fresh success, keep the passed answer for the next identical or similar job."""

    def applies(self, ctx: AttemptContext) -> bool:
        return (
            ctx.attempt is not None
            and not ctx.replayed
            and ctx.attempt.status == AttemptStatus.PASSED.value
            and ctx.attempt.cached is None
            and bool(ctx.attempt.text)
            and caching_of(ctx.job, ctx.config) is not None
        )

    def run(self, ctx: AttemptContext) -> None:
        job, attempt = ctx.job, ctx.attempt
        rule = caching_of(job, ctx.config)
        assert job is not None and attempt is not None and rule is not None and rule.ttl_s
        entry = {
            "text": attempt.text,
            "model": attempt.model,
            "provider": attempt.provider,
            "tier": attempt.tier,
            "quality_score": attempt.quality_score,
            "quality_components": attempt.quality_components,
            "fake": attempt.fake,
            "cost_usd": float(attempt.cost_usd or 0),
            "job_id": job.id,
        }
        try:
            json.dumps(entry)
            answer_cache(ctx.config).store(
                scope_for(job, ctx.config),
                job.action_type,
                job.prompt,
                job.context or {},
                entry,
                ttl_s=rule.ttl_s,
                semantic=bool(rule.semantic),
                vector=ctx.cache_vector,
            )
        except (redis.RedisError, TypeError, ValueError) as exc:
            log.warning("caching the answer of job %s failed: %s", ctx.job_id, exc)
