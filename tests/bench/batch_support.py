"""Helpers of ``bench_batch.py``: ``tierflow up`` as a child, a child's peak memory, raw sends.

Imports nothing of tierflow at its top, so the benchmark can set the environment first (the
children import what they run).

- :class:`UpFleet`: ``python -m tierflow.cli up`` in its own session (a user's ``tierflow up``),
  ready when its log says ``fleet up``; stopped by SIGINT to the session (Ctrl-C), then SIGKILL.
- :func:`run_measured`: a child process run to its end, its RSS sampled with psutil meanwhile and
  its kernel peak (``ru_maxrss`` of ``os.wait4``, that child alone) read when it exits.
- ``python tests/bench/batch_support.py raw-insert N URL``: N job-sized rows in multi-row inserts
  (:func:`raw_insert`), the database's floor for storing a batch file.
- ``python tests/bench/batch_support.py raw-send N RUN``: the raw Celery submitter, sending N
  no-op tasks with the ids ``RUN-<i>`` and keeping no result objects (like ``tierflow batch run``,
  which keeps nothing of what it sent); the benchmark reads the results from Redis itself.
- ``python tests/bench/batch_support.py submit-batch FILE NAME``: ``submit_batch`` of FILE in
  this process, timed without the CLI's start (:func:`submit_in_process`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]
UP_READY = "fleet up"


@dataclass
class Measured:
    """One child's run: wall seconds, exit status, peak RSS (MiB) and the sampled curve."""

    argv: list[str]
    wall_s: float
    returncode: int
    peak_rss_mib: float  # the kernel's high-water mark (ru_maxrss)
    samples: list[tuple[float, float]] = field(default_factory=list)  # (s since start, MiB)
    output: str = ""
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))  # wall clock

    @property
    def sampled_peak_mib(self) -> float:
        return max((mib for _, mib in self.samples), default=0.0)

    def rss_at(self, share: float) -> float | None:
        """The sampled RSS at ``share`` (0..1) of the run's wall time (the last sample before)."""
        if not self.samples:
            return None
        moment = share * self.wall_s
        before = [mib for t, mib in self.samples if t <= moment]
        return before[-1] if before else self.samples[0][1]

    def rss_when(self, when: datetime) -> float | None:
        """The sampled RSS at wall-clock ``when`` (UTC; e.g. a row's ``created_at``)."""
        return self.rss_at((when - self.started_at).total_seconds() / self.wall_s)


def run_measured(
    argv: list[str], env: dict[str, str], every_s: float = 0.02, timeout_s: float = 3600.0
) -> Measured:
    """Run ``argv`` to its end with its RSS sampled every ``every_s`` seconds; its output (stdout
    and stderr together) is kept. Raises TimeoutError (after killing it) past ``timeout_s``."""
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"tfbench-child-{os.getpid()}-{time.time_ns()}"
    with log.open("wb") as out:
        started_at = datetime.now(UTC)
        started = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        samples: list[tuple[float, float]] = []
        stop = threading.Event()

        def sample() -> None:
            try:
                watched = psutil.Process(proc.pid)
                while not stop.is_set():
                    rss = watched.memory_info().rss
                    if rss:  # 0 once it is a zombie
                        samples.append((time.perf_counter() - started, rss / 2**20))
                    stop.wait(every_s)
            except psutil.Error:  # it exited between two samples
                return

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        timer = threading.Timer(timeout_s, lambda: proc.kill())
        timer.start()
        try:
            # wait4 reaps it with its own resource usage (not all children's, as RUSAGE_CHILDREN).
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
            stop.set()
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        sampler.join(2)
    output = log.read_text(errors="replace")
    log.unlink(missing_ok=True)
    if proc.returncode == -signal.SIGKILL and wall >= timeout_s:
        raise TimeoutError(f"{argv} still running after {timeout_s}s:\n{output[-2000:]}")
    peak = usage.ru_maxrss / 1024  # KiB on Linux
    return Measured(argv, wall, proc.returncode, peak, samples, output, started_at)


