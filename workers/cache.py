"""The answer cache in Redis: exact (the same action, prompt and context) and semantic (a
paraphrase of a cached prompt, with the same action and context).

**What is cached.** Only answers that passed the quality gate, stored by
:class:`~workers.pipeline.cache.CacheStore` once the job succeeded: the text, the model that
made it, its score and evidence, whether it was fake, and what it cost (the dollars a hit saves).

**Exact.** The key is the sha256 of the canonical JSON of ``[action, prompt, context]`` (keys
sorted, compact, ASCII), one Redis string per answer with the action's TTL
(:meth:`~tierflow.core.constants.Keys.cache_exact`).

**Semantic.** Answers are grouped by (scope, action, context): the sha256 of the canonical JSON
of ``[action, context]``. A group is a Redis hash of exact digest → the prompt's embedding
(384 float32, unit length, :mod:`workers.embeddings`; stored as base64 text) and a sorted set
of the same digests by the time they were stored; a Lua script adds one and evicts the oldest
past ``max_entries`` and any older than the TTL, atomically. A lookup reads the group's vectors
and takes the most similar prompt (cosine, brute force in numpy) whose similarity is at least
``semantic_threshold``; its answer is the exact entry of that digest (expired: the vector is
dropped, the next one tried).
Two guards keep a paraphrase from taking a different question's answer: the prompts' numbers
must be the same, in the same order ("17 + 25" never matches "17 + 26", whose embeddings are
0.88 alike), and a prompt longer than the model's window (256 word pieces) is never searched
or indexed (its embedding would describe its beginning only).

**Scope.** Each daemon (``metadata.daemon``) has its own cache; jobs with no daemon share
:data:`NO_DAEMON`'s. ``caching.share_across_daemons: true`` makes one cache (:data:`SHARED`).

Redis errors and a missing embedding model make a lookup a miss and a store a no-op (logged):
the cache saves money, it never fails a job.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis

from tierflow.core.config import CachingConfig
from tierflow.core.constants import Keys
from workers import embeddings

log = logging.getLogger(__name__)

NO_DAEMON = "-"  # the scope of jobs submitted with no daemon
SHARED = "*"  # the one scope when caching.share_across_daemons is true
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")

ADD_VECTOR = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
local stale = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[5])
for _, digest in ipairs(stale) do redis.call('HDEL', KEYS[1], digest) end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[5])
local extra = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[4])
if extra > 0 then
  local oldest = redis.call('ZPOPMIN', KEYS[2], extra)
  for i = 1, #oldest, 2 do redis.call('HDEL', KEYS[1], oldest[i]) end
end
redis.call('EXPIRE', KEYS[1], ARGV[6])
redis.call('EXPIRE', KEYS[2], ARGV[6])
return redis.call('ZCARD', KEYS[2])
"""


