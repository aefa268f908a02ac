"""A submitter in a process of its own, for tests of what separate processes agree on.

    python -m tests.support.submit_race

Reads one JSON object a line on stdin and answers each with one JSON line on stdout:

- ``{"fingerprint": {...JobRequest fields...}}`` → ``{"fingerprint": "<sha256 hex>"}``
- ``{"submit": {...submit_job kwargs...}, "at": <time.time()>}`` waits until ``at`` (so two
  processes call ``submit_job`` at the same moment), then → ``{"job_id": .., "created": ..}`` or
  ``{"conflict": "<existing job id>", "key": .., "message": ..}``.

It prints ``{"ready": true}`` once imports are done and its database connection is open, so a
race measures the submissions, not the start-up.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime
from typing import Any

from router import submit_job
from schemas.jobs import JobRequest
from tierflow import store
from tierflow.core.errors import IdempotencyConflict


def _request(fields: dict[str, Any]) -> dict[str, Any]:
    if fields.get("deadline"):
        fields = {**fields, "deadline": datetime.fromisoformat(fields["deadline"])}
    return fields


def answer(message: dict[str, Any]) -> dict[str, Any]:
    if "fingerprint" in message:
        return {"fingerprint": JobRequest(**_request(message["fingerprint"])).fingerprint()}
    kwargs = _request(message["submit"])
    while time.time() < message.get("at", 0):
        time.sleep(0.0005)
    try:
        handle = submit_job(**kwargs)
    except IdempotencyConflict as exc:
        return {"conflict": exc.job_id, "key": exc.key, "message": str(exc)}
    return {"job_id": handle.job_id, "created": handle.created}


def main() -> int:
    store.job_status("00000000-0000-0000-0000-000000000000")  # open the pool's connection
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if line.strip():
            print(json.dumps(answer(json.loads(line))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
