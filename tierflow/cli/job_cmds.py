"""Commands about jobs: submit, route --explain, demo."""

from __future__ import annotations

import json

import typer
from rich.table import Table
from rich.text import Text

from router import submit_job
from router.explain import explain as explain_plan
from router.feedback import record_feedback
from schemas.jobs import JobResult
from tierflow.app.console import console
from tierflow.app.demo import run_demo
from tierflow.app.fleet import adopt_running_fleet
from tierflow.core.errors import JobValidationError

app = typer.Typer()  # this module's commands, loaded by name (tierflow/cli/commands.py)


def print_result(result: JobResult) -> None:
    """One job's outcome: tier, model, quality, tokens, cost, and each attempt."""
    fake = " [yellow](FAKE backend)[/yellow]" if result.fake else ""
    degraded = " [yellow](degraded)[/yellow]" if result.degraded else ""
    colour = "green" if result.ok else "red"
    console.print(f"[{colour}]{result.status}[/{colour}]{degraded}  job {result.job_id}")
    console.print(f"tier {result.tier or '-'}  model {result.model or '-'}{fake}")
    quality = f"{result.quality:.2f}" if result.quality is not None else "-"
    console.print(
        f"quality {quality}  tokens {result.input_tokens} in / {result.output_tokens} out  "
        f"cost ${result.cost_usd:.6f}  (API-only ${result.api_baseline_cost_usd:.6f})  "
        f"latency {result.latency_ms or 0:.0f} ms"
    )
    table = Table("#", "tier", "model", "status", "quality", "tokens", "cost $", "reason")
    for a in result.attempts:
        table.add_row(
            str(a.attempt_no), a.tier, a.model or "-", a.status,
            f"{a.quality:.2f}" if a.quality is not None else "-",
            f"{a.input_tokens}/{a.output_tokens}", f"{a.cost_usd:.6f}", (a.error or "")[:80],
        )  # fmt: skip
    console.print(table)
    if result.text:
        console.rule("answer")
        console.print(result.text, markup=False)
    elif result.error:
        console.print(Text(result.error, style="red"))


@app.command()
def submit(
    prompt: str,
    action: str = typer.Option("unknown", "--action", "-a", help="The daemon's action type."),
    context: str = typer.Option("{}", help="Context as a JSON object."),
    timeout: float = typer.Option(300.0, help="Seconds to wait for the result."),
    stream: bool = typer.Option(False, help="Print the answer as it is written."),
    idempotency_key: str = typer.Option(None, help="Same key, same job."),
) -> None:
    """Submit one job to the running fleet and print where it ran and what it cost.

    With the broker unreachable the job is stored and this says so at once, without waiting.
    """

    adopt_running_fleet()
    try:
        parsed = json.loads(context)
    except ValueError as exc:
        raise JobValidationError(f"--context is not JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise JobValidationError("--context must be a JSON object")
    handle = submit_job(prompt, action, parsed, stream=stream, idempotency_key=idempotency_key)
    if not handle.sent:
        # Waiting would only run out the timeout: the sweeper sends the job when it can.
        console.print(handle.note, style="yellow", markup=False)
        console.print(f"job {handle.job_id}", markup=False)
        return
    if stream:
        for event in handle.stream(timeout):
            if event["type"] == "reset":
                console.print(
                    f"\n[yellow]-- discarded ({event.get('reason')}), next tier --[/yellow]"
                )
            else:
                console.print(event.get("delta", ""), end="", markup=False)
        console.print()
    print_result(handle.wait(timeout))


@app.command()
def route(
    prompt: str,
    action: str = typer.Option("unknown", "--action", "-a"),
    context: str = typer.Option("{}", help="Context as a JSON object."),
    explain: bool = typer.Option(True, "--explain/--brief", help="Print the reasons too."),
) -> None:
    """Dry run: how a job would be routed (no model is called, nothing is stored)."""

    info = explain_plan(action, prompt, json.loads(context))
    if not explain:
        console.print(info["tier"])
        return
    keys = ("complexity", "quality_critical", "mode", "tier", "chain", "model")
    for key in (*keys, "answer_kind", "verifiers"):
        console.print(f"[bold]{key:17}[/bold] {info.get(key)}")
    console.print("[bold]reasons[/bold]")
    for reason in info.get("reasons", []):
        console.print(f"  - {reason}")
    if info.get("error"):
        console.print(f"[red]{info['error']}[/red]")


@app.command()
def feedback(
    job_id: str,
    verdict: str = typer.Argument(..., help="good or bad"),
    note: str = typer.Option("", help="Why, in a few words."),
) -> None:
    """Say how a job's answer turned out: a label the quality gate learns from."""
    if verdict not in ("good", "bad"):
        raise typer.BadParameter("say good or bad", param_hint="VERDICT")
    adopt_running_fleet()
    label = record_feedback(job_id, verdict == "good", note or None)
    console.print(f"label {label}: job {job_id} was {verdict}")


@app.command()
def demo(
    jobs: int = typer.Option(20, help="Jobs to run, in the seed's daily proportions (90 = a day)."),
    timeout: float = typer.Option(900.0, help="Seconds to wait for the whole mix."),
) -> None:
    """Run the seed's daily action mix through a local fleet; print costs by tier and action.

    Exits 1 when the local engine died during the run.
    """

    code = run_demo(jobs, timeout)
    if code:
        raise typer.Exit(code)
