"""Gate labels: whether a cheap answer was good, from feedback, escalations or audits (see
:mod:`router.gate.learned`), the audits' calls, and the gate's own figures per action."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert

from schemas.tables import Attempt, GateLabel, Job, SupersededCall
from tierflow.core.db import session_scope


def record_label(
    job_id: str,
    action_type: str,
    *,
    source: str,
    good: bool,
    gate_passed: bool | None,
    score: float | None,
    features: dict[str, float],
    note: str | None = None,
    cost_usd: float = 0.0,
) -> int:
    """Store one label; returns its id. ``source`` is ``feedback``, ``escalation`` or ``audit``."""
    with session_scope() as session:
        row = GateLabel(
            job_id=job_id,
            action_type=action_type,
            source=source,
            good=good,
            gate_passed=gate_passed,
            score=score,
            features=features,
            note=note,
            cost_usd=cost_usd,
        )
        session.add(row)
        session.flush()
        return int(row.id)


def labelled_prompts(action_type: str, limit: int = 5000) -> list[tuple[str, bool, str]]:
    """The action's most recent labels as (the job's prompt, good, source), oldest first: what
    a pre-generation router learns from (:mod:`router.gate.prerouting`)."""
    with session_scope() as session:
        rows = session.execute(
            select(Job.prompt, GateLabel.good, GateLabel.source)
            .join(Job, Job.id == GateLabel.job_id)
            .where(GateLabel.action_type == action_type)
            .order_by(GateLabel.id.desc())
            .limit(limit)
        ).all()
    return [(prompt, bool(good), source) for prompt, good, source in reversed(rows)]


def labels_for(action_type: str, limit: int = 5000) -> list[GateLabel]:
    """The action's most recent labels (at most ``limit``), oldest first."""
    with session_scope() as session:
        rows = session.execute(
            select(GateLabel)
            .where(GateLabel.action_type == action_type)
            .order_by(GateLabel.id.desc())
            .limit(limit)
        ).scalars()
        return list(reversed(list(rows)))


def gate_figures() -> dict[str, dict[str, Any]]:
    """Per action: jobs finished, share escalated (a first attempt the gate rejected), labels,
    audited passes and the estimated miss rate of passed answers (audited passes judged bad)."""
    first = select(Attempt.job_id, Attempt.status).where(Attempt.attempt_no == 0).subquery()
    with session_scope() as session:
        jobs = session.execute(
            select(
                Job.action_type,
                func.count(),
                func.count().filter(first.c.status == "rejected"),
            )
            .join(first, first.c.job_id == Job.id)
            .group_by(Job.action_type)
        ).all()
        labels = session.execute(
            select(
                GateLabel.action_type,
                func.count(),
                func.count().filter(GateLabel.source == "audit", GateLabel.gate_passed.is_(True)),
                func.count().filter(
                    GateLabel.source == "audit",
                    GateLabel.gate_passed.is_(True),
                    GateLabel.good.is_(False),
                ),
            ).group_by(GateLabel.action_type)
        ).all()
    figures: dict[str, dict[str, Any]] = {}
    for action, count, rejected in jobs:
        figures[action] = {"jobs": int(count), "escalation_rate": int(rejected or 0) / count}
    for action, count, audited, missed in labels:
        row = figures.setdefault(action, {"jobs": 0, "escalation_rate": 0.0})
        row["labels"] = int(count)
        row["audited_passes"] = int(audited)
        row["miss_rate"] = (int(missed) / audited) if audited else None
    for row in figures.values():
        row.setdefault("labels", 0)
        row.setdefault("audited_passes", 0)
        row.setdefault("miss_rate", None)
    return figures


def audit_done(job_id: str) -> bool:
    """Whether the job's answer was audited already (its audit call recorded)."""
    with session_scope() as session:
        found = session.execute(
            select(SupersededCall.id).where(
                SupersededCall.job_id == job_id, SupersededCall.status == AUDIT_STATUS
            )
        ).first()
        return found is not None


AUDIT_STATUS = "audit"
"""``superseded_calls.status`` of an audit's call: a call of the job outside its attempts."""


def record_audit_call(
    job_id: str,
    attempt_no: int,
    *,
    tier: str,
    model: str,
    provider: str | None,
    input_tokens: int,
    output_tokens: int,
    cost_usd: float,
) -> None:
    """Count an audit's call where every cost is counted: a row of the job's calls outside its
    attempts (``superseded_calls``, status ``audit``, which ``tierflow costs``, the savings and
    the dashboard sum) and its cost added to ``jobs.cost_usd`` in the same transaction (the job
    ended before its audit ran). One row per audited attempt: a redelivered audit adds nothing."""
    stmt = (
        insert(SupersededCall)
        .values(
            job_id=job_id,
            attempt_no=attempt_no,
            worker=AUDIT_STATUS,
            tier=tier,
            model=model,
            provider=provider,
            status=AUDIT_STATUS,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cost_usd=cost_usd,
        )
        .on_conflict_do_nothing(constraint="uq_superseded_calls_delivery")
        .returning(SupersededCall.id)
    )
    with session_scope() as session:
        if session.execute(stmt).scalar_one_or_none() is not None and cost_usd:
            session.execute(
                update(Job).where(Job.id == job_id).values(cost_usd=Job.cost_usd + cost_usd)
            )
