"""Quick answers to "is it up?" for a fleet ``tierflow up`` recorded: each in about a second."""

from __future__ import annotations

import os

import psycopg
import redis

TIMEOUT_S = 1.0


def process_alive(pid: int) -> bool:
    """Whether a process with ``pid`` exists (one we may not signal counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def redis_answers(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def postgres_answers(url: str) -> bool:
    dsn = url.replace("postgresql+psycopg://", "postgresql://", 1)
    try:
        with psycopg.connect(dsn, connect_timeout=max(1, int(TIMEOUT_S))):
            return True
    except (psycopg.Error, OSError):
        return False
