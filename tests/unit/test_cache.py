"""The cache's pure parts: keys, scopes, guards, config, and the request's ``cache`` switch."""

from __future__ import annotations

import uuid

import pytest
import redis

from schemas.jobs import CACHE_SWITCH, JobRequest
from tests.support import services
from tests.support.services import fleet_config
from tierflow.core.config import CachingConfig, parse_config
from tierflow.core.constants import Keys
from tierflow.core.errors import ConfigError
from workers.cache import (
    NO_DAEMON,
    SHARED,
    AnswerCache,
    exact_digest,
    group_digest,
    same_numbers,
    scope_of,
)


def test_exact_digest_is_canonical_and_covers_action_prompt_and_context() -> None:
    one = exact_digest("write_memory", "Summarize", {"a": 1, "b": [1, 2]})
    assert one == exact_digest("write_memory", "Summarize", {"b": [1, 2], "a": 1})
    assert one != exact_digest("extract_topic", "Summarize", {"a": 1, "b": [1, 2]})
    assert one != exact_digest("write_memory", "Summarize!", {"a": 1, "b": [1, 2]})
    assert one != exact_digest("write_memory", "Summarize", {"a": 2, "b": [1, 2]})
    assert len(one) == 64


def test_semantic_groups_split_by_action_and_context_only() -> None:
    assert group_digest("a", {"x": 1}) == group_digest("a", {"x": 1})
    assert group_digest("a", {"x": 1}) != group_digest("a", {"x": 2})
    assert group_digest("a", {}) != group_digest("b", {})


def test_scope_is_the_daemon_unless_shared() -> None:
    private, shared = CachingConfig(), CachingConfig(share_across_daemons=True)
    assert scope_of("notes-bot", private) == "notes-bot"
    assert scope_of(None, private) == NO_DAEMON
    assert scope_of("notes-bot", shared) == scope_of(None, shared) == SHARED


def test_numbers_must_match_for_a_semantic_hit() -> None:
    assert same_numbers("What is 17 + 25?", "Tell me 17 + 25")
    assert not same_numbers("What is 17 + 25?", "What is 17 + 26?")
    assert not same_numbers("Add 1.5 and 2", "Add 2 and 1.5")  # order matters too
    assert same_numbers("no numbers", "none here either")


def test_per_action_caching_fills_in_the_section_defaults() -> None:
    config = CachingConfig(
        ttl_s=60, actions={"calculate": {"semantic": False}, "edit_file": {"enabled": False}}
    )
    calc = config.for_action("calculate")
    assert (calc.enabled, calc.semantic, calc.ttl_s) == (True, False, 60)
    assert not config.for_action("edit_file").enabled
    other = config.for_action("write_memory")
    assert (other.enabled, other.semantic, other.ttl_s) == (True, True, 60)


def test_enable_caching_is_accepted_and_the_section_is_checked() -> None:
    raw = fleet_config(enable_caching=True)
    assert parse_config(raw).routing.enable_caching
    raw["caching"] = {"semantic_threshold": 1.5}
    with pytest.raises(ConfigError, match=r"caching\.semantic_threshold"):
        parse_config(raw)


def test_cache_false_is_stored_in_metadata_and_the_default_fingerprint_is_unchanged() -> None:
    plain = JobRequest(prompt="p", metadata={"daemon": "d"})
    assert plain.cache and CACHE_SWITCH not in plain.metadata
    off = JobRequest(prompt="p", metadata={"daemon": "d"}, cache=False)
    assert off.metadata == {"daemon": "d", CACHE_SWITCH: False}
    assert off.fingerprint() != plain.fingerprint()
    # the metadata switch alone reads back as the field (a stored row, a direct caller)
    assert not JobRequest(prompt="p", metadata={CACHE_SWITCH: False}).cache


@pytest.mark.integration
def test_store_and_lookup_on_real_redis(services_ready: None) -> None:
    """Exact and semantic round trips through a decoding client (the fleet's kind), the numbers
    guard, a different group, and eviction past ``max_entries``."""
    client = redis.Redis.from_url(services.REDIS_URL, decode_responses=True)
    prefix = f"tfcache-{uuid.uuid4().hex[:8]}"
    cache = AnswerCache(client, Keys(prefix), CachingConfig(max_entries=2))
    try:
        prompt = "Summarize note: How do I reset my password?"
        entry = {"text": "answer", "cost_usd": 0.5}
        cache.store("d", "write_memory", prompt, {}, entry, ttl_s=60, semantic=True)
        exact = cache.lookup("d", "write_memory", prompt, {}, semantic=True)
        assert exact is not None and exact.kind == "exact" and exact.entry["text"] == "answer"
        similar = "Summarize note: What's the way to reset my password?"
        hit = cache.lookup("d", "write_memory", similar, {}, semantic=True)
        assert hit is not None and hit.kind == "semantic" and hit.similarity > 0.95
        assert cache.lookup("d", "write_memory", similar, {"x": 1}, semantic=True) is None
        assert cache.lookup("e", "write_memory", similar, {}, semantic=True) is None
        assert cache.lookup("d", "write_memory", similar, {}, semantic=False) is None
        numbered = "Summarize note 7: How do I reset my password?"
        assert cache.lookup("d", "write_memory", numbered, {}, semantic=True) is None
        for other in ("Summarize note: the cat sat", "Summarize note: the dog ran"):
            cache.store("d", "write_memory", other, {}, entry, ttl_s=60, semantic=True)
        # the oldest vector was evicted: the paraphrase no longer finds the first prompt
        assert cache.lookup("d", "write_memory", similar, {}, semantic=True) is None
    finally:
        services.delete_prefix(prefix)
        client.close()
