"""``tierflow batch``: run a JSONL file of jobs as one batch, watch it, read its results, cancel.

The group's commands are loaded when one runs, as the root's are (:mod:`tierflow.cli.commands`):
:data:`BATCH_COMMANDS` names the module of each. ``status`` and ``results`` only read the store
(:mod:`tierflow.cli.batch_view_cmds`), so watching a batch starts without the router, the broker
or any backend; ``run`` and ``cancel`` (:mod:`tierflow.cli.batch_run_cmds`) load what submitting
needs. Each module still imports only the floors below the roof.

The root's config check (the backends' options, which imports every provider SDK) is this
group's to run (:func:`check_config`): ``status`` and ``results`` check the settings and the
config file's schema only, the others the whole config, as every other command does.
"""

from __future__ import annotations

import importlib

import typer

from tierflow.cli.commands import CommandEntry, LazyGroup
from tierflow.core.settings import get_settings

BATCH_COMMANDS: dict[str, CommandEntry] = {
    "run": CommandEntry(
        "batch_run_cmds",
        "Send every line of FILE (JSONL) as one batch; running it again resumes it.",
    ),
    "status": CommandEntry(
        "batch_view_cmds", "Progress of a batch (by id or name): per status and tier, cost, ETA."
    ),
    "results": CommandEntry(
        "batch_view_cmds", "One JSON line per job of the batch; partial results at any time."
    ),
    "cancel": CommandEntry(
        "batch_run_cmds", "Cancel every queued job of the batch; jobs in flight finish."
    ),
}
READS_ONLY = frozenset({"status", "results"})  # the store alone: no backend is used
_CONFIG_CHECK = "tierflow.cli.base"  # the root's whole-config check (imports the backends)


class LazyBatchGroup(LazyGroup):
    """``tierflow batch``: resolves a sub-command through :data:`BATCH_COMMANDS` when it runs;
    its help lists them from the table's lines, importing none."""

    table = BATCH_COMMANDS


app = typer.Typer()  # this module's commands, loaded by name (tierflow/cli/commands.py)

batch_app = typer.Typer(
    cls=LazyBatchGroup, no_args_is_help=True, help="Batch runs: many jobs as one, resumable."
)
app.add_typer(batch_app, name="batch")


@batch_app.callback()
def check_config(ctx: typer.Context) -> None:
    """Validate the settings and the config before the command runs: the whole config (the
    backends' options too) for ``run`` and ``cancel``, the settings and the file's schema for
    the reads (:data:`READS_ONLY`). Raises the settings' or the config's validation error."""
    if ctx.invoked_subcommand in READS_ONLY:
        get_settings().llm  # noqa: B018  (parsed and validated when first read)
        return
    importlib.import_module(_CONFIG_CHECK).check_config_at_start()
