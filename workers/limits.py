"""Fleet-wide limits in Redis, atomic across every worker process and host.

- **Rate limits**: requests, input tokens and output tokens per minute, per model, as sliding
  60-second windows kept in sorted sets and checked-and-taken in one Lua script using Redis' own
  clock (no skew between hosts). Output tokens are reserved at the request's ``max_tokens`` and
  settled to the real count afterwards.
- **Cooldowns**: an error carrying ``retry-after``, a 429/529 or a rejected key keeps every
  worker off the model for a while (how long: :mod:`workers.attempt`). A cooldown is only ever
  extended, never shortened: a later 429 without ``retry-after`` (2 s) cannot cut short the
  30 s another worker was asked to wait.
- **Circuit breaker** per model: ``failure_threshold`` consecutive retryable failures open it for
  ``open_for_s``; then exactly one probe at a time is let through (half-open): its success
  closes the circuit, its retryable failure opens it again, and anything else (a permanent
  error, or the probe not being sent after all) frees the probe for the next caller.
- **Concurrency caps**: at most ``max_concurrency`` calls in flight per model; a slot held by a
  worker that died expires after ``slot_ttl_s``.
- **A healthy model is read once per** :data:`HEALTH_FRESH_S` **per process**: when the read of a
  model's cooldown and circuit found nothing at all (no cooldown, closed, no failure counted),
  the process takes that answer for the next 0.1 s instead of asking Redis before every call.
  Anything this process records (a failure, a cooldown) forgets it at once, and any state found
  is never cached, so a half-open probe is still granted by Redis alone; a cooldown or an open
  circuit set by *another* process is seen here within 0.1 s. The rate limits and the
  concurrency caps are never cached: they are taken atomically in Redis for every call.

Nothing here sleeps: a caller that is refused gets the wait in seconds and re-enqueues the job
with that countdown, so a worker slot is never held while waiting.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass
from functools import lru_cache

import redis
from redis.commands.core import Script

from tierflow.core.config import ModelConfig
from tierflow.core.constants import Keys

WINDOW_MS = 60_000  # the per-minute limits' window; FleetLimits(window_s=...) for tests
HEALTH_FRESH_S = 0.1  # how long a read that found a model healthy is taken as true (see above)

_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local member = ARGV[2]
local wait = 0
-- pass 1: check every limit
for i = 1, #KEYS do
  local limit = tonumber(ARGV[2 + 2 * i - 1])
  local amount = tonumber(ARGV[2 + 2 * i])
  if limit > 0 and amount > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - window)
    local used = 0
    local entries = redis.call('ZRANGE', KEYS[i], 0, -1, 'WITHSCORES')
    for j = 1, #entries, 2 do
      used = used + tonumber(string.match(entries[j], '|(%d+)$'))
    end
    if used + amount > limit then
      if amount > limit then return -1 end
      -- free up: walk oldest first until enough would have expired
      local need = used + amount - limit
      local freed = 0
      for j = 1, #entries, 2 do
        freed = freed + tonumber(string.match(entries[j], '|(%d+)$'))
        if freed >= need then
          local w = tonumber(entries[j + 1]) + window - now
          if w > wait then wait = w end
          break
        end
      end
    end
  end
end
if wait > 0 then return wait end
-- pass 2: take
for i = 1, #KEYS do
  local limit = tonumber(ARGV[2 + 2 * i - 1])
  local amount = tonumber(ARGV[2 + 2 * i])
  if limit > 0 and amount > 0 then
    redis.call('ZADD', KEYS[i], now, member .. '|' .. amount)
    redis.call('PEXPIRE', KEYS[i], window + 1000)
  end
end
return 0
"""

_SETTLE = """
-- replace a reserved amount by the real one, keeping its timestamp
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score then
  redis.call('ZREM', KEYS[1], ARGV[1])
  if tonumber(ARGV[3]) > 0 then
    redis.call('ZADD', KEYS[1], score, ARGV[2])
  end
end
return 0
"""

_COOL = """
-- extend a cooldown, never shorten it
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
  return 1
end
return 0
"""

_RELEASE_PROBE = """
-- free the half-open probe only if this caller holds it
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

_STATE = """
-- a model's cooldown and circuit, read at once; in the half-open state (nothing cooling, not
-- open) the one probe is granted to this caller if no one holds it
local cooling = redis.call('PTTL', KEYS[1])
local open_ttl = redis.call('PTTL', KEYS[2])
local half = redis.call('EXISTS', KEYS[3])
local fails = redis.call('EXISTS', KEYS[4])
local probe = 0
if cooling <= 0 and open_ttl <= 0 and half == 1 then
  if redis.call('SET', KEYS[5], ARGV[1], 'NX', 'PX', ARGV[2]) then probe = 1 end
end
return {cooling, open_ttl, half, fails, probe}
"""

_SLOT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[3]))
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now, ARGV[2])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
  return 1
end
return 0
"""


