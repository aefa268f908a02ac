"""``tierflow demo``: the first seed's daily action mix through a whole local fleet.

The seed's cost table has six actions (write_memory 30/day, read_file 20, list_files 15,
edit_file 10, spawn_daemon 5, consolidate 10) and estimates 75.5% savings against API-only. The
demo submits that mix (scaled to ``--jobs``), waits for every job, and prints what it measured
beside the seed's estimate.

Without ``ANTHROPIC_API_KEY``/``OPENAI_API_KEY`` the API tier cannot be reached, so the demo
serves it with the fake backend under the API models' real prices, and says so in every line
that shows it ("FAKE"). Local tiers always run the real embedded model.

It ends with how many jobs each tier served, a warning saying why when the local tiers served
none (engine down, circuit open, quality gate: from the stored attempts), and exit code 1 when
the local engine died during the run (:mod:`tierflow.app.demo_verdict`).
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from pathlib import Path

import yaml
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from router import submit_job
from schemas.jobs import JobResult
from tierflow.app.console import console, print_event
from tierflow.app.demo_verdict import DemoVerdict, demo_verdict
from tierflow.app.fleet import ENGINE, engine_models, running_fleet
from tierflow.core.config import load_config
from tierflow.core.settings import get_settings, reset_settings

SEED_MIX: dict[str, int] = {
    "write_memory": 30,
    "read_file": 20,
    "list_files": 15,
    "edit_file": 10,
    "spawn_daemon": 5,
    "consolidate": 10,
}
SEED_SAVINGS_PCT = 75.5
SEED_ACTION_SAVINGS = {
    "write_memory": 100, "read_file": 100, "list_files": 100,
    "edit_file": 75, "spawn_daemon": 0, "consolidate": 75,
}  # fmt: skip

PROMPTS: dict[str, list[str]] = {
    "write_memory": [
        "Summarize these decisions into one note.\n- We chose React over Vue.\n- We keep "
        "PostgreSQL for jobs.\n- Retries use exponential backoff.\nNote:",
        "Write a short memory entry about today's work: fixed the login bug, added tests for "
        "the session cache, and upgraded Celery.\nMemory entry:",
    ],
    "read_file": [
        "The file README.md of a task-queue project starts with a title and a one-line summary. "
        "Summary of the project:",
        "Read config.yaml: it sets broker_url, database_url and log_level. The settings it "
        "holds are",
    ],
    "list_files": [
        "List the files a small Python package usually has at its top level:",
        "The directory src/ of a web app contains these files:",
    ],
    "edit_file": [
        "Add error handling to this function and return the new code:\n```python\n"
        "def load(path):\n    return open(path).read()\n```",
    ],
    "spawn_daemon": [
        "ORCHESTRATE: implement user authentication with tests. Reply with a JSON plan.",
    ],
    "consolidate": [
        "Merge these duplicate memory entries into one:\n1. Use Redis for the broker.\n"
        "2. The broker is Redis.\n3. Celery talks to Redis as its broker.\nMerged entry:",
    ],
}


def scaled_mix(total: int) -> list[str]:
    """The seed's mix scaled to ``total`` jobs (largest remainders), interleaved."""
    day = sum(SEED_MIX.values())
    exact = {a: n * total / day for a, n in SEED_MIX.items()}
    counts = {a: int(v) for a, v in exact.items()}
    for action in sorted(exact, key=lambda a: exact[a] - counts[a], reverse=True):
        if sum(counts.values()) >= total:
            break
        counts[action] += 1
    actions: list[str] = []
    while any(counts.values()):
        for action in SEED_MIX:
            if counts[action]:
                actions.append(action)
                counts[action] -= 1
    return actions


def _has_api_key() -> bool:
    return bool(os.environ.get("ANTHROPIC_API_KEY") or os.environ.get("OPENAI_API_KEY"))


