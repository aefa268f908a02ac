"""OpenAI's Files and Batch APIs at the gateway: the files' bytes and the batches' rows.

Every read takes the daemon: another daemon's file or batch is not found (None), exactly as
one that does not exist. A batch's lines are ordinary jobs of a tierflow batch
(:mod:`tierflow.store.batches`); what is kept here is the OpenAI face of it: the input file, the
status and its times, the refusals, and the output and error files made when it ends.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, tuple_, update
from sqlalchemy.orm import selectinload

from schemas.jobs import JobResult
from schemas.tables import GatewayBatch, GatewayFile, Job
from tierflow.core.constants import TERMINAL_STATUSES, JobStatus
from tierflow.core.db import session_scope
from tierflow.store.jobs import result_of

# OpenAI's batch statuses that no longer move.
ENDED = frozenset({"completed", "failed", "expired", "cancelled"})


@dataclass(frozen=True)
class FileInfo:
    """A stored file without its bytes (``size`` in bytes, ``created_at`` UTC)."""

    id: str
    daemon: str
    purpose: str
    filename: str
    size: int
    created_at: datetime


def new_id(prefix: str) -> str:
    """An id as OpenAI spells them: ``file-<hex>``, ``batch_<hex>``."""
    return f"{prefix}{uuid.uuid4().hex}"


def _info(row: GatewayFile) -> FileInfo:
    return FileInfo(row.id, row.daemon, row.purpose, row.filename, row.size, row.created_at)


def store_file(daemon: str, purpose: str, filename: str, content: bytes) -> FileInfo:
    """Store a file's bytes for ``daemon``; returns it (a new ``file-...`` id)."""
    row = GatewayFile(
        id=new_id("file-"),
        daemon=daemon,
        purpose=purpose,
        filename=filename[:255],
        size=len(content),
        content=content,
    )
    with session_scope() as session:
        session.add(row)
        session.flush()
        session.refresh(row)
        return _info(row)


def file_info(file_id: str, daemon: str) -> FileInfo | None:
    """The daemon's file (without its bytes), or None."""
    with session_scope() as session:
        row = session.execute(
            select(GatewayFile).where(GatewayFile.id == file_id, GatewayFile.daemon == daemon)
        ).scalar_one_or_none()
        return None if row is None else _info(row)


def file_content(file_id: str, daemon: str) -> bytes | None:
    """The daemon's file's bytes, or None."""
    with session_scope() as session:
        content = session.execute(
            select(GatewayFile.content).where(
                GatewayFile.id == file_id, GatewayFile.daemon == daemon
            )
        ).scalar_one_or_none()
        return None if content is None else bytes(content)


def delete_file(file_id: str, daemon: str) -> bool | None:
    """Delete the daemon's file: True; None when there is no such file of the daemon's;
    False (nothing deleted) while a batch that has not ended reads it as its input."""
    with session_scope() as session:
        row = session.execute(
            select(GatewayFile.id)
            .where(GatewayFile.id == file_id, GatewayFile.daemon == daemon)
            .with_for_update()
        ).scalar_one_or_none()
        if row is None:
            return None
        in_use = session.execute(
            select(GatewayBatch.id).where(
                GatewayBatch.input_file_id == file_id, GatewayBatch.status.not_in(ENDED)
            )
        ).first()
        if in_use is not None:
            return False
        session.execute(delete(GatewayFile).where(GatewayFile.id == file_id))
        return True


def create_gateway_batch(gateway_batch_id: str, **fields: Any) -> None:
    """Insert a batch row (its id, from :func:`new_id`, and the
    :class:`~schemas.tables.GatewayBatch` columns; a ``*_at`` value ``"now"`` is the
    database's clock)."""
    fields = {k: func.now() if k.endswith("_at") and v == "now" else v for k, v in fields.items()}
    with session_scope() as session:
        session.add(GatewayBatch(id=gateway_batch_id, **fields))


def gateway_batch(batch_id: str, daemon: str | None) -> GatewayBatch | None:
    """The batch row (detached), the daemon's only unless ``daemon`` is None; or None."""
    with session_scope() as session:
        query = select(GatewayBatch).where(GatewayBatch.id == batch_id)
        if daemon is not None:
            query = query.where(GatewayBatch.daemon == daemon)
        row = session.execute(query).scalar_one_or_none()
        if row is not None:
            session.expunge(row)
        return row


