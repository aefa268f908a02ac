"""Fair shares of a contended tier among daemons: admission in Redis, one Lua script per move.

A tier's Celery queue is first in, first out within a priority, so the broker alone lets one
daemon's burst stand in front of every other daemon's next job. Here an attempt is **admitted**
before its message reaches the tier's queue: the tier has ``capacity`` slots (the sum of its
models' ``limits.max_concurrency``; no cap on any model: unbounded), each admitted attempt holds
one until its run ends, and an attempt that finds no slot (or its daemon at ``max_in_flight``)
waits in its daemon's line in Redis. When a slot frees, the next attempt is taken from the
waiting daemons by **stride scheduling**: each daemon has a pass, the eligible daemon with the
lowest pass goes next and its pass grows by ``1 / weight``; a daemon that starts waiting joins
at the current virtual time (the last pass served), so idle time earns no credit. Within a
daemon, higher priority first, then first come; batch lines (priority ``BATCH_PRIORITY``) wait in
a line of their own that is served only when no daemon's is eligible, so batches yield to
daemons as they did by priority. One daemon alone takes every free slot: a slot
is never withheld while anyone eligible waits.

Every move (offer, release, pump) is one Lua script over the tier's keys, so it is atomic
across processes and hosts; the script returns the messages to send now and the caller sends
them (``router.dispatch``). Keys (stem :meth:`Keys.fair`): ``slots`` (zset: slot member ->
lease expiry, ms, Redis' clock), ``owner`` (hash member -> daemon), ``count`` (hash daemon ->
slots held), ``ready`` (zset daemon -> pass, daemons with work waiting), ``pass`` (hash: a
daemon's pass while it waits for nothing), ``vtime``, ``conf`` (hash daemon -> "weight cap",
written by every offer), ``served`` (hash daemon -> attempts admitted, for the shares),
``seq``, ``waiting`` (hash member -> daemon: in a line, so a resend keeps its place) and
``q:<daemon>`` (zset payload -> priority and arrival).

A slot's member names one message (job, attempt, retries, waits), so a redelivered or retried
delivery of the same message finds its slot still held and runs without queueing again. A slot
whose holder died expires after ``slot_ttl_s`` (above the task's hard time limit). A message
taken from a line and lost before it was sent (its sender died in between) is recovered by the
sweeper, which resends a routed job's attempt once nothing moved it for a while.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, cast

import redis
from redis.commands.core import Script

from tierflow.core.config import LLMConfig
from tierflow.core.constants import BATCH_PRIORITY, Keys, Tier

DEFAULT_DAEMON = "-"  # the line of the jobs that name no daemon
# Batch lines (priority BATCH_PRIORITY and below) wait in a line of their own, admitted only when
# no daemon's line is eligible: batches yield to daemons, as they did by priority alone.
BATCH_LINE = "~batch"

# The shared body: drop expired slots, then admit while a slot is free and a daemon is eligible.
_COMMON = """
local stem = KEYS[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function free(m)
  if redis.call('ZREM', stem .. ':slots', m) == 0 then return end
  local d = redis.call('HGET', stem .. ':owner', m)
  if d then
    redis.call('HDEL', stem .. ':owner', m)
    if redis.call('HINCRBY', stem .. ':count', d, -1) <= 0 then
      redis.call('HDEL', stem .. ':count', d)
    end
  end
end
local function expire()
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', stem .. ':slots', '-inf', now)) do
    free(m)
  end
end
local function admit(capacity, ttl)
  local out = {}
  while capacity < 0 or redis.call('ZCARD', stem .. ':slots') < capacity do
    local picked = nil
    local ready = redis.call('ZRANGE', stem .. ':ready', 0, -1, 'WITHSCORES')
    -- first round: every daemon but the batch line; second: the batch line, which yields
    for round = 1, 2 do
      for i = 1, #ready, 2 do
        local d = ready[i]
        if (d == ARGV[#ARGV]) == (round == 2) then
          local conf = redis.call('HGET', stem .. ':conf', d) or '1 0'
          local weight, cap = string.match(conf, '^(%S+) (%S+)$')
          cap = tonumber(cap)
          local held = tonumber(redis.call('HGET', stem .. ':count', d) or '0')
          if cap <= 0 or held < cap then
            picked = {d, tonumber(ready[i + 1]), tonumber(weight)}
            break
          end
        end
      end
      if picked then break end
    end
    if not picked then break end
    local d, pass, weight = picked[1], picked[2], picked[3]
    local line = stem .. ':q:' .. d
    local head = redis.call('ZPOPMIN', line)
    if #head == 0 then
      redis.call('ZREM', stem .. ':ready', d)
    else
      local payload = head[1]
      local member = cjson.decode(payload)['m']
      redis.call('HDEL', stem .. ':waiting', member)
      redis.call('ZADD', stem .. ':slots', now + ttl, member)
      redis.call('HSET', stem .. ':owner', member, d)
      redis.call('HINCRBY', stem .. ':count', d, 1)
      redis.call('HINCRBY', stem .. ':served', d, 1)
      redis.call('SET', stem .. ':vtime', pass)
      local nxt = pass + 1 / weight
      if redis.call('ZCARD', line) == 0 then
        redis.call('ZREM', stem .. ':ready', d)
        redis.call('HSET', stem .. ':pass', d, nxt)
      else
        redis.call('ZADD', stem .. ':ready', nxt, d)
      end
      out[#out + 1] = payload
    end
  end
  return out
end
"""

# ARGV: capacity (-1: none), slot ttl ms, daemon, "weight cap", member, payload, priority,
# the batch line's name (last, as in every script: admit() reads it there)
_OFFER = (
    _COMMON
    + """
expire()
local capacity, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local d, member, payload = ARGV[3], ARGV[5], ARGV[6]
redis.call('HSET', stem .. ':conf', d, ARGV[4])
if redis.call('ZSCORE', stem .. ':slots', member) then
  redis.call('ZADD', stem .. ':slots', now + ttl, member)
  return {payload}
end
if redis.call('HSETNX', stem .. ':waiting', member, d) == 0 then
  return admit(capacity, ttl)  -- already in a line (a resend): it keeps its place
end
local line = stem .. ':q:' .. d
local seq = redis.call('INCR', stem .. ':seq')
redis.call('ZADD', line, (9 - tonumber(ARGV[7])) * 1e12 + seq, payload)
if not redis.call('ZSCORE', stem .. ':ready', d) then
  local vtime = tonumber(redis.call('GET', stem .. ':vtime') or '0')
  local pass = tonumber(redis.call('HGET', stem .. ':pass', d) or '0')
  if pass < vtime then pass = vtime end
  redis.call('ZADD', stem .. ':ready', pass, d)
end
return admit(capacity, ttl)
"""
)

# ARGV: capacity, slot ttl ms, member ('' : none), the batch line's name
_RELEASE = (
    _COMMON
    + """
local member = ARGV[3]
if member ~= '' then free(member) end
expire()
return admit(tonumber(ARGV[1]), tonumber(ARGV[2]))
"""
)


@lru_cache(maxsize=16)
def _script(client: redis.Redis, source: str) -> Script:
    """``client``'s registered script for ``source``, made once per client."""
    return client.register_script(source)


def slot_member(job_id: str, attempt_no: int, retries_in_step: int, waits: int) -> str:
    """The slot name of one attempt message: the same for every delivery of that message."""
    return f"{job_id}:{attempt_no}:{retries_in_step}:{waits}"


def job_daemon(metadata: dict[str, Any] | None) -> str | None:
    """A job's daemon: ``metadata.daemon`` (set by the gateway from its key, or by the daemon)
    when it is a name of 1-64 characters; None otherwise (the jobs of no daemon share a line)."""
    daemon = (metadata or {}).get("daemon")
    return daemon if isinstance(daemon, str) and 0 < len(daemon) <= 64 else None


def tier_capacity(config: LLMConfig, tier: Tier | str) -> int | None:
    """Attempts the tier can run at once: the sum of its models' ``max_concurrency``; None when
    any model has no cap (the tier is then unbounded and only daemons' caps apply), or when it
    has no enabled model (nothing to share: an attempt sent there is skipped at once, and must
    not wait for a slot that never frees)."""
    models = config.tier_models(tier)
    if not models:
        return None
    total = 0
    for model in models:
        cap = model.limits.max_concurrency
        if cap is None:
            return None
        total += cap
    return total


def contended(config: LLMConfig, tier: Tier | str) -> bool:
    """Whether admission applies to ``tier``: fair shares are on (``fair_share``) and it has
    a capacity or some daemon has a cap. Elsewhere nothing can be shared and attempts go
    straight to the queue."""
    if not config.fair_share:
        return False
    return tier_capacity(config, tier) is not None or any(
        share.max_in_flight is not None for share in config.daemons.values()
    )


@dataclass(frozen=True)
class DaemonLoad:
    """One daemon on one tier: attempts running (slots held), waiting, and admitted so far."""

    running: int
    waiting: int
    served: int


class FairShare:
    """Admission to the contended tiers of one fleet (one Redis, one key prefix)."""

    def __init__(self, client: redis.Redis, keys: Keys, config: LLMConfig, slot_ttl_s: float):
        if slot_ttl_s <= 0:
            raise ValueError(f"slot_ttl_s must be above 0, got {slot_ttl_s}")
        self.redis = client
        self.keys = keys
        self.config = config
        self.ttl_ms = int(slot_ttl_s * 1000)
        self._offer = _script(client, _OFFER)
        self._release = _script(client, _RELEASE)

    def _capacity(self, tier: Tier) -> int:
        capacity = tier_capacity(self.config, tier)
        return -1 if capacity is None else capacity

    def offer(
        self, tier: Tier, daemon: str | None, member: str, payload: dict[str, Any], priority: int
    ) -> list[dict[str, Any]]:
        """Put one attempt message (``payload``, JSON-able, ``payload['m'] == member``) in its
        daemon's line and admit what fits: the payloads to send now, in order (possibly this
        one, possibly others, possibly none). A member already holding a slot is sent again
        at once, its slot renewed."""
        if payload.get("m") != member:
            raise ValueError("payload['m'] must be the slot member")
        raw = self._offer(
            keys=[self.keys.fair(Tier(tier).value)],
            args=self._offer_args(tier, daemon, payload, priority),
        )
        return [json.loads(p) for p in raw]

    def offer_many(self, tier: Tier, payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """:meth:`offer` of each of ``payloads`` in turn (each carries its member ``m``, its
        daemon ``d`` and its priority ``p``, as :func:`router.dispatch.attempt_payload` builds
        them), in one pipelined round trip: the same script, run once per payload in this
        order, so the lines, the slots and what is admitted are those of one offer each. Returns
        every payload to send now, in the order the offers admitted them."""
        if not payloads:
            return []
        key = self.keys.fair(Tier(tier).value)
        pipe = self.redis.pipeline(transaction=False)
        for payload in payloads:
            if not payload.get("m"):
                raise ValueError("each payload needs its slot member 'm'")
            self._offer(
                keys=[key],
                args=self._offer_args(tier, payload.get("d"), payload, int(payload["p"])),
                client=pipe,
            )
        return [json.loads(p) for raw in pipe.execute() for p in raw]

    def _offer_args(
        self, tier: Tier, daemon: str | None, payload: dict[str, Any], priority: int
    ) -> list[Any]:
        """The offer script's ARGV (see ``_OFFER``) for one payload."""
        name = BATCH_LINE if priority <= BATCH_PRIORITY else daemon or DEFAULT_DAEMON
        share = self.config.daemons.get(name)
        weight = share.weight if share else 1.0
        cap = share.max_in_flight if share and share.max_in_flight else 0
        return [
            self._capacity(tier),
            self.ttl_ms,
            name,
            f"{weight!r} {cap}",
            payload["m"],
            json.dumps(payload, separators=(",", ":"), sort_keys=True),
            priority,
            BATCH_LINE,
        ]

    def release(self, tier: Tier, member: str | None) -> list[dict[str, Any]]:
        """Free ``member``'s slot (None or unknown: nothing to free) and admit what fits now:
        the payloads to send. Called with None it only re-admits (after slots expired)."""
        raw = self._release(
            keys=[self.keys.fair(Tier(tier).value)],
            args=[self._capacity(tier), self.ttl_ms, member or "", BATCH_LINE],
        )
        return [json.loads(p) for p in raw]

    def loads(self, tier: Tier) -> dict[str, DaemonLoad]:
        """Per daemon on ``tier``: running, waiting and admitted so far (for the dashboard and
        the bench)."""
        stem = self.keys.fair(Tier(tier).value)
        counts = cast(dict[Any, Any], self.redis.hgetall(f"{stem}:count"))
        served = cast(dict[Any, Any], self.redis.hgetall(f"{stem}:served"))
        ready = cast(list[Any], self.redis.zrange(f"{stem}:ready", 0, -1))
        names = {_text(n) for n in [*counts, *served, *ready]}
        pipe = self.redis.pipeline(transaction=False)
        ordered = sorted(names)
        for name in ordered:
            pipe.zcard(f"{stem}:q:{name}")
        waiting = dict(zip(ordered, pipe.execute(), strict=True))
        decoded_counts = {_text(k): int(v) for k, v in counts.items()}
        decoded_served = {_text(k): int(v) for k, v in served.items()}
        return {
            n: DaemonLoad(decoded_counts.get(n, 0), int(waiting[n]), decoded_served.get(n, 0))
            for n in ordered
        }


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