@dataclass(frozen=True)
class Reservation:
    """What ``reserve`` took; ``wait_s`` > 0 means refused, come back after that many seconds."""

    member: str
    input_tokens: int
    output_tokens: int
    wait_s: float = 0.0
    impossible: bool = False  # one request alone is over a per-minute limit

    @property
    def granted(self) -> bool:
        return self.wait_s == 0 and not self.impossible


class _HealthView:
    """This process's recent "nothing at all" reads: (client, cooldown key) -> the monotonic
    time until which the model is taken as healthy. Shared by every :class:`FleetLimits` of the
    process (an attempt builds one each time). A read stores its answer only if nothing was
    recorded for the model while it was in flight (the key's generation did not move)."""

    def __init__(self) -> None:
        self._until: dict[tuple[int, str], float] = {}
        self._generation: dict[tuple[int, str], int] = {}
        self._lock = threading.Lock()

    def fresh(self, key: tuple[int, str]) -> bool:
        until = self._until.get(key)
        return until is not None and time.monotonic() < until

    def generation(self, key: tuple[int, str]) -> int:
        return self._generation.get(key, 0)

    def healthy(self, key: tuple[int, str], for_s: float, generation: int) -> None:
        with self._lock:
            if self._generation.get(key, 0) != generation:
                return  # a failure or cooldown was recorded meanwhile: the read is stale
            if len(self._until) > 4096:  # many prefixes (tests): forget the oldest half
                for old in sorted(self._until, key=self._until.__getitem__)[:2048]:
                    del self._until[old]
            self._until[key] = time.monotonic() + for_s

    def forget(self, key: tuple[int, str]) -> None:
        with self._lock:
            self._until.pop(key, None)
            self._generation[key] = self._generation.get(key, 0) + 1  # one int per model


_HEALTH = _HealthView()


@lru_cache(maxsize=64)
def _script(client: redis.Redis, source: str) -> Script:
    """``client``'s registered script for ``source``, made once per client (a new object
    hashes its source again; an attempt builds a :class:`FleetLimits` each time)."""
    return client.register_script(source)