def list_gateway_batches(daemon: str, limit: int, after: str | None) -> list[GatewayBatch]:
    """The daemon's batches, newest first, at most ``limit``; ``after``: those older than that
    batch (OpenAI's cursor; an unknown cursor gives an empty page)."""
    with session_scope() as session:
        query = select(GatewayBatch).where(GatewayBatch.daemon == daemon)
        if after is not None:
            cursor = session.execute(
                select(GatewayBatch.created_at, GatewayBatch.id).where(
                    GatewayBatch.id == after, GatewayBatch.daemon == daemon
                )
            ).one_or_none()
            if cursor is None:
                return []
            key = tuple_(GatewayBatch.created_at, GatewayBatch.id)
            query = query.where(key < tuple_(cursor.created_at, cursor.id))
        query = query.order_by(GatewayBatch.created_at.desc(), GatewayBatch.id.desc())
        rows = list(session.execute(query.limit(limit)).scalars())
        session.expunge_all()
        return rows


def update_gateway_batch(batch_id: str, only_if_status: tuple[str, ...], **values: Any) -> bool:
    """Set columns of the batch when its status is one of ``only_if_status`` (empty: any);
    returns whether it was updated. A value ``"now"`` for a ``*_at`` column is the database's
    clock."""
    values = {k: func.now() if k.endswith("_at") and v == "now" else v for k, v in values.items()}
    query = update(GatewayBatch).where(GatewayBatch.id == batch_id)
    if only_if_status:
        query = query.where(GatewayBatch.status.in_(only_if_status))
    with session_scope() as session:
        return bool(session.execute(query.values(**values)).rowcount)  # type: ignore[attr-defined]


def line_counts(batch_id: str) -> dict[str, int]:
    """The tierflow batch's jobs: ``stored``, ``open`` (not finished), ``succeeded``, ``ended``
    (finished without an answer): one aggregate read."""
    open_ = Job.status.not_in(TERMINAL_STATUSES)
    ok = Job.status == JobStatus.SUCCEEDED.value
    with session_scope() as session:
        stored, open_count, succeeded = session.execute(
            select(
                func.count(),
                func.count().filter(open_),
                func.count().filter(ok),
            ).where(Job.batch_id == batch_id)
        ).one()
    ended = int(stored) - int(open_count) - int(succeeded)
    return {
        "stored": int(stored),
        "open": int(open_count),
        "succeeded": int(succeeded),
        "ended": ended,
    }


def batch_results(batch_id: str) -> Iterator[tuple[JobResult, dict[str, Any]]]:
    """Each job of the tierflow batch by line, as its :class:`JobResult` with its metadata,
    read 500 at a time (the attempts with them)."""
    query = (
        select(Job)
        .where(Job.batch_id == batch_id)
        .order_by(Job.batch_line)
        .options(selectinload(Job.attempts))
        .execution_options(yield_per=500)
    )
    with session_scope() as session:
        for job in session.execute(query).scalars():
            yield result_of(job, list(job.attempts)), dict(job.job_metadata or {})


def finish_gateway_batch(
    batch_id: str, status: str, files: dict[str, tuple[str, bytes]], counts: dict[str, int]
) -> bool:
    """End the batch once: store its output and error files (``files``: column name to
    ``(filename, bytes)``), set ``status`` with its time, the final counts and the files' ids;
    returns False (storing nothing) when another finisher ended it first (the row is locked)."""
    with session_scope() as session:
        row = session.execute(
            select(GatewayBatch).where(GatewayBatch.id == batch_id).with_for_update()
        ).scalar_one_or_none()
        if row is None or row.status in ENDED:
            return False
        for column, (filename, content) in files.items():
            stored = GatewayFile(
                id=new_id("file-"),
                daemon=row.daemon,
                purpose="batch_output",
                filename=filename,
                size=len(content),
                content=content,
            )
            session.add(stored)
            setattr(row, column, stored.id)
        row.status = status
        row.finalizing_at = row.finalizing_at or func.now()
        setattr(row, f"{status}_at", func.now())
        row.completed = counts["completed"]
        row.failed = counts["failed"]
        return True
