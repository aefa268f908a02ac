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


def run_rows(
    rows: Sequence[EvalRow], action: str, timeout_s: float, wave: int | None = None
) -> list[FleetJob]:
    """Submit the rows' prompts as jobs of ``action`` to the running fleet, ``wave`` at a time
    (each wave waited for before the next is sent, as a daemon's traffic arrives over time, so
    the gate can learn from the labels of earlier waves; None: all at once), within
    ``timeout_s`` seconds in all, and read what each did. Raises
    :class:`~router.client.JobWaitTimeout` when the fleet does not finish in time."""
    deadline = time.monotonic() + timeout_s
    size = wave or len(rows) or 1
    jobs: list[FleetJob] = []
    for start in range(0, len(rows), size):
        jobs += _run_wave(rows[start : start + size], action, deadline)
    return jobs


def _run_wave(rows: Sequence[EvalRow], action: str, deadline: float) -> list[FleetJob]:
    handles = [submit_job(row.prompt, action, cache=False) for row in rows]
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
    wave: int | None = None,
    refit_s: float | None = None,
) -> Evaluation:
    """Run ``file`` (its first ``limit`` distinct prompts) through a fleet started for it,
    ``wave`` jobs at a time (see :func:`run_rows`), its gate refitting from its labels every
    ``refit_s`` seconds (None: the settings' ``gate_refit_s``), and summarize it like the
    offline replay; the fleet stops on the way out. ConfigError for an unknown action;
    EvalFileError for a bad file."""
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
    changed = {"TIERFLOW_CONFIG": str(path)}
    if refit_s is not None:
        changed["TIERFLOW_GATE_REFIT_S"] = repr(float(refit_s))
        notes.append(f"the gate refits from its labels every {refit_s:g} s")
    if wave is not None:
        notes.append(f"submitted {wave} jobs at a time, each wave waited for")
    before = {key: os.environ.get(key) for key in changed}
    os.environ.update(changed)
    reset_settings()
    try:
        with running_fleet(with_engine=False, tiers=[CHEAP_TIER.value, STRONG_TIER.value]):
            jobs = run_rows(rows, run_action, timeout_s, wave)
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        reset_settings()
    played = judged_from_fleet(jobs, threshold)
    played.notes[:0] = [*notes, f"through the fleet as action {run_action}"]
    return summarize(name, rule, played)