class FleetLimits:
    """Limits shared by the whole fleet through one Redis."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        *,
        failure_threshold: int = 5,
        open_for_s: float = 30.0,
        slot_ttl_s: float = 600.0,
        window_s: float = WINDOW_MS / 1000,
        health_fresh_s: float = HEALTH_FRESH_S,
    ) -> None:
        self.redis = client
        self.keys = keys
        self.failure_threshold = failure_threshold
        self.open_for_s = open_for_s
        self.slot_ttl_s = slot_ttl_s
        self.window_ms = max(int(window_s * 1000), 1)
        self.health_fresh_s = health_fresh_s
        self._acquire = _script(client, _ACQUIRE)
        self._settle = _script(client, _SETTLE)
        self._cool = _script(client, _COOL)
        self._release_probe = _script(client, _RELEASE_PROBE)
        self._slot = _script(client, _SLOT)
        self._state = _script(client, _STATE)
        # Probe tokens this object was granted by ``blocked`` (model name -> token).
        self._probes: dict[str, str] = {}
        self._clean: set[str] = set()  # models whose circuit blocked() found with no state

    # -- rate limits -----------------------------------------------------------------------
    def _rate_keys(self, model: ModelConfig) -> list[str]:
        return [self.keys.rate(f"{model.name}:{kind}") for kind in ("req", "in", "out")]

    def reserve(self, model: ModelConfig, input_tokens: int, output_tokens: int) -> Reservation:
        """Take one request and the tokens from the model's per-minute budgets, or say how long
        to wait."""
        limits = model.limits
        member = uuid.uuid4().hex
        if not (
            limits.requests_per_minute
            or limits.input_tokens_per_minute
            or limits.output_tokens_per_minute
        ):
            return Reservation(member, input_tokens, output_tokens)
        args: list[int | str] = [self.window_ms, member]
        for limit, amount in (
            (limits.requests_per_minute, 1),
            (limits.input_tokens_per_minute, input_tokens),
            (limits.output_tokens_per_minute, output_tokens),
        ):
            args += [limit or 0, max(int(amount), 0)]
        waited = int(self._acquire(keys=self._rate_keys(model), args=args))
        if waited < 0:
            return Reservation(member, input_tokens, output_tokens, impossible=True)
        return Reservation(member, input_tokens, output_tokens, wait_s=waited / 1000.0)

    def settle(
        self, model: ModelConfig, reservation: Reservation, input_tokens: int, output_tokens: int
    ) -> None:
        """Replace the reserved token counts by the real usage (no Redis call for a budget the
        model does not have: ``reserve`` took nothing from it)."""
        _, in_key, out_key = self._rate_keys(model)
        for key, limit, reserved, actual in (
            (in_key, model.limits.input_tokens_per_minute, reservation.input_tokens, input_tokens),
            (
                out_key,
                model.limits.output_tokens_per_minute,
                reservation.output_tokens,
                output_tokens,
            ),
        ):
            if not limit or reserved == actual:
                continue
            self._settle(
                keys=[key],
                args=[f"{reservation.member}|{reserved}", f"{reservation.member}|{actual}", actual],
            )

    # -- cooldowns and the circuit breaker -----------------------------------------------------
    def cool_down(self, model: ModelConfig, seconds: float) -> None:
        """Keep every worker off ``model`` for ``seconds`` (at least 1 ms); never shortens a
        longer cooldown already in place."""
        _HEALTH.forget(self._health_key(model))
        self._cool(keys=[self.keys.cooldown(model.name)], args=[max(int(seconds * 1000), 1)])

    def _health_key(self, model: ModelConfig) -> tuple[int, str]:
        return (id(self.redis), self.keys.cooldown(model.name))

    def blocked(self, model: ModelConfig) -> tuple[str, float] | None:
        """``(reason, seconds)`` when the model is cooled down or its circuit is open, else None.

        In the half-open state the first caller is granted the one probe (None) and every other
        caller is refused until the probe reports back (``record_success``/``record_failure``)
        or is given back (``release_probe``) or expires after ``open_for_s``.

        No Redis call when this process found the model healthy less than ``health_fresh_s``
        ago (see the module: another process's cooldown or opened circuit is seen that late).
        """
        health = self._health_key(model)
        if self.health_fresh_s > 0 and _HEALTH.fresh(health):
            self._clean.add(model.name)
            return None
        generation = _HEALTH.generation(health)
        circuit = self.keys.circuit(model.name)
        token = uuid.uuid4().hex
        state = self._state(  # one command: the four reads, and the probe when half-open
            keys=[
                self.keys.cooldown(model.name),
                circuit + ":open",
                circuit + ":half",
                circuit + ":fails",
                circuit + ":probe",
            ],
            args=[token, self._open_ms],
        )
        cooling, open_ttl, half, fails, probe = (int(v) for v in state)
        if not (half or fails):
            self._clean.add(model.name)  # a success then has nothing to reset
        if cooling <= 0 and open_ttl <= 0 and not (half or fails) and self.health_fresh_s > 0:
            _HEALTH.healthy(health, self.health_fresh_s, generation)
        else:
            _HEALTH.forget(health)
        if cooling > 0:
            return f"cooling down for {cooling / 1000:.1f}s", cooling / 1000.0
        if open_ttl > 0:
            return f"circuit open for {open_ttl / 1000:.1f}s", open_ttl / 1000.0
        if half:
            if probe:
                self._probes[model.name] = token
                return None
            return "circuit half-open: a probe is in flight", 1.0
        return None

    def release_probe(self, model: ModelConfig) -> None:
        """Give back a half-open probe this object holds without a verdict (no call was made,
        or the call ended in a permanent error that says nothing about the provider's health)."""
        token = self._probes.pop(model.name, None)
        if token is not None:
            self._release_probe(keys=[self.keys.circuit(model.name) + ":probe"], args=[token])

    @property
    def _open_ms(self) -> int:
        return max(int(self.open_for_s * 1000), 1)

    def record_success(self, model: ModelConfig) -> None:
        """Reset the model's circuit: its failures are no longer consecutive. No Redis call when
        :meth:`blocked` just found no failure and no half-open state for it (the common case;
        a failure counted by another worker in between is then reset by the next success, or
        expires, see :meth:`record_failure`)."""
        probe = self._probes.pop(model.name, None)
        if model.name in self._clean and probe is None:
            return
        circuit = self.keys.circuit(model.name)
        self.redis.delete(circuit + ":fails", circuit + ":half", circuit + ":probe")

    def record_failure(self, model: ModelConfig) -> bool:
        """Count a retryable failure; True when this one opened the circuit."""
        self._probes.pop(model.name, None)
        _HEALTH.forget(self._health_key(model))
        circuit = self.keys.circuit(model.name)
        pipe = self.redis.pipeline()
        pipe.incr(circuit + ":fails")
        # consecutive failures older than ten open periods are forgotten (at least 1 s)
        pipe.pexpire(circuit + ":fails", max(self._open_ms * 10, 1000))
        fails = int(pipe.execute()[0])
        half_open = bool(self.redis.exists(circuit + ":half"))
        if fails >= self.failure_threshold or half_open:
            pipe = self.redis.pipeline()
            pipe.set(circuit + ":open", "1", px=self._open_ms)
            pipe.set(circuit + ":half", "1")
            pipe.delete(circuit + ":fails", circuit + ":probe")
            pipe.execute()
            return True
        return False

    # -- concurrency caps -----------------------------------------------------------------------
    def take_slot(self, model: ModelConfig) -> str | None:
        """A slot token when under ``max_concurrency`` (or uncapped), else None."""
        token = uuid.uuid4().hex
        cap = model.limits.max_concurrency
        if cap is None:
            return token
        ok = self._slot(
            keys=[self.keys.concurrency(model.name)],
            args=[cap, token, int(self.slot_ttl_s * 1000)],
        )
        return token if int(ok) == 1 else None

    def release_slot(self, model: ModelConfig, token: str) -> None:
        if model.limits.max_concurrency is not None:
            self.redis.zrem(self.keys.concurrency(model.name), token)
