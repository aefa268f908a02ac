"""``tierflow serve`` (the OpenAI-compatible gateway) and ``tierflow keys`` (its API keys)."""

from __future__ import annotations

import contextlib

import typer

from tierflow import store
from tierflow.app.console import console
from tierflow.app.fleet import adopt_running_fleet
from tierflow.app.gateway import DEFAULT_PORT, serve
from tierflow.core.errors import TierflowError

app = typer.Typer()  # this module's commands, loaded by name (tierflow/cli/commands.py)

keys_app = typer.Typer(no_args_is_help=True, help="The gateway's API keys (one per daemon).")
app.add_typer(keys_app, name="keys")


@app.command("serve")
def serve_command(
    host: str = typer.Option("127.0.0.1", help="Address to bind (loopback by default)."),
    port: int = typer.Option(DEFAULT_PORT, help="TCP port."),
) -> None:
    """Serve the OpenAI-compatible gateway and the jobs API until Ctrl-C (keys: tierflow keys)."""
    adopt_running_fleet()
    shown = f"[{host}]" if ":" in host else host
    console.print(f"gateway http://{shown}:{port}/v1 (OpenAI-compatible; needs a key)")
    console.print(f"  openapi http://{shown}:{port}/openapi.json")
    with contextlib.suppress(KeyboardInterrupt):
        serve(host, port)


@keys_app.command("create")
def keys_create(
    daemon: str = typer.Option(..., "--daemon", help="The daemon the key belongs to."),
) -> None:
    """Make a key for a daemon; it is printed once and stored only as its hash."""
    adopt_running_fleet()
    key_id, key = store.create_key(daemon)
    console.print(f"key {key_id} for daemon {daemon} (shown once, keep it):")
    print(key)


@keys_app.command("list")
def keys_list() -> None:
    """Every key: id, daemon, created, last used, revoked (never the key)."""
    adopt_running_fleet()
    for info in store.list_keys():
        state = f"revoked {info.revoked_at:%Y-%m-%d %H:%M}" if info.revoked_at else "active"
        used = f"{info.last_used_at:%Y-%m-%d %H:%M}" if info.last_used_at else "never"
        console.print(
            f"{info.id:>4}  {info.daemon:<24} created {info.created_at:%Y-%m-%d %H:%M}"
            f"  last used {used}  {state}"
        )


@keys_app.command("revoke")
def keys_revoke(
    key_id: int = typer.Argument(..., help="The key's id (tierflow keys list)."),
) -> None:
    """Revoke a key: it opens nothing from now on."""
    adopt_running_fleet()
    if not store.revoke_key(key_id):
        raise TierflowError(f"no key {key_id}")
    console.print(f"key {key_id} revoked")