def canonical_digest(value: Any) -> str:
    """sha256 (hex) of ``value``'s canonical JSON: keys sorted, compact separators, ASCII."""
    plain = json.loads(json.dumps(value, default=str))  # non-string keys as JSON makes them
    text = json.dumps(plain, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def exact_digest(action: str, prompt: str, context: dict[str, Any]) -> str:
    """The exact cache's key of a request: its action, prompt and context."""
    return canonical_digest([action, prompt, context])


def group_digest(action: str, context: dict[str, Any]) -> str:
    """The semantic group of a request: answers to other prompts with this action and context."""
    return canonical_digest([action, context])


def scope_of(daemon: str | None, config: CachingConfig) -> str:
    """Whose cache a job reads and writes (see the module's docstring)."""
    if config.share_across_daemons:
        return SHARED
    return daemon or NO_DAEMON


def same_numbers(a: str, b: str) -> bool:
    """Whether two prompts hold the same numbers in the same order."""
    return _NUMBER.findall(a) == _NUMBER.findall(b)


def _vector_text(vector: np.ndarray) -> str:
    """A vector as Redis keeps it: base64 of its float32 bytes (text, so a client that decodes
    replies, as the fleet's does, reads it back unharmed)."""
    return base64.b64encode(np.asarray(vector, dtype=np.float32).tobytes()).decode("ascii")


def _vector_of(stored: str | bytes) -> np.ndarray:
    return np.frombuffer(base64.b64decode(stored), dtype=np.float32)


@dataclass(frozen=True)
class CachedAnswer:
    """A hit: ``kind`` is ``exact`` or ``semantic``; ``entry`` the stored answer (text, model,
    tier, quality_score, quality_components, fake, cost_usd, job_id, prompt); ``similarity``
    the cosine of the two prompts (1.0 for an exact hit)."""

    kind: str
    digest: str
    entry: dict[str, Any]
    similarity: float


class AnswerCache:
    """Exact and semantic answers of one fleet (its Redis, its key prefix) under ``config``."""

    def __init__(self, client: redis.Redis, keys: Keys, config: CachingConfig) -> None:
        self.redis = client
        self.keys = keys
        self.config = config
        self._add_vector = client.register_script(ADD_VECTOR)

    # --- lookup ---------------------------------------------------------------------------

    def lookup(
        self,
        scope: str,
        action: str,
        prompt: str,
        context: dict[str, Any],
        *,
        semantic: bool,
        vector: np.ndarray | None = None,
    ) -> CachedAnswer | None:
        """The cached answer to this request, exact first, then (with ``semantic``) the most
        similar prompt's of the same group at or above the threshold; None: a miss."""
        digest = exact_digest(action, prompt, context)
        entry = self._entry(scope, digest)
        if entry is not None:
            return CachedAnswer("exact", digest, entry, 1.0)
        if not semantic:
            return None
        if vector is None:
            vector = self.embed(prompt)
        if vector is None:
            return None
        return self._nearest(scope, group_digest(action, context), prompt, vector)

    def _entry(self, scope: str, digest: str) -> dict[str, Any] | None:
        raw = self.redis.get(self.keys.cache_exact(scope, digest))
        return json.loads(raw) if raw else None  # type: ignore[arg-type]

    def _nearest(
        self, scope: str, group: str, prompt: str, vector: np.ndarray
    ) -> CachedAnswer | None:
        index = self.keys.cache_vectors(scope, group)
        stored: dict[Any, Any] = self.redis.hgetall(index)  # type: ignore[assignment]
        if not stored:
            return None
        digests = [d.decode() if isinstance(d, bytes) else str(d) for d in stored]
        matrix = np.vstack([_vector_of(v) for v in stored.values()])
        scores = matrix @ vector
        for i in np.argsort(-scores):
            score = float(scores[i])
            if score < self.config.semantic_threshold:
                return None
            digest = digests[i]
            entry = self._entry(scope, digest)
            if entry is None:  # its answer expired: the vector goes too
                self.redis.hdel(index, digest)
                self.redis.zrem(self.keys.cache_order(scope, group), digest)
                continue
            if not same_numbers(prompt, str(entry.get("prompt", ""))):
                continue
            return CachedAnswer("semantic", digest, entry, score)
        return None

    # --- store ----------------------------------------------------------------------------

    def store(
        self,
        scope: str,
        action: str,
        prompt: str,
        context: dict[str, Any],
        entry: dict[str, Any],
        *,
        ttl_s: int,
        semantic: bool,
        vector: np.ndarray | None = None,
    ) -> str:
        """Keep a passed answer for ``ttl_s`` seconds (and index its prompt for semantic
        lookups); returns its exact digest."""
        digest = exact_digest(action, prompt, context)
        body = json.dumps({**entry, "prompt": prompt, "stored_at": time.time()})
        self.redis.set(self.keys.cache_exact(scope, digest), body, ex=ttl_s)
        if semantic:
            if vector is None:
                vector = self.embed(prompt)
            if vector is not None:
                group = group_digest(action, context)
                now = time.time()
                index, order = (
                    self.keys.cache_vectors(scope, group),
                    self.keys.cache_order(scope, group),
                )
                self._add_vector(
                    keys=[index, order],
                    args=[
                        digest,
                        _vector_text(vector),
                        repr(now),
                        self.config.max_entries,
                        repr(now - ttl_s),
                        ttl_s,
                    ],
                )
        return digest

    # --- embeddings -----------------------------------------------------------------------

    @staticmethod
    def embed(prompt: str) -> np.ndarray | None:
        """The prompt's unit embedding, or None when it does not fit the model's window or the
        model cannot be loaded (its package is missing: logged, semantic caching is off)."""
        try:
            model = embeddings.embedder()
        except ImportError as exc:
            log.warning("semantic cache off: the embedding model cannot be loaded (%s)", exc)
            return None
        if not model.fits(prompt):
            return None
        vector: np.ndarray = model.encode([prompt])[0]
        return vector
