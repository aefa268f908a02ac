"""The Redis connection shared by notifications, limits and the fleet mode."""

from __future__ import annotations

from functools import lru_cache

import redis

from tierflow.core.constants import Keys
from tierflow.core.settings import get_settings


@lru_cache(maxsize=4)
def redis_for(url: str) -> redis.Redis:
    return redis.Redis.from_url(
        url,
        decode_responses=True,
        health_check_interval=30,
        socket_timeout=10,
        socket_connect_timeout=5,
        retry_on_timeout=True,
    )


def get_redis() -> redis.Redis:
    return redis_for(get_settings().effective_redis_url)


def get_keys() -> Keys:
    return Keys(get_settings().key_prefix)
