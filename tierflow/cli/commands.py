"""The command table: every ``tierflow`` command by name, the module that holds it, a line of help.

``tierflow --help`` reads this table and imports no command module; a command's module (and
with it the fleet, the dashboard, the provider SDKs) is imported when that command runs. This
is the one place that imports project modules by name, to load what a command runs, never to
dodge a cycle: each module still imports only the floors below the roof.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import typer
from typer.core import TyperCommand, TyperGroup


@dataclass(frozen=True)
class CommandEntry:
    """Where a command lives (a ``tierflow.cli`` module whose ``app`` registers it) and its
    help line, shown by ``tierflow --help`` without importing the module."""

    module: str
    help: str


COMMANDS: dict[str, CommandEntry] = {
    "up": CommandEntry(
        "fleet_cmds",
        "Run the whole fleet on this machine until Ctrl-C: services, router, one worker per tier.",
    ),
    "worker": CommandEntry(
        "fleet_cmds",
        "Run one worker for one tier, for real deployments (replaces this process with Celery).",
    ),
    "local-engine": CommandEntry(
        "fleet_cmds",
        "Serve the embedded llama.cpp model (Gemma 3 270M) over the OpenAI-compatible HTTP API.",
    ),
    "db": CommandEntry("fleet_cmds", "Database migrations."),
    "autoscale": CommandEntry(
        "autoscale_cmds", "Start workers (local processes) as the tier's queue grows"
    ),
    "dashboard": CommandEntry(
        "dashboard_cmds",
        "Serve the web dashboard until Ctrl-C: mode, local vs cloud, queues, costs, /metrics.",
    ),
    "serve": CommandEntry(
        "gateway_cmds",
        "Serve the OpenAI-compatible gateway and the jobs API until Ctrl-C (keys: tierflow keys).",
    ),
    "keys": CommandEntry("gateway_cmds", "The gateway's API keys (one per daemon)."),
    "submit": CommandEntry(
        "job_cmds", "Submit one job to the running fleet and print where it ran and what it cost."
    ),
    "route": CommandEntry(
        "job_cmds", "Dry run: how a job would be routed (no model is called, nothing is stored)."
    ),
    "feedback": CommandEntry(
        "job_cmds", "Say how a job's answer turned out: a label the quality gate learns from."
    ),
    "demo": CommandEntry(
        "job_cmds",
        "Run the seed's daily action mix through a local fleet; print costs by tier and action.",
    ),
    "batch": CommandEntry("batch_cmds", "Batch runs: many jobs as one, resumable."),
    "budget": CommandEntry("budget_cmds", "Per-daemon spend ceilings (US dollars)."),
    "eval": CommandEntry(
        "eval_cmds",
        "Replay labelled answers through the gate: its cost and quality beside baselines.",
    ),
    "queue-depth": CommandEntry(
        "queue_cmds",
        "Messages waiting per queue (every priority list) and taken by workers, unacknowledged.",
    ),
    "mode": CommandEntry(
        "report_cmds",
        "Show or switch the fleet's mode; every worker follows from its next attempt.",
    ),
    "costs": CommandEntry(
        "report_cmds",
        "Totals, savings versus API-only, and breakdowns by tier, model, action and day.",
    ),
    "export": CommandEntry(
        "report_cmds", "Write the usage log (the seed's JSONL: one line per attempt, no secrets)."
    ),
    "status": CommandEntry(
        "report_cmds",
        "The second seed's status widget, in the terminal: mode, local vs cloud, fallbacks.",
    ),
}


def load_command(name: str, table: dict[str, CommandEntry] = COMMANDS) -> Any:
    """Import the module that holds command ``name`` of ``table`` (the root's by default) and
    return its click command.

    Raises ``KeyError`` for a name not in ``table``, and ``LookupError`` when the module does
    not register the command the table says it does.
    """
    entry = table[name]
    module = importlib.import_module(f"tierflow.cli.{entry.module}")
    group = typer.main.get_group(module.app)
    command = group.commands.get(name)
    if command is None:
        raise LookupError(f"tierflow.cli.{entry.module} registers no command {name!r}")
    return command


class LazyGroup(TyperGroup):
    """A group whose commands are resolved through :attr:`table` (the root's: :data:`COMMANDS`),
    each importing its module when it runs.

    While help is written, a command not yet loaded is shown from its table line, so listing
    the commands imports none of them. (Typer bundles its own Click, whose types it does not
    export: hence ``Any`` for contexts and commands.)
    """

    table: ClassVar[dict[str, CommandEntry]] = COMMANDS
    _listing = False

    @contextmanager
    def _from_table(self) -> Iterator[None]:
        self._listing = True
        try:
            yield
        finally:
            self._listing = False

    def list_commands(self, ctx: Any) -> list[str]:
        return [*self.table, *(name for name in self.commands if name not in self.table)]

    def get_command(self, ctx: Any, cmd_name: str) -> Any | None:
        if cmd_name in self.commands or cmd_name not in self.table:
            return self.commands.get(cmd_name)
        if self._listing:
            line = self.table[cmd_name].help
            return TyperCommand(cmd_name, callback=None, help=line, short_help=line)
        self.commands[cmd_name] = load_command(cmd_name, self.table)
        return self.commands[cmd_name]

    def format_help(self, ctx: Any, formatter: Any) -> None:
        with self._from_table():
            super().format_help(ctx, formatter)
