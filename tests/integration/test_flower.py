"""Flower speaks in jobs: each task it shows is named by its job, tier and action (the message's
``shadow`` name) and its result names the model; Flower runs with basic auth as the README's
production line does, and its HTTP API refuses a request without it."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from router import submit_job
from tests.support.services import REPO, fake_model, fleet_config
from tierflow.app.embedded import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

AUTH = "ops:flower-test-password"


def _get(url: str, auth: str | None = AUTH) -> tuple[int, Any]:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read().decode())
    except urllib.error.HTTPError as exc:
        return exc.code, None


def test_flower_names_tasks_by_job_tier_action_and_model(
    fleet: Callable[..., Any], tmp_path: Path
) -> None:
    # Task events are off by default (each costs Redis publishes); a fleet watched by Flower
    # turns them on, as the README's deployment does.
    fleet(
        fleet_config(local_fast=[fake_model("flower-fast", answer="bad_json")]),
        env={"TIERFLOW_TASK_EVENTS": "true"},
    )
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = (tmp_path / "flower.log").open("wb")
    flower = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "workers.app", "flower", f"--port={port}",
         "--address=127.0.0.1", f"--basic-auth={AUTH}"],
        cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=log,
        stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if _get(base + "/api/tasks")[0] == 200:
                    break
            except OSError:
                pass
            assert flower.poll() is None and time.monotonic() < deadline, (
                tmp_path / "flower.log"
            ).read_text(errors="replace")[-3000:]
            time.sleep(0.3)
        assert _get(base + "/api/tasks", auth=None)[0] == 401
        assert _get(base + "/api/tasks", auth="ops:wrong")[0] == 401

        def seen(job: str) -> list[dict[str, Any]]:
            tasks = _get(base + "/api/tasks")[1] or {}
            return [
                t
                for t in tasks.values()
                if f"job={job}" in (t.get("args") or "") and t.get("state") == "SUCCESS"
            ]

        # Flower answers its API before its event receiver is bound: events sent in between
        # are never seen (once, a route_job showed only its success, without name or args).
        # A warm-up job whose routing Flower shows in full proves the receiver is live.
        deadline = time.monotonic() + 30
        while True:
            warm = submit_job("Is this a fact? 'Warm-up'", "classify_memory")
            assert warm.wait(30).status in ("succeeded", "failed")
            if any("tier=" not in t["args"] for t in seen(warm.job_id)):
                break
            assert time.monotonic() < deadline, "Flower never showed a job's routing"
            time.sleep(0.5)

        handle = submit_job("Is this a decision or a fact? 'We chose React'", "classify_memory")
        result = handle.wait(30)
        assert result.status == "succeeded", result.error
        job = handle.job_id

        def mine() -> list[dict[str, Any]]:
            return seen(job)

        deadline = time.monotonic() + 15
        while len(mine()) < 3:  # route_job, then run_attempt on two tiers
            assert time.monotonic() < deadline, json.dumps(_get(base + "/api/tasks")[1])[:3000]
            time.sleep(0.3)
        tasks = sorted(mine(), key=lambda t: t["received"])
        labels = [f"job={job} action=classify_memory"] + [
            f"job={job} tier={tier} action=classify_memory step={n} attempt={n} retries=0"
            for n, tier in enumerate(["local_fast", result.tier])
        ]
        assert [t["args"] for t in tasks] == labels
        for t in tasks:
            # Flower keeps the name of whichever event it merged last: the worker's (the shadow,
            # with the same label) or the sender's (the task's own name).
            label = t["args"].split(" step=")[0]
            task = "run_attempt" if "tier=" in label else "route_job"
            assert t["name"] in (f"{task} {label}", f"tierflow.{task}"), t["name"]
        assert tasks[1]["result"] == "'fallback: rejected on local_fast/flower-fast'"
        assert tasks[2]["result"] == f"'succeed: passed on {result.tier}/{result.model}'"
    finally:
        os.killpg(flower.pid, signal.SIGTERM)
        try:
            flower.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(flower.pid, signal.SIGKILL)
        log.close()
