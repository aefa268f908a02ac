"""Dead letters: broker messages refused (poison, unknown task, bad arguments), with the reason."""

from __future__ import annotations

from schemas.tables import DeadLetter
from tierflow.core.db import session_scope


def storable_text(text: str) -> str:
    """``text`` with what PostgreSQL's text type refuses (NUL, lone surrogates) replaced."""
    return text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")


def record_dead_letter(
    reason: str,
    *,
    queue: str | None = None,
    task: str | None = None,
    job_id: str | None = None,
    body: str | bytes | None = None,
) -> None:
    """Store why a broker message was refused. Any text is accepted: values are cut to their
    columns' sizes and NUL or undecodable characters escaped, so a poison message can always
    be recorded. The named job, if any, is left as it is."""
    excerpt = body.decode("utf-8", "replace") if isinstance(body, bytes) else body

    def fit(value: str | None, size: int) -> str | None:
        return storable_text(value)[:size] if value else None

    with session_scope() as session:
        session.add(
            DeadLetter(
                queue=fit(queue, 100),
                task=fit(task, 200),
                job_id=fit(job_id, 36),
                reason=fit(reason, 2000) or "(no reason given)",
                body_excerpt=fit(excerpt, 500),
            )
        )
