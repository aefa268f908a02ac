"""What every fault test measures, read straight from PostgreSQL (not through the fleet's code).

Figures: jobs run, faults injected, jobs lost (not finished in time), duplicate results (a job
with more than one passed attempt, or a job whose cost is not the sum of its calls' costs),
limit violations. Each test prints them in one line and asserts the ones that must be zero.
A job's cost is its attempts' plus its superseded calls' (a delivery fenced out after its lease
was taken over still paid for its call).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, create_engine, text

FINISHED = ("succeeded", "failed", "expired")  # the terminal job statuses
_engines: dict[str, Engine] = {}


def engine(url: str) -> Engine:
    """A small engine of the tests' own, straight to the database (no proxy in between)."""
    if url not in _engines:
        _engines[url] = create_engine(url, pool_pre_ping=True, pool_size=2)
    return _engines[url]


def rows(url: str, sql: str, **params: Any) -> list[dict[str, Any]]:
    with engine(url).connect() as conn:
        return [dict(r._mapping) for r in conn.execute(text(sql), params)]


def execute(url: str, sql: str, **params: Any) -> int:
    """Run one statement and commit it; return the row count."""
    with engine(url).begin() as conn:
        return int(conn.execute(text(sql), params).rowcount)


def wait_finished(url: str, job_ids: Iterable[str], timeout: float) -> dict[str, str]:
    """Poll until every job is finished (or ``timeout``); return id -> status."""
    ids = list(job_ids)
    deadline = time.monotonic() + timeout
    while True:
        found = {
            r["id"]: r["status"]
            for r in rows(url, "SELECT id, status FROM jobs WHERE id = ANY(:ids)", ids=ids)
        }
        if all(found.get(i) in FINISHED for i in ids):
            return found
        if time.monotonic() > deadline:
            return found
        time.sleep(0.25)


@dataclass
class Figures:
    name: str
    jobs: int = 0
    succeeded: int = 0
    failed: int = 0
    lost: int = 0
    duplicates: int = 0
    cost_mismatches: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    violations: int = 0
    notes: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)  # a failed job's id -> its error

    def line(self) -> str:
        faults = ", ".join(f"{k}={v}" for k, v in self.faults.items()) or "-"
        notes = "".join(f", {k}={v}" for k, v in self.notes.items())
        errors = "".join(f"\n  failed {job}: {error}" for job, error in self.errors.items())
        return (
            f"[{self.name}] jobs={self.jobs} succeeded={self.succeeded} failed={self.failed} "
            f"faults({faults}) lost={self.lost} duplicates={self.duplicates} "
            f"cost_mismatches={self.cost_mismatches} limit_violations={self.violations}{notes}"
            f"{errors}"
        )

    def report(self) -> Figures:
        print("\n" + self.line())
        return self

    def assert_clean(self) -> None:
        assert self.lost == 0, self.line()
        assert self.duplicates == 0, self.line()
        assert self.cost_mismatches == 0, self.line()
        assert self.violations == 0, self.line()


def audit(url: str, name: str, job_ids: Iterable[str], timeout: float) -> Figures:
    """Wait for the jobs, then count outcomes, lost jobs, duplicates and cost mismatches."""
    ids = list(job_ids)
    status = wait_finished(url, ids, timeout)
    fig = Figures(name, jobs=len(ids))
    fig.succeeded = sum(1 for s in status.values() if s == "succeeded")
    fig.failed = sum(1 for s in status.values() if s in ("failed", "expired"))
    fig.lost = len(ids) - fig.succeeded - fig.failed
    per_job = rows(
        url,
        """
        SELECT j.id, j.status, j.error, j.cost_usd,
               COALESCE(SUM(a.cost_usd), 0)
                 + COALESCE((SELECT SUM(s.cost_usd) FROM superseded_calls s
                             WHERE s.job_id = j.id), 0) AS attempts_cost,
               COUNT(a.id) FILTER (WHERE a.status = 'passed') AS passed
        FROM jobs j LEFT JOIN attempts a ON a.job_id = j.id
        WHERE j.id = ANY(:ids) GROUP BY j.id
        """,
        ids=ids,
    )
    for r in per_job:
        if r["status"] in ("failed", "expired"):
            fig.errors[r["id"]] = f"{r['status']}: {(r['error'] or '')[:300]}"
        if (r["status"] == "succeeded" and r["passed"] != 1) or r["passed"] > 1:
            fig.duplicates += 1
        if r["status"] in FINISHED and Decimal(r["cost_usd"]) != Decimal(r["attempts_cost"]):
            fig.cost_mismatches += 1
    return fig


def attempts(url: str, job_ids: Iterable[str]) -> list[dict[str, Any]]:
    return rows(
        url,
        "SELECT * FROM attempts WHERE job_id = ANY(:ids) ORDER BY job_id, attempt_no",
        ids=list(job_ids),
    )


def describe_unfinished(url: str, job_ids: Iterable[str], logs: str = "") -> str:
    """For a failing assertion: each unfinished job, its attempts and its log lines."""
    out = []
    for job in rows(
        url,
        "SELECT id, status, updated_at, plan IS NOT NULL AS planned FROM jobs "
        "WHERE id = ANY(:ids) AND status NOT IN ('succeeded', 'failed', 'expired')",
        ids=list(job_ids),
    ):
        out.append(f"job {job}")
        for a in attempts(url, [job["id"]]):
            out.append(
                f"  attempt {a['attempt_no']} {a['status']} {a['worker']} lease={a['lease_until']}"
            )
        out += [f"  log: {line}" for line in logs.splitlines() if job["id"] in line][:20]
    return "\n".join(out)