class UpFleet:
    """``tierflow up`` as a user runs it, in its own session, logging to ``log``."""

    def __init__(self, env: dict[str, str], log: Path, args: list[str] | None = None) -> None:
        self.log = log
        self._out = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tierflow.cli", "up", *(args or [])],
            cwd=REPO,
            env=env,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_up(self, timeout_s: float) -> float:
        """Seconds until the fleet said it is up; RuntimeError (with its log) if it exits or is
        not up in time."""
        started = time.monotonic()
        while UP_READY not in self.output():
            if self.proc.poll() is not None:
                raise RuntimeError(f"tierflow up exited {self.proc.returncode}:\n{self.output()}")
            if time.monotonic() - started > timeout_s:
                raise RuntimeError(
                    f"tierflow up not up after {timeout_s}s:\n{self.output()[-4000:]}"
                )
            time.sleep(0.25)
        return time.monotonic() - started

    def processes(self) -> list[psutil.Process]:
        """The supervisor and every descendant (workers, beat, engine)."""
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.Error:
            return []

    def rss_mib(self) -> dict[str, float]:
        """RSS of each process of the fleet, by a short name from its command line."""
        out: dict[str, float] = {}
        for p in self.processes():
            try:
                cmd = p.cmdline()
                rss = p.memory_info().rss / 2**20
            except psutil.Error:
                continue
            name = _short_name(cmd)
            while name in out:
                name += "'"
            out[name] = rss
        return out

    def stop(self, timeout_s: float = 60.0) -> None:
        """Ctrl-C to the whole session (what a terminal does), then SIGKILL if it lingers."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGINT)
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
            except ProcessLookupError:
                pass
        self._out.close()


def _short_name(cmd: list[str]) -> str:
    if "-n" in cmd:  # a celery worker: -n router@%h
        return "worker-" + cmd[cmd.index("-n") + 1].split("@")[0]
    if "beat" in cmd:
        return "beat"
    if "local-engine" in cmd:
        return "local-engine"
    if "up" in cmd:
        return "supervisor"
    return os.path.basename(cmd[0]) if cmd else "?"


def raw_send(n: int, run: str) -> None:
    """Send ``n`` no-op tasks with ids ``<run>-<i>``, holding none of their results."""
    sys.path.insert(0, str(REPO))
    from tests.bench.raw_celery_app import noop

    for i in range(n):
        noop.apply_async((i,), task_id=f"{run}-{i}")


def submit_in_process(path: str, name: str) -> None:
    """``submit_batch`` of the file's lines as ``tierflow batch run --in-flight 0`` calls it,
    timed alone (no CLI start): prints ``SUBMIT {"lines": N, "submit_s": S}``."""
    import json

    sys.path.insert(0, str(REPO))
    # Here, not at the top: the parent imports this module before it sets the environment the
    # settings read; this child is started with it set.
    from router.batch import read_jsonl, submit_batch

    started = time.perf_counter()
    done = submit_batch(read_jsonl(path), name=name, in_flight=0)
    took = time.perf_counter() - started
    if done.errors or done.sent != done.lines:
        sys.exit(f"submit_batch: {done.sent} of {done.lines} sent, {len(done.errors)} refused")
    print("SUBMIT " + json.dumps({"lines": done.lines, "submit_s": took}))


RAW_INSERT_CHUNK = 500


def raw_insert(n: int, url: str) -> None:
    """Insert ``n`` job-sized rows into a scratch table of their own (key unique, JSON context,
    ``ON CONFLICT DO NOTHING RETURNING``, as tierflow's insert), :data:`RAW_INSERT_CHUNK` rows
    per multi-row statement and transaction: the database's floor for storing a batch file."""
    import json
    import uuid

    import psycopg

    with psycopg.connect(url) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS raw_lines (id uuid PRIMARY KEY, key text UNIQUE, "
            "prompt text, context jsonb, status text, created_at timestamptz)"
        )
        conn.commit()
        for lo in range(0, n, RAW_INSERT_CHUNK):
            rows = range(lo, min(n, lo + RAW_INSERT_CHUNK))
            values = ", ".join(["(%s, %s, %s, %s, 'queued', now())"] * len(rows))
            params: list[object] = []
            for i in rows:
                params += [
                    uuid.uuid4(),
                    f"raw:{i}",
                    f"Extract topic from: 'raw {i}'",
                    json.dumps({}),
                ]
            conn.execute(
                f"INSERT INTO raw_lines VALUES {values} ON CONFLICT (key) DO NOTHING RETURNING key",
                params,
            ).fetchall()
            conn.commit()


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "raw-send":
        raw_send(int(sys.argv[2]), sys.argv[3])
    elif len(sys.argv) == 4 and sys.argv[1] == "raw-insert":
        raw_insert(int(sys.argv[2]), sys.argv[3])
    elif len(sys.argv) == 4 and sys.argv[1] == "submit-batch":
        submit_in_process(sys.argv[2], sys.argv[3])
    else:
        sys.exit(
            "usage: batch_support.py raw-send N RUN | raw-insert N POSTGRES_URL "
            "| submit-batch FILE NAME"
        )
