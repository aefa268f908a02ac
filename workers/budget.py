"""Per-daemon spend ceilings (``budgets:`` of the config), atomic across the fleet in Redis.

Before a paid call the attempt *reserves* its estimated cost (the estimated prompt tokens and
the model's ``max_tokens`` at the model's prices) against the daemon's day and month totals in
one Lua script: refused when spent + reserved + this estimate would pass a ceiling. After the
call the hold is *settled* to the real cost (the attempt's ``cost_usd``, gate calls included).
Reservations are made under one lock-free script, so any number of workers on any hosts never
pass a ceiling by more than the amount one call costs beyond its estimate. A hold is keyed by
``(job, attempt_no)``: settling twice (a redelivery) changes nothing, and a worker that dies
between reserve and settle leaves its estimate counted (the safe side) until the period ends.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import redis

from tierflow.core.config import DaemonBudget, ModelConfig
from tierflow.core.constants import Keys

DAY_TTL_S = 3 * 86400
MONTH_TTL_S = 40 * 86400

RESERVE = """
local day = tonumber(redis.call('GET', KEYS[1]) or '0')
local month = tonumber(redis.call('GET', KEYS[2]) or '0')
local est = tonumber(ARGV[1])
local daily = tonumber(ARGV[2])
local monthly = tonumber(ARGV[3])
if daily >= 0 and day + est > daily then return {0, tostring(day)} end
if monthly >= 0 and month + est > monthly then return {0, tostring(month)} end
if redis.call('HEXISTS', KEYS[3], ARGV[4]) == 1 then return {1, 'held'} end
redis.call('INCRBYFLOAT', KEYS[1], ARGV[1])
redis.call('INCRBYFLOAT', KEYS[2], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('EXPIRE', KEYS[2], ARGV[6])
redis.call('HSET', KEYS[3], ARGV[4], ARGV[1] .. ' ' .. KEYS[1] .. ' ' .. KEYS[2])
redis.call('EXPIRE', KEYS[3], ARGV[6])
return {1, 'reserved'}
"""

SETTLE = """
local hold = redis.call('HGET', KEYS[1], ARGV[1])
if not hold then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
local est, day, month = string.match(hold, '^(%S+) (%S+) (%S+)$')
local delta = tonumber(ARGV[2]) - tonumber(est)
redis.call('INCRBYFLOAT', day, delta)
redis.call('INCRBYFLOAT', month, delta)
return 1
"""


class Budgets:
    """The day/month spend of each daemon in Redis under ``prefix``."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.redis = client
        self.prefix = prefix
        self.keys = Keys(prefix)
        self._reserve = client.register_script(RESERVE)
        self._settle = client.register_script(SETTLE)

    def _keys(self, daemon: str, now: datetime | None = None) -> tuple[str, str, str]:
        return (*self.keys.budget_periods(daemon, now), self.keys.budget_holds(daemon))

    def reserve(self, daemon: str, budget: DaemonBudget, hold: str, estimate_usd: float) -> bool:
        """Hold ``estimate_usd`` of the daemon's ceilings for ``hold``; False: it would pass one."""
        day, month, holds = self._keys(daemon)
        limits = [-1.0 if v is None else v for v in (budget.daily_usd, budget.monthly_usd)]
        ok, _ = self._reserve(
            keys=[day, month, holds],
            args=[repr(estimate_usd), *map(repr, limits), hold, DAY_TTL_S, MONTH_TTL_S],
        )
        return bool(int(ok))

    def settle(self, daemon: str, hold: str, cost_usd: float) -> bool:
        """Replace the hold's estimate by the real cost; False when nothing was held."""
        _, _, holds = self._keys(daemon)
        return bool(int(self._settle(keys=[holds], args=[hold, repr(float(cost_usd))])))

    def spent(self, daemon: str) -> tuple[float, float]:
        """Today's and this month's spend (settled plus held)."""
        return spent(self.redis, self.keys, daemon)


def spent(client: redis.Redis, keys: Keys, daemon: str) -> tuple[float, float]:
    """A daemon's spend today and this month (UTC), settled plus held, in US dollars."""
    values: list[Any] = list(client.mget(keys.budget_periods(daemon)))  # type: ignore[arg-type]
    return float(values[0] or 0), float(values[1] or 0)


def estimate_cost(model: ModelConfig, input_tokens: int) -> float:
    """A call's cost at most, as far as is known before it: its prompt and ``max_tokens``."""
    return model.price(input_tokens, model.max_tokens)
