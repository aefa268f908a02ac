"""The CLI starts at once: ``tierflow --help`` reads the command table and imports no command
module; each command is loaded from the module the table names, which registers it."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest
import typer

from tests.support.services import REPO
from tierflow.cli import COMMANDS, load_command

MODULES = sorted({entry.module for entry in COMMANDS.values()})


def _words(text: str) -> str:
    return " ".join(text.split()).rstrip(".;")


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_command_loads_from_its_module_and_its_help_line_agrees(name: str) -> None:
    command = load_command(name)
    assert command.name == name
    assert _words(command.help or "").startswith(_words(COMMANDS[name].help)), name


@pytest.mark.parametrize("module", MODULES)
def test_a_module_registers_exactly_the_commands_the_table_names(module: str) -> None:
    app = importlib.import_module(f"tierflow.cli.{module}").app
    registered = set(typer.main.get_group(app).commands)
    assert registered == {name for name, entry in COMMANDS.items() if entry.module == module}


def test_help_imports_no_command_module_nor_the_fleet() -> None:
    shown = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "tierflow.cli", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    imported = {line.rsplit("|", 1)[-1].strip() for line in shown.stderr.splitlines()}
    heavy = {"workers", "router", "openai", "anthropic", "celery", "sqlalchemy", "starlette"}
    assert not imported & heavy, imported & heavy
    assert not {m for m in imported if m.startswith("tierflow.cli.") and m.endswith("_cmds")}
    assert all(name in shown.stdout for name in COMMANDS)


def test_a_subgroup_loads_when_named_and_an_unknown_name_is_refused() -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "tierflow.cli", "db", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0 and "upgrade" in shown.stdout, shown.stderr
    refused = subprocess.run(
        [sys.executable, "-m", "tierflow.cli", "no-such-command"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2 and "No such command" in refused.stderr
