"""``tierflow queue-depth``: how much work waits on each queue, once or as the autoscalers'
HTTP endpoint (see :mod:`workers.queues`)."""

from __future__ import annotations

import typer
from rich.table import Table

from tierflow.app.console import console
from tierflow.app.fleet import adopt_running_fleet
from workers.queues import depth_server, queue_load

app = typer.Typer()  # this module's commands, loaded by name (tierflow/cli/commands.py)


@app.command("queue-depth")
def queue_depth_cmd(
    serve: int = typer.Option(0, help="Serve GET /depth/<queue> on this port (0: print once)."),
    host: str = typer.Option("127.0.0.1", help="Address to serve on (loopback by default)."),
) -> None:
    """Messages waiting per queue (every priority list) and taken by workers, unacknowledged."""

    adopt_running_fleet()
    if serve:
        server = depth_server(host, serve)
        console.print(f"queue depths on http://{host}:{server.server_address[1]}/depth/<queue>")
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
        return
    table = Table("queue", "queued", "reserved", "depth", title="Queues")
    for queue, load in queue_load().items():
        table.add_row(queue, str(load["queued"]), str(load["reserved"]), str(load["depth"]))
    console.print(table)
