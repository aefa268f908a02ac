"""The gateway's API keys: made here, stored only as their sha256, each tied to a daemon.

A key is ``tf_`` and 32 random bytes (URL-safe base64); :func:`create_key` returns it once and
keeps only :func:`hash_key` of it, so neither the database nor a log ever holds a key in clear.
A presented key is looked up by its hash (an index lookup on a unique column: equal hashes, no
timing signal about the key itself); a revoked key opens nothing.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, update

from schemas.tables import ApiKey
from tierflow.core.db import session_scope
from tierflow.core.errors import JobValidationError

KEY_PREFIX = "tf_"
DAEMON_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class KeyInfo:
    """What ``tierflow keys list`` shows of a key: never the key, never its hash."""

    id: int
    daemon: str
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None


def hash_key(key: str) -> str:
    """The sha256 (hex) of a key: what the table stores and looks keys up by."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def create_key(daemon: str) -> tuple[int, str]:
    """A new key for ``daemon``: returns its id and the key (shown once, stored hashed)."""
    if not DAEMON_PATTERN.match(daemon):
        raise JobValidationError(
            "daemon: 1-64 characters of letters, digits, '_', '.' or '-', starting with a "
            "letter or digit"
        )
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    with session_scope() as session:
        row = ApiKey(daemon=daemon, key_hash=hash_key(key))
        session.add(row)
        session.flush()
        return int(row.id), key


def daemon_for_key(key: str) -> str | None:
    """The daemon a presented key belongs to, or None (unknown, revoked, or not a key)."""
    if not key.startswith(KEY_PREFIX) or len(key) > 200:
        return None
    digest = hash_key(key)
    with session_scope() as session:
        daemon = session.execute(
            update(ApiKey)
            .where(ApiKey.key_hash == digest, ApiKey.revoked_at.is_(None))
            .values(last_used_at=func.now())
            .returning(ApiKey.daemon)
        ).scalar_one_or_none()
    return daemon


def list_keys() -> list[KeyInfo]:
    """Every key, oldest first (revoked ones included)."""
    with session_scope() as session:
        rows = session.execute(select(ApiKey).order_by(ApiKey.id)).scalars()
        return [KeyInfo(r.id, r.daemon, r.created_at, r.revoked_at, r.last_used_at) for r in rows]


def revoke_key(key_id: int) -> bool:
    """Revoke a key by id; False when no such key exists (revoking twice is fine)."""
    with session_scope() as session:
        found = session.execute(
            update(ApiKey)
            .where(ApiKey.id == key_id)
            .values(revoked_at=func.coalesce(ApiKey.revoked_at, func.now()))
            .returning(ApiKey.id)
        ).scalar_one_or_none()
    return found is not None
