"""``tierflow eval FILE --fleet``: a labelled file through real workers, routing and the gate.

:func:`run_rows` submits every row to a running fleet (one job each, the cache off), waits for
them all and reads back what each job did (:class:`router.gate.fleet_eval.FleetJob`);
:func:`fleet_evaluation` starts a fleet as ``tierflow up`` does (no engine; the router, the two
replaying tiers and beat), with the config :func:`router.gate.fleet_eval.fleet_eval_config`
writes into the state directory, runs the rows and summarizes them as the offline replay does
(:func:`router.gate.evaluate.summarize`).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import yaml

from router import submit_job
from router.gate.evaluate import EvalRow, Evaluation, read_rows, rule_for, summarize
from router.gate.fleet_eval import (
    CHEAP_TIER,
    STRONG_TIER,
    FleetJob,
    eval_action_name,
    eval_rule,
    fleet_eval_config,
    judged_from_fleet,
)
from tierflow import store
from tierflow.app.fleet import running_fleet
from tierflow.core.config import load_config
from tierflow.core.settings import get_settings, reset_settings

DEFAULT_TIMEOUT_S = 600.0


def distinct_rows(rows: Sequence[EvalRow], limit: int | None = None) -> tuple[list[EvalRow], int]:
    """The rows with a prompt not seen before (the replay answers a prompt's first row), at most
    ``limit``; and how many repeated prompts were left out."""
    seen: set[str] = set()
    kept: list[EvalRow] = []
    repeated = 0
    for row in rows:
        if row.prompt in seen:
            repeated += 1
            continue
        seen.add(row.prompt)
        kept.append(row)
    return (kept[:limit] if limit is not None else kept), repeated


def run_rows(rows: Sequence[EvalRow], action: str, timeout_s: float) -> list[FleetJob]:
    """Submit every row's prompt as a job of ``action`` to the running fleet, wait for all of
    them (``timeout_s`` seconds in all) and read what each did. Raises
    :class:`~router.client.JobWaitTimeout` when the fleet does not finish in time."""
    handles = [submit_job(row.prompt, action, cache=False) for row in rows]
    deadline = time.monotonic() + timeout_s
    jobs = []
    for row, handle in zip(rows, handles, strict=True):
        result = handle.wait(timeout=max(deadline - time.monotonic(), 1.0))
        judged = [a for a in store.attempts_of(handle.job_id) if a.quality_score is not None]
        first = judged[0] if judged else None
        evidence = (first.quality_components or {}) if first is not None else {}
        threshold = evidence.get("threshold")
        jobs.append(
            FleetJob(
                row=row,
                status=result.status,
                tier=result.tier,
                score=first.quality_score if first is not None else None,
                vetoed=bool(evidence.get("vetoes")),
                threshold=float(threshold) if threshold is not None else None,
            )
        )
    return jobs


def fleet_evaluation(
    file: Path,
    action: str | None,
    config: Path | None = None,
    *,
    limit: int | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> Evaluation:
    """Run ``file`` (its first ``limit`` distinct prompts) through a fleet started for it and
    summarize it like the offline replay; the fleet stops on the way out. ConfigError for an
    unknown action; EvalFileError for a bad file."""
    base = load_config(config) if config is not None else get_settings().llm
    name, rule = rule_for(base, action)
    rule, notes = eval_rule(rule)
    rows, repeated = distinct_rows(read_rows(file), limit)
    if repeated:
        notes.append(f"{repeated} row(s) repeat an earlier prompt: left out")
    run_action = eval_action_name(name if action is not None else "text", uuid.uuid4().hex)
    threshold = base.routing.quality_threshold
    raw = fleet_eval_config(base, run_action, rule, file, threshold)
    state_dir = get_settings().state_dir
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / "eval_fleet_config.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    before = os.environ.get("TIERFLOW_CONFIG")
    os.environ["TIERFLOW_CONFIG"] = str(path)
    reset_settings()
    try:
        with running_fleet(with_engine=False, tiers=[CHEAP_TIER.value, STRONG_TIER.value]):
            jobs = run_rows(rows, run_action, timeout_s)
    finally:
        if before is None:
            os.environ.pop("TIERFLOW_CONFIG", None)
        else:
            os.environ["TIERFLOW_CONFIG"] = before
        reset_settings()
    played = judged_from_fleet(jobs, threshold)
    played.notes[:0] = [*notes, f"through the fleet as action {run_action}"]
    return summarize(name, rule, played)
