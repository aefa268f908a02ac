"""A batch's lines stored a chunk at a time: one multi-row insert, one transaction per chunk.

``create_batch_jobs`` is :func:`tierflow.store.jobs.create_job` for many lines at once, with the
same promises per line: one job per idempotency key, the key bound to its request's fingerprint
(the same key with another request is that line's :class:`IdempotencyConflict`, nothing stored
for it), a planned line stored routed with its plan in the insert. The whole chunk is one
transaction: its insert (``INSERT .. SELECT .. FROM unnest(<one array per column>) ON CONFLICT
DO NOTHING RETURNING``) and the read of the rows it found already there (their id, fingerprint
and status, so a resume knows without another read which stored lines may still be unsent).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from schemas.jobs import JobRequest
from schemas.tables import Job
from tierflow.core.db import session_scope
from tierflow.core.errors import IdempotencyConflict
from tierflow.store.jobs import job_row


@dataclass(frozen=True)
class NewLine:
    """One line to store: its request (with its idempotency key), its line number in the batch
    (0-based) and, when the submitter planned it, ``(complexity, plan)``."""

    request: JobRequest
    line: int
    plan: tuple[str, dict[str, Any]] | None = None


@dataclass(frozen=True)
class StoredLine:
    """What became of one line: its job, whether this call created it, and the job's status
    (the stored one for a line found there already). ``conflict`` is set, and ``job_id`` names
    the other job, when the key was bound to another request: nothing was stored for it."""

    job_id: str
    created: bool
    status: str
    conflict: IdempotencyConflict | None = None


_COLUMNS = (
    "id", "idempotency_key", "request_fingerprint", "status", "action_type", "prompt", "context",
    "metadata", "priority", "stream", "allow_degraded", "deadline", "batch_id", "batch_line",
    "complexity", "plan",
)  # fmt: skip
# Each column's array type: the chunk goes as one array per column, unnested into rows.
_TYPES = (
    "varchar", "varchar", "varchar", "varchar", "varchar", "text", "jsonb", "jsonb", "int4",
    "bool", "bool", "timestamptz", "varchar", "int4", "varchar", "jsonb",
)  # fmt: skip
_JSON_COLUMNS = frozenset({"context", "metadata", "plan"})
# One statement for any chunk: its text is short and the same every time, so the driver parses
# it once (a VALUES list of 500 rows cost more to parse client-side than to run). The constant
# columns as create_job's insert writes them.
_INSERT_SQL = (
    f"INSERT INTO jobs ({', '.join(_COLUMNS)}, cost_usd, api_baseline_cost_usd, degraded, fake, "
    "created_at, updated_at) SELECT *, 0, 0, false, false, now(), now() FROM unnest("
    + ", ".join(f"%s::{t}[]" for t in _TYPES)
    + ") ON CONFLICT (idempotency_key) DO NOTHING RETURNING idempotency_key"
)


def _row(item: NewLine, batch_id: str, default_deadline_s: int) -> dict[str, Any]:
    request = item.request
    if request.idempotency_key is None:
        raise ValueError(f"batch line {item.line} has no idempotency key")
    fingerprint = request.fingerprint()
    return job_row(request, fingerprint, default_deadline_s, batch_id, item.line, item.plan)


def _params(rows: Sequence[dict[str, Any]]) -> tuple[list[Any], ...]:
    """One list per column (JSON as text: the statement casts it), rows in order."""
    return tuple(
        [None if row[name] is None else json.dumps(row[name]) for row in rows]
        if name in _JSON_COLUMNS
        else [row[name] for row in rows]
        for name in _COLUMNS
    )


def create_batch_jobs(
    items: Sequence[NewLine], batch_id: str, default_deadline_s: int
) -> list[StoredLine]:
    """Store a chunk of a batch's lines in one transaction; one :class:`StoredLine` per item,
    in order. Raises ``ValueError`` for an item without an idempotency key (a batch line always
    has one) or a chunk holding one key twice, and SQLAlchemy's errors for the database's
    (nothing of the chunk is then stored).

    The insert is sent as the driver's own statement, one array per column unnested into rows
    (no SQL compiled or parsed per chunk: either costs more than running the insert).
    """
    if not items:
        return []
    rows = [_row(item, batch_id, default_deadline_s) for item in items]
    keys = [row["idempotency_key"] for row in rows]
    if len(set(keys)) != len(keys):
        raise ValueError("a chunk holds one idempotency key twice")
    with session_scope() as session:
        connection = session.connection()
        created = {key for (key,) in connection.exec_driver_sql(_INSERT_SQL, _params(rows))}
        missing = [key for key in keys if key not in created]
        found = {
            row.idempotency_key: row
            for row in session.execute(
                select(Job.idempotency_key, Job.id, Job.request_fingerprint, Job.status).where(
                    Job.idempotency_key.in_(missing)
                )
            )
        } if missing else {}  # fmt: skip
    stored: list[StoredLine] = []
    for row in rows:
        key = row["idempotency_key"]
        if key in created:
            stored.append(StoredLine(row["id"], True, row["status"]))
            continue
        other = found[key]  # the row the insert conflicted with
        same = other.request_fingerprint in (None, row["request_fingerprint"])
        conflict = None if same else IdempotencyConflict(key, other.id)
        stored.append(StoredLine(other.id, False, other.status, conflict))
    return stored
