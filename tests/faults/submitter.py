"""Run ``submit_job`` or one sweeper pass in a process of its own, with its own environment.

The test process's Celery app is bound to the broker it was imported with; a test that points
the fleet at another broker (its own ``redis-server``) submits through this instead:

    python -m tests.faults.submitter submit N ACTION PROMPT_PREFIX   -> JSON list of job ids
    python -m tests.faults.submitter sweep STALE_AFTER_S             -> JSON sweep counts
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import timedelta


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    command = argv[0]
    if command == "submit":
        from router import submit_job

        count, action, prefix = int(argv[1]), argv[2], argv[3]
        ids = [submit_job(f"{prefix} #{i}", action).job_id for i in range(count)]
        print(json.dumps(ids))
        return 0
    if command == "sweep":
        from schemas.jobs import utcnow
        from workers.sweeper import sweep

        print(json.dumps(sweep(utcnow(), timedelta(seconds=float(argv[1])))))
        return 0
    print(f"unknown command {command!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
