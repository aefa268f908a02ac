"""Children that die with their parent: ``prctl(PR_SET_PDEATHSIG, SIGKILL)``, then exec.

``tierflow up`` starts each child through this wrapper
(``python -m tierflow.app.deathsig PARENT_PID -- COMMAND...``): it asks Linux to SIGKILL it when
the thread that started it dies, checks that its parent is still the one named (had the parent
died first, the request came too late: it exits with code 3), then execs the command, which keeps
the setting. So even a ``kill -9`` of the supervisor leaves no child running.

Linux sends the signal when the parent *thread* exits, so the supervisor starts every child from
one thread that lives as long as it does (:mod:`tierflow.app.supervisor`).

A wrapper rather than ``preexec_fn``: the supervisor has threads, and Python documents
``preexec_fn`` as unsafe then. Without ``prctl`` (not Linux) :func:`wrap` returns the command
unchanged, and a child may outlive a ``kill -9`` of its supervisor.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
PARENT_GONE = 3  # exit code when the parent died before the signal was armed


def available() -> bool:
    """Whether this system has ``prctl(PR_SET_PDEATHSIG)`` (Linux)."""
    return sys.platform.startswith("linux")


def wrap(argv: list[str]) -> list[str]:
    """``argv`` run so that it dies with this process (unchanged where that is not available)."""
    if not available():
        return argv
    return [sys.executable, "-m", "tierflow.app.deathsig", str(os.getpid()), "--", *argv]


def set_parent_death_signal(sig: int = signal.SIGKILL) -> None:
    """Ask Linux to send ``sig`` to this process when its parent thread exits; OSError if not."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl(PR_SET_PDEATHSIG): {os.strerror(errno)}")


def main(argv: list[str] | None = None) -> None:
    """``PARENT_PID -- COMMAND...``: arm the signal, check the parent, exec the command."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 3 or args[1] != "--" or not args[0].isdigit():
        sys.exit("usage: python -m tierflow.app.deathsig PARENT_PID -- COMMAND...")
    parent, command = int(args[0]), args[2:]
    set_parent_death_signal()
    if os.getppid() != parent:
        sys.exit(PARENT_GONE)
    os.execvp(command[0], command)


if __name__ == "__main__":
    main()
