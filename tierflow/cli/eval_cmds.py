"""``tierflow eval``: replay a labelled file through the configured gate, with no model calls."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from router.gate.evaluate import DEFAULT_REFIT_EVERY, Evaluation, evaluate, read_rows, rule_for
from tierflow.app.console import console
from tierflow.app.fleet_eval import fleet_evaluation
from tierflow.core.config import load_config
from tierflow.core.settings import get_settings

app = typer.Typer()  # this module's commands, loaded by name (tierflow/cli/commands.py)


@app.command("eval")
def eval_command(
    file: Path = typer.Argument(
        ...,
        help="CSV or JSONL: prompt, cheap_answer, cheap_correct, strong_correct; optional "
        "strong_answer, cheap_samples (JSON list), cheap_finish_reason.",
    ),
    action: str = typer.Option(None, help="The action whose rule judges (default: a text rule)."),
    config: Path = typer.Option(None, help="An llm_config.yaml (default: the settings' one)."),
    prequential: bool = typer.Option(
        False, help="Fit each row's gate on the earlier rows only, as the fleet learns."
    ),
    refit_every: int = typer.Option(
        DEFAULT_REFIT_EVERY, min=1, help="With --prequential: refit every N rows."
    ),
    as_json: bool = typer.Option(False, "--json", help="One JSON object instead of tables."),
    fleet: bool = typer.Option(
        False,
        "--fleet",
        help="Run the file through a fleet started for it (real workers, routing, gate, "
        "labels, audits): one tier replays the cheap answers, the next the strong ones.",
    ),
    limit: int = typer.Option(None, min=1, help="Only the first N rows (N distinct prompts)."),
    timeout: float = typer.Option(
        600.0, min=1, help="With --fleet: seconds to wait for every job in all."
    ),
    wave: int = typer.Option(
        None, min=1, help="With --fleet: send N jobs at a time, each wave waited for."
    ),
    refit_s: float = typer.Option(
        None, min=0, help="With --fleet: the gate refits every S seconds (TIERFLOW_GATE_REFIT_S)."
    ),
) -> None:
    """Replay labelled answers through the gate: its cost and quality beside baselines.

    The baselines are weak-only, strong-only, the oracle and random escalation at the gate's
    rate. Offline (the default) no model is called; with --fleet the rows go through real
    workers whose models replay the file's answers, and the same table is printed."""

    if fleet:
        found = fleet_evaluation(
            file, action, config, limit=limit, timeout_s=timeout, wave=wave, refit_s=refit_s
        )
        mode = "through the fleet (its gate refits as its labels come)"
    else:
        found = _offline(file, action, config, limit, prequential, refit_every)
        mode = None
    if as_json:
        extra = {"mode": "fleet"} if fleet else {}
        typer.echo(json.dumps({"file": str(file), **found.as_dict(), **extra}))
    else:
        render(found, str(file), mode)


def _share(value: float | None) -> str:
    return "" if value is None else f"{value:.1%}"


def _auc(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def _fit_mode(found: Evaluation) -> str:
    if not found.fitted:
        return "nothing fitted"
    if found.prequential:
        return f"prequential (refit every {found.refit_every} rows)"
    return "in-sample (fitted on every row, then judged them: optimistic)"


def render(found: Evaluation, source: str, mode: str | None = None) -> None:
    """The comparison table and the accuracy-at-budget table; ``mode`` says how the gate was
    fitted (default: read from ``found``)."""
    if mode is None:
        mode = _fit_mode(found)
    console.print(
        f"{source}: {found.rows} rows, action [bold]{found.action}[/bold] "
        f"(verifiers {', '.join(found.verifiers)}), {mode}, threshold {found.threshold:.3f}"
    )
    table = Table("policy", "strong calls", "accuracy", "vs strong", "AUROC", title="Gate")
    for policy in found.policies:
        table.add_row(
            policy.name,
            _share(policy.strong_calls),
            _share(policy.accuracy),
            _share(policy.quality_vs_strong),
            _auc(policy.auroc),
        )
    console.print(table)
    curve = Table("strong calls", "gate", "random", "oracle", title="Accuracy at a budget")
    for point in found.curve:
        curve.add_row(
            _share(point.strong_calls),
            _share(point.gate),
            _share(point.random),
            _share(point.oracle),
        )
    console.print(curve)
    title = f"Calls per row at {found.target:.0%} of strong-only accuracy"
    costs = Table("policy", "strong calls", "cheap calls", "routed", "accuracy", title=title)
    for calls in found.at_target:
        costs.add_row(
            calls.name,
            _share(calls.strong),
            _share(calls.cheap),
            _share(calls.routed),
            _share(calls.accuracy),
        )
    console.print(costs)
    for note in found.notes:
        console.print(f"note: {note}")


def _offline(
    file: Path,
    action: str | None,
    config: Path | None,
    limit: int | None,
    prequential: bool,
    refit_every: int,
) -> Evaluation:
    """The offline replay of ``file``'s first ``limit`` rows under ``action``'s rule."""
    llm = load_config(config) if config is not None else get_settings().llm
    name, rule = rule_for(llm, action)
    return evaluate(
        read_rows(file)[:limit],
        rule,
        llm.routing.quality_threshold,
        action=name,
        prequential=prequential,
        refit_every=refit_every,
    )