def demo_config_path(state_dir: Path) -> Path | None:
    """A config whose API models are fake (labelled, real prices) when no API key is set."""
    if _has_api_key():
        return None
    config = load_config(get_settings().config)
    raw = config.model_dump(mode="json", exclude_none=True)
    renamed = {}
    for model in raw["tiers"].get("api_fallback", {}).get("models", []):
        new_name = f"{model['name']}-FAKE"
        renamed[model["name"]] = new_name
        model.update(name=new_name, provider="fake", options={"latency_ms": 50})
        model.pop("api_key_env", None)
        model.pop("cost_per_1k_tokens", None)
    routing = raw["routing"]
    if routing.get("baseline_model"):
        routing["baseline_model"] = renamed.get(
            routing["baseline_model"], routing["baseline_model"]
        )
    for model in (m for t in raw["tiers"].values() for m in t["models"]):
        model.pop("cost_per_1k_tokens", None)
    path = state_dir / "demo_llm_config.yaml"
    state_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def report(outcomes: list[tuple[str, JobResult]], elapsed_s: float) -> None:
    """Print the tables by tier and by action, with the seed's estimates beside."""
    by_action: dict[str, list[JobResult]] = defaultdict(list)
    by_tier: dict[str, list[JobResult]] = defaultdict(list)
    results = [r for _, r in outcomes]
    for action, r in outcomes:
        by_action[action].append(r)
        by_tier[(r.tier or "failed") + (" (FAKE)" if r.fake else "")].append(r)

    def row(group: list[JobResult]) -> tuple[str, ...]:
        cost = sum(r.cost_usd for r in group)
        base = sum(r.api_baseline_cost_usd for r in group)
        ok = sum(r.ok for r in group)
        lat = sorted(r.latency_ms or 0 for r in group)
        savings = f"{100 * (base - cost) / base:.1f}%" if base else "-"
        return (
            str(len(group)), str(ok), f"{lat[len(lat) // 2]:.0f}",
            f"{sum(r.input_tokens + r.output_tokens for r in group)}",
            f"${cost:.5f}", f"${base:.5f}", savings,
        )  # fmt: skip

    cols = ("jobs", "ok", "p50 ms", "tokens", "cost", "API-only", "savings")
    table = Table("tier", *cols, title="By tier (final tier of each job)")
    for tier, group in sorted(by_tier.items()):
        table.add_row(tier, *row(group))
    console.print(table)
    table = Table("action", *cols, "seed est.", title="By action (seed's estimate beside)")
    for action in SEED_MIX:
        group = by_action.get(action, [])
        if group:
            table.add_row(action, *row(group), f"{SEED_ACTION_SAVINGS[action]}%")
    table.add_row("total", *row(results), f"{SEED_SAVINGS_PCT}%", style="bold")
    console.print(table)
    escalated = sum(1 for r in results if len({a.tier for a in r.attempts}) > 1)
    console.print(
        f"{len(results)} jobs in {elapsed_s:.1f}s; {escalated} escalated by the quality gate or "
        f"errors. Measured savings vs API-only: see 'total'; the seed estimated "
        f"{SEED_SAVINGS_PCT}%."
    )


def print_verdict(verdict: DemoVerdict) -> None:
    """The served-per-tier line, then each warning."""
    served = ", ".join(f"{tier} {n}" for tier, n in verdict.served.items())
    console.print(f"Jobs served by tier: {served}")
    for warning in verdict.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}")


def run_demo(total: int, timeout: float) -> int:
    """Run the demo; the exit code (0, or 1 when the local engine died during the run)."""

    if total < 1:
        raise SystemExit("--jobs must be at least 1")
    state_dir = get_settings().state_dir
    fake_api = demo_config_path(state_dir)
    if fake_api is not None:
        os.environ["TIERFLOW_CONFIG"] = str(fake_api)
        reset_settings()
        console.print(
            "[yellow]No ANTHROPIC_API_KEY/OPENAI_API_KEY: the API tier is served by the FAKE "
            "backend at the real models' prices. Local tiers run the real embedded model.[/yellow]"
        )
    with running_fleet(on_event=print_event) as fleet:
        for note in fleet.notes:
            console.print(f"  {note}")
        actions = scaled_mix(total)
        started = time.monotonic()
        handles = []
        for i, action in enumerate(actions):
            prompts = PROMPTS[action]
            handles.append((action, submit_job(prompts[i % len(prompts)], action)))
        outcomes: list[tuple[str, JobResult]] = []
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=console) as progress:
            task = progress.add_task("jobs", total=len(handles))
            deadline = time.monotonic() + timeout
            for action, handle in handles:
                outcomes.append((action, handle.wait(max(deadline - time.monotonic(), 1.0))))
                progress.advance(task)
        report(outcomes, time.monotonic() - started)
        verdict = demo_verdict(
            [r for _, r in outcomes],
            get_settings().local_engine_url,
            {m.name for m in engine_models()},
            fleet.exits(ENGINE),
        )
    print_verdict(verdict)
    return verdict.exit_code
