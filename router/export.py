"""The seed's usage log: ``export_usage_log(path)`` writes one JSON line per finished attempt.

Each line: ``time`` (ISO, UTC, when the attempt started), ``job_id``, ``action``, ``tier``,
``model``, ``provider``, ``input_tokens``, ``output_tokens``, ``latency_ms``, ``cost`` (US
dollars), ``quality`` (the gate's confidence, None when no answer), ``status`` (passed, rejected,
error, skipped), ``error`` and ``fake``. Attempts still running are left out. No prompt, answer
or API key is written; error texts (which backends already build without keys) are scrubbed of
anything shaped like a key or a bearer token as a second guard.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import IO, Any

from schemas.tables import Attempt
from tierflow.core.secrets import scrub as scrub_secrets
from tierflow.store.costs import Window, as_time
from tierflow.store.usage import finished_attempts

_SECRET = re.compile(
    r"(?i:api[_-]?key|x-api-key|authorization)[\"']?\s*[:=]\s*[\"']?(?:(?i:bearer)\s+)?"
    r"[^\s\"',;}]{6,}"
    r"|(?i:bearer)\s+[\w.\-~+/=]{8,}"
    r"|sk-ant-[\w-]{6,}|sk-[\w-]{12,}"
)


def scrub(text: str | None) -> str | None:
    """``text`` with anything shaped like an API key or bearer token, the value of a key
    variable and a URL's password replaced by ``***`` (:func:`tierflow.core.secrets.scrub`,
    then this module's wider key shapes)."""
    return _SECRET.sub("***", scrub_secrets(text)) if text else text


def usage_record(attempt: Attempt, action: str) -> dict[str, Any]:
    """One line of the usage log for a stored attempt."""
    return {
        "time": attempt.started_at.isoformat() if attempt.started_at else None,
        "job_id": attempt.job_id,
        "action": action,
        "tier": attempt.tier,
        "model": attempt.model,
        "provider": attempt.provider,
        "input_tokens": attempt.input_tokens or 0,
        "output_tokens": attempt.output_tokens or 0,
        "latency_ms": round(attempt.latency_ms, 1) if attempt.latency_ms is not None else None,
        "cost": float(attempt.cost_usd or 0),
        "quality": attempt.quality_score,
        "status": attempt.status,
        "error": scrub(attempt.error),
        "fake": bool(attempt.fake),
    }


def _write(out: IO[str], since: Window) -> int:
    count = 0
    for attempt, action in finished_attempts(as_time(since)):
        out.write(json.dumps(usage_record(attempt, action)) + "\n")
        count += 1
    return count


def export_usage_log(path: str | Path, since: Window = None) -> int:
    """Write attempts started at or after ``since`` (all when None) to ``path`` (``-``: stdout),
    oldest first; return how many lines were written. The file is replaced, not appended to."""
    if str(path) == "-":
        return _write(sys.stdout, since)
    with Path(path).open("w", encoding="utf-8") as out:
        return _write(out, since)
