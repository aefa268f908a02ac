"""``tierflow eval FILE --fleet``: a labelled file of real model outputs through real workers
(started as ``tierflow up`` starts them, their models replaying the file) prints the figures
the offline replay computes for the same rows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select

from router.gate.evaluate import evaluate, read_rows
from schemas.tables import Attempt, Job
from tests.support.services import REPO
from tierflow.app.fleet_eval import distinct_rows
from tierflow.core.config import ActionRule
from tierflow.core.db import session_scope

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DATA = REPO / "tests" / "data" / "gate" / "gemma_arith.jsonl"  # Gemma 3 270M's own answers
ROWS = 30
SOLVE = {"answer": "number", "verifiers": ["checks", "shape"]}


@pytest.mark.timeout(600)
def test_the_fleet_prints_the_offline_figures_for_the_same_rows(
    database: str, tmp_path: Path
) -> None:
    base = {
        "tiers": {"local_fast": {"models": [{"name": "s", "provider": "fake", "model_id": "s"}]}},
        "routing": {"actions": {"solve": SOLVE}},
    }
    config = tmp_path / "llm_config.yaml"
    config.write_text(yaml.safe_dump(base))
    state = Path(tempfile.mkdtemp(prefix="tf-eval-"))  # the fleet's logs and its config
    env = {**os.environ, "TIERFLOW_STATE_DIR": str(state), "PYTHONUNBUFFERED": "1"}
    argv = [sys.executable, "-m", "tierflow.cli", "eval", str(DATA), "--action", "solve",
            "--config", str(config), "--fleet", "--limit", str(ROWS), "--json"]  # fmt: skip
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=540)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    fleet = json.loads(done.stdout.strip().splitlines()[-1])
    rows, repeated = distinct_rows(read_rows(DATA), ROWS)
    assert repeated > 0 and len(rows) == ROWS == fleet["rows"]
    offline = evaluate(rows, ActionRule(**SOLVE), 0.7, action="solve").as_dict()
    assert fleet["mode"] == "fleet"
    for policy in ("gate", "weak_only", "strong_only", "oracle"):
        for figure in ("strong_calls", "accuracy"):
            assert fleet[policy][figure] == pytest.approx(offline[policy][figure], abs=0.02), (
                policy,
                figure,
            )
    assert fleet["gate"]["auroc"] == pytest.approx(offline["gate"]["auroc"], abs=0.05)
    assert 0 < fleet["gate"]["strong_calls"] < 1  # some rows escalated, some did not
    # Every row was a job of the run's own action, answered by the replaying models.
    action = next(n for n in fleet["notes"] if "as action" in n).rsplit(" ", 1)[-1]
    assert action.startswith("eval_solve_")
    with session_scope() as session:
        query = select(Attempt.model, Attempt.provider).join(Job, Job.id == Attempt.job_id)
        served = session.execute(query.where(Job.action_type == action)).all()
    assert {tuple(r) for r in served} <= {("replay-cheap", "replay"), ("replay-strong", "replay")}
    assert len(served) >= ROWS and {r.model for r in served} == {"replay-cheap", "replay-strong"}
