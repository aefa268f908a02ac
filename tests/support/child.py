"""Run test code that may crash in C (llama.cpp) in a forked child, so pytest survives it.

:func:`run_in_child` forks, runs the function in the child, and sends its result (or the
exception it raised) back through a pipe, pickled. A child killed by a signal fails the test
naming the signal ("SIGSEGV: a native crash"), instead of taking the whole test run with it.

Fork, not spawn: the child starts with the test's state as it is (no re-import), and the parent
never loads llama.cpp itself, so there is no native state to fork in a bad moment.
"""

from __future__ import annotations

import os
import pickle
import resource
import select
import signal
import time
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

T = TypeVar("T")


class ChildError(Exception):
    """An exception the child raised that could not be pickled back (its repr and traceback)."""


def run_in_child(fn: Callable[..., T], *args: Any, timeout: float = 180.0, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` in a forked child; its return value here, or its exception raised
    here (``pytest.raises`` works across the fork). Past ``timeout`` seconds the child is killed
    and the test fails; a child that dies by a signal fails the test naming the signal."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        os.close(read_fd)
        _child_main(write_fd, fn, args, kwargs)
    os.close(write_fd)
    try:
        payload = _read_all(read_fd, time.monotonic() + timeout)
    except TimeoutError:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail(f"child running {_name(fn)} gave no answer within {timeout:.0f}s")
    finally:
        os.close(read_fd)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        sig = signal.Signals(os.WTERMSIG(status))
        pytest.fail(f"child running {_name(fn)} died with {sig.name} (a native crash)")
    if not payload:
        code = os.waitstatus_to_exitcode(status)
        pytest.fail(f"child running {_name(fn)} exited with code {code} without an answer")
    outcome, value = pickle.loads(payload)
    if outcome == "raised":
        raise value
    result: T = value
    return result


def _child_main(write_fd: int, fn: Callable[..., Any], args: Any, kwargs: Any) -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crash under test leaves no core file
    try:
        payload = pickle.dumps(("returned", fn(*args, **kwargs)))
    except BaseException as exc:  # the test's own assertion errors included
        try:
            payload = pickle.dumps(("raised", exc))
        except Exception:
            detail = "".join(traceback.format_exception(exc))
            payload = pickle.dumps(("raised", ChildError(detail)))
    with os.fdopen(write_fd, "wb") as pipe:
        pipe.write(payload)
    os._exit(0)  # no atexit handlers, no pytest teardown in the child


def _read_all(fd: int, deadline: float) -> bytes:
    chunks: list[bytes] = []
    while True:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise TimeoutError
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _name(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__qualname__", repr(fn))
