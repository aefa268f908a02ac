"""``tierflow batch``'s commands load what they run: ``status`` and ``results`` read the store
without importing the router, Celery, the backends or their SDKs; ``run`` still checks the whole
config at start."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from router.batch import submit_batch
from tests.support.services import REPO, fake_model, fleet_config

pytestmark = [pytest.mark.integration]
HEAVY = ("router", "workers", "celery", "kombu", "openai", "anthropic", "tierflow.app.fleet")
PROBE = """
import json, sys
sys.argv = ["tierflow", *json.loads(sys.argv[1])]
from tierflow.cli import main
try:
    main()
except SystemExit as exc:
    assert not exc.code, exc.code
print("LOADED", json.dumps(sorted({m.split(".")[0] if m.split(".")[0] != "tierflow" else m
                                   for m in sys.modules})))
"""


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(args)],
        cwd=REPO, env=dict(os.environ), capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def loaded(done: subprocess.CompletedProcess[str]) -> set[str]:
    line = next(x for x in done.stdout.splitlines() if x.startswith("LOADED "))
    return set(json.loads(line.removeprefix("LOADED ")))


def test_status_and_results_read_the_store_alone(fleet) -> None:
    fleet(fleet_config(), workers=0)
    lines = [{"prompt": f"Extract topic from: 'cli {i}'", "action_type": "extract_topic"}
             for i in range(5)]  # fmt: skip
    submit_batch(iter(lines), name="cli-read", in_flight=0)

    status = cli("batch", "status", "cli-read")
    assert status.returncode == 0, status.stderr
    assert "0/5" in status.stdout and "routed" in status.stdout
    assert not loaded(status) & set(HEAVY), loaded(status) & set(HEAVY)

    results = cli("batch", "results", "cli-read")
    assert results.returncode == 0, results.stderr
    rows = [json.loads(x) for x in results.stdout.splitlines() if x.startswith("{")]
    assert len(rows) == 5
    assert not loaded(results) & set(HEAVY)

    missing = cli("batch", "status", "no-such-batch")
    assert missing.returncode != 0 and "no batch 'no-such-batch'" in missing.stdout


def test_run_still_refuses_a_bad_config_at_start(tmp_path: Path) -> None:
    raw = fleet_config(local_fast=[fake_model("m", provider="olama")])
    path = tmp_path / "llm_config.yaml"
    path.write_text(yaml.safe_dump(raw))
    batch = tmp_path / "b.jsonl"
    batch.write_text('{"prompt": "x"}\n')
    done = subprocess.run(
        [sys.executable, "-m", "tierflow.cli", "batch", "run", str(batch)],
        cwd=REPO, env={"TIERFLOW_CONFIG": str(path), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "tiers.local_fast.models.0.provider" in done.stderr
