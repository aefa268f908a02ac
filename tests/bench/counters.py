"""What ``bench_fleet.py`` counts beside the clock: PostgreSQL commits, Redis commands, worker RSS,
the SQL statements of one job (from the server's own log) and py-spy profiles.

Every counter here is read from outside the code under test: the product is not instrumented.

- **Commits**: ``pg_stat_get_db_xact_commit(oid)`` of the bench database, read from a connection
  to another database (``postgres``) so that reading it commits nothing in the bench database.
  PostgreSQL 15 keeps these counters in shared memory, but a backend flushes its pending counts at
  most once a second at the end of a transaction and otherwise after 10 s idle
  (``PGSTAT_IDLE_INTERVAL``): :func:`settle_pg_stats` waits that out before each reading. Every
  transaction counts, read-only ones included (a SELECT outside an explicit transaction is one).
- **Redis commands**: ``INFO commandstats`` ``calls``, server-wide (the ``info`` command itself is
  left out). The Redis is shared with other users of the machine, so the benchmark takes each
  reading around a quiet window, measures the background rate (its own idle workers' polling
  included) in the settle window right before, and subtracts it. A pipeline's commands count one
  each, so these are commands, an upper bound on round trips.
- **RSS**: ``psutil`` of each worker process (the threads pool has no children; any are added).
- **SQL per job**: ``ALTER DATABASE ... SET log_statement = 'all'``, existing backends terminated
  so that every pool reconnects under it, then the PostgreSQL server log is read between two
  offsets around each sequential job; each backend pid is mapped to its process through
  ``pg_stat_activity.client_port`` and the TCP connections of the worker processes and of the
  benchmark itself. Needs read access to the server log (``pg_current_logfile()``, or
  ``/var/log/postgresql/postgresql-*-main.log`` with the Debian default of logging to stderr).
- **Profiles**: ``py-spy record --format raw`` (collapsed stacks, idle threads left out) attached to
  each tierflow worker over an extra, untimed sequential pass; :func:`summarize_collapsed` turns
  the stacks into self/total shares per function and per package.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import signal
import subprocess
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import psycopg
import redis

PGSTAT_FLUSH_WAIT_S = 10.5  # PGSTAT_IDLE_INTERVAL (10 s) + margin


# -- PostgreSQL commits --------------------------------------------------------------------------
class PgCommits:
    def __init__(self, admin_url: str, db_name: str) -> None:
        self.conn = psycopg.connect(admin_url, autocommit=True)
        row = self.conn.execute("SELECT oid FROM pg_database WHERE datname = %s", (db_name,))
        self.oid = row.fetchone()[0]  # type: ignore[index]

    def read(self) -> int:
        self.conn.execute("SELECT pg_stat_clear_snapshot()")
        row = self.conn.execute("SELECT pg_stat_get_db_xact_commit(%s)", (self.oid,)).fetchone()
        return int(row[0])  # type: ignore[index]

    def close(self) -> None:
        self.conn.close()


# -- Redis commands ------------------------------------------------------------------------------
def redis_calls(client: redis.Redis) -> Counter[str]:
    stats: dict[str, Any] = client.info("commandstats")  # type: ignore[assignment]
    calls: Counter[str] = Counter()
    for key, value in stats.items():
        name = key.removeprefix("cmdstat_")
        if name != "info":
            calls[name] = int(value["calls"])
    return calls


@dataclass
class Window:
    """Counter readings around one measured phase, with the background rate just before it."""

    jobs: int
    seconds: float
    commits: int | None
    redis: Counter[str]
    redis_background_per_s: dict[str, float]

    def commits_per_job(self) -> float | None:
        return None if self.commits is None else self.commits / self.jobs

    def redis_net(self) -> dict[str, float]:
        net = {
            cmd: calls - self.redis_background_per_s.get(cmd, 0.0) * self.seconds
            for cmd, calls in self.redis.items()
        }
        return {cmd: n for cmd, n in net.items() if n > 0.5}

    def redis_per_job(self) -> float:
        return sum(self.redis_net().values()) / self.jobs

    def redis_gross_per_job(self) -> float:
        return sum(self.redis.values()) / self.jobs

    def redis_noisy(self) -> bool:
        """The background to subtract was over a quarter of the phase's commands: distrust it."""
        return self.redis_background_total_per_s() * self.seconds > 0.25 * sum(self.redis.values())

    def redis_background_total_per_s(self) -> float:
        return sum(self.redis_background_per_s.values())

    def redis_top(self, n: int = 8) -> list[tuple[str, float]]:
        per_job = {cmd: calls / self.jobs for cmd, calls in self.redis_net().items()}
        return sorted(per_job.items(), key=lambda kv: -kv[1])[:n]


def counted_phase(
    pg: PgCommits | None, rds: redis.Redis, jobs: int, run: Callable[[], Any], settle: bool = True
) -> Window:
    """Run ``run`` (``jobs`` jobs) between counter readings.

    Before: wait for pending PostgreSQL stats to flush, and measure Redis' background rate over
    that same quiet window. After: wait again before the closing commit reading.
    """
    wait = PGSTAT_FLUSH_WAIT_S if (settle and pg is not None) else 2.0
    bg0, t0 = redis_calls(rds), time.monotonic()
    time.sleep(wait)
    bg1, t1 = redis_calls(rds), time.monotonic()
    background = {cmd: (bg1[cmd] - bg0.get(cmd, 0)) / (t1 - t0) for cmd in bg1}
    c0 = pg.read() if pg is not None else None
    r0 = redis_calls(rds)
    started = time.monotonic()
    run()
    seconds = time.monotonic() - started
    r1 = redis_calls(rds)
    commits = None
    if pg is not None and c0 is not None and settle:  # unsettled readings undercount: none
        time.sleep(PGSTAT_FLUSH_WAIT_S)
        commits = pg.read() - c0
    delta = Counter({cmd: r1[cmd] - r0.get(cmd, 0) for cmd in r1 if r1[cmd] != r0.get(cmd, 0)})
    return Window(jobs, seconds, commits, delta, background)


# -- RSS -----------------------------------------------------------------------------------------
def cpu_s(pid: int) -> float:
    """User + system CPU seconds used so far by ``pid`` and its children (a worker's pool)."""
    proc = psutil.Process(pid)
    total = sum(proc.cpu_times()[:2])
    for child in proc.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            total += sum(child.cpu_times()[:2])
    return total


SERVICE_NAMES = {"postgres": "PostgreSQL", "redis-server": "Redis"}


def service_cpu_s() -> dict[str, float]:
    """User + system CPU seconds so far of every process of each local service (by process
    name: ``postgres``, ``redis-server``), summed per service. A backend that exits between two
    readings takes its share with it, so a difference is a lower bound; the services are shared
    with whatever else runs on the machine, so read it beside the other system's."""
    out = dict.fromkeys(SERVICE_NAMES.values(), 0.0)
    for proc in psutil.process_iter(["name", "cpu_times"]):
        label = SERVICE_NAMES.get(proc.info["name"] or "")
        times = proc.info["cpu_times"]
        if label is not None and times is not None:
            out[label] += times.user + times.system
    return out


def rss_mb(pid: int) -> float:
    proc = psutil.Process(pid)
    total = proc.memory_info().rss
    for child in proc.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            total += child.memory_info().rss
    return total / 2**20


# -- SQL statements from the server log ----------------------------------------------------------
_RECORD = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)? \S+ \[(\d+)\] (\S*?)@(\S+) (\w+):  (.*)$"
)


def server_log_path(admin: psycopg.Connection[Any]) -> Path | None:
    """The PostgreSQL server log this process can read, or None."""
    try:
        row = admin.execute("SELECT pg_current_logfile()").fetchone()
        if row and row[0]:
            data = admin.execute("SHOW data_directory").fetchone()
            path = Path(row[0]) if os.path.isabs(row[0]) else Path(data[0]) / row[0]  # type: ignore[index]
            if os.access(path, os.R_OK):
                return path
    except psycopg.Error:
        pass
    candidates = sorted(
        glob.glob("/var/log/postgresql/postgresql-*-main.log"), key=os.path.getmtime
    )
    return Path(candidates[-1]) if candidates and os.access(candidates[-1], os.R_OK) else None


def normalize_sql(text: str, width: int = 110) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    return text if len(text) <= width else text[: width - 3] + "..."


def parse_log(chunk: str, db_name: str) -> list[tuple[int, str]]:
    """``(backend pid, statement)`` of every statement logged for ``db_name``, in log order."""
    out: list[tuple[int, str]] = []
    current: list[Any] | None = None
    for line in chunk.splitlines():
        m = _RECORD.match(line)
        if m:
            if current is not None:
                out.append((current[0], "\n".join(current[1])))
            current = None
            pid, _user, db, level, message = m.groups()
            if db != db_name or level != "LOG":
                continue
            sm = re.match(r"(?:statement|execute [^:]*): (.*)$", message)
            if sm:
                current = [int(pid), [sm.group(1)]]
        elif current is not None and (line.startswith("\t") or not line.strip()):
            current[1].append(line)
    if current is not None:
        out.append((current[0], "\n".join(current[1])))
    return out


def pid_owners(
    admin: psycopg.Connection[Any], db_name: str, procs: dict[str, int]
) -> dict[int, str]:
    """Backend pid → name of the process (from ``procs``: name → OS pid) that holds it."""
    port_owner: dict[int, str] = {}
    for name, pid in procs.items():
        try:
            for c in psutil.Process(pid).net_connections(kind="tcp"):
                if c.raddr and c.raddr.port == 5432:
                    port_owner[c.laddr.port] = name
        except psutil.Error:
            pass
    rows = admin.execute(
        "SELECT pid, client_port FROM pg_stat_activity WHERE datname = %s", (db_name,)
    ).fetchall()
    return {pid: port_owner.get(port, f"?{port}") for pid, port in rows}


def enable_statement_log(admin: psycopg.Connection[Any], db_name: str) -> None:
    """Log every statement of ``db_name`` from now on: set it, and make every pool reconnect."""
    admin.execute(f"ALTER DATABASE \"{db_name}\" SET log_statement = 'all'")
    admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = %s AND pid <> pg_backend_pid()",
        (db_name,),
    )


def disable_statement_log(admin: psycopg.Connection[Any], db_name: str) -> None:
    admin.execute(f'ALTER DATABASE "{db_name}" RESET log_statement')


@dataclass
class TracedJob:
    statements: list[tuple[str, str]] = field(default_factory=list)  # (process, sql)

    def kinds(self) -> Counter[str]:
        c: Counter[str] = Counter()
        for _, sql in self.statements:
            head = sql.strip().split(None, 1)[0].upper() if sql.strip() else "?"
            # SQLAlchemy's pool_pre_ping sends an empty statement (";") on every checkout.
            c["pre-ping" if sql.strip().lower() in (";", "select 1") else head] += 1
        return c


def trace_jobs(
    log_path: Path,
    admin: psycopg.Connection[Any],
    db_name: str,
    procs: dict[str, int],
    run_one: Callable[[int], None],
    n: int,
) -> list[TracedJob]:
    """Run ``n`` jobs one after another and return the statements each caused, by process."""
    traced: list[TracedJob] = []
    raw: list[list[tuple[int, str]]] = []
    for i in range(n):
        before = log_path.stat().st_size
        run_one(i)
        time.sleep(0.3)  # let every backend write its lines
        with log_path.open("rb") as f:
            f.seek(before)
            chunk = f.read().decode(errors="replace")
        raw.append(parse_log(chunk, db_name))
    owners = pid_owners(admin, db_name, procs)
    for stmts in raw:
        traced.append(TracedJob([(owners.get(pid, f"pid {pid}"), sql) for pid, sql in stmts]))
    return traced


# -- py-spy --------------------------------------------------------------------------------------
class Profiler:
    """``py-spy record`` attached to some processes until :meth:`stop`.

    ``gil``: sample only the thread holding the GIL (py-spy ``--gil``): a thread blocked in a
    socket read (redis-py's ``_read_from_socket``, psycopg's wait) has released it and drops
    out, which the idle filter (:data:`IDLE_LEAVES`) cannot tell from a read of data already
    there; C work done without the GIL drops out too."""

    def __init__(
        self, out_dir: Path, procs: dict[str, int], rate: int = 250, gil: bool = False
    ) -> None:
        self.exe = shutil.which("py-spy") or str(Path(os.sys.executable).with_name("py-spy"))  # type: ignore[attr-defined]
        self.files: dict[str, Path] = {}
        self.procs: list[subprocess.Popen[bytes]] = []
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, pid in procs.items():
            path = out_dir / f"{name}.collapsed.txt"
            self.files[name] = path
            self.procs.append(
                subprocess.Popen(
                    [
                        self.exe,
                        "record",
                        "--pid",
                        str(pid),
                        "--rate",
                        str(rate),
                        "--format",
                        "raw",
                        "--output",
                        str(path),
                        "--threads",
                        *(["--gil"] if gil else []),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        time.sleep(1.0)  # attached before the first job

    def stop(self) -> dict[str, Path]:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        return {name: path for name, path in self.files.items() if path.exists()}


_FRAME = re.compile(r"^(.*) \((.*?)(?::(\d+))?\)$")


def _package(filename: str) -> str:
    """Top-level package (or stdlib module) of a frame's file (py-spy's paths are relative)."""
    short = _short(filename)
    return short.split("/", 1)[0].removesuffix(".py")


# Leaves where a sampled thread only waits: an idle pool thread (ThreadPoolExecutor's queue), the
# consumer's event loop, sleeps and lock waits. py-spy's own idle detection misses some of them.
IDLE_LEAVES = (
    "_worker (concurrent/futures/thread.py)",
    "_epoll.poll (kombu/utils/eventio.py)",
    "wait (threading.py)",
    "Condition.wait (threading.py)",
    "Event.wait (threading.py)",
    "_wait_for_tstate_lock (threading.py)",
)
PROJECT = ("tierflow/", "router/", "workers/", "schemas/", "celeryconfig")


@dataclass
class ProfileSummary:
    samples: int  # every sample py-spy kept
    busy: int  # less those whose leaf is an idle wait (IDLE_LEAVES); shares are of these
    in_tasks: float  # share of busy samples inside a task (celery apply_target)
    self_top: list[tuple[str, float]]
    total_top: list[tuple[str, float]]  # project functions only (tierflow/router/workers/...)
    packages_self: list[tuple[str, float]]


def summarize_collapsed(lines: Iterable[str], top: int = 15) -> ProfileSummary:
    """Self share per function and package, total share per project function, of busy samples."""
    total = busy = tasks = 0
    self_c: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    pkg: Counter[str] = Counter()
    for line in lines:
        line = line.rstrip("\n")
        if not line:
            continue
        stack, _, count_s = line.rpartition(" ")
        try:
            count = int(count_s)
        except ValueError:
            continue
        frames = []
        for part in stack.split(";"):
            m = _FRAME.match(part)
            if not m or part.startswith("process ") or part.startswith("thread "):
                continue
            func, filename = m.group(1), m.group(2)
            frames.append((f"{func} ({_short(filename)})", _package(filename)))
        if not frames:
            continue
        total += count
        if frames[-1][0] in IDLE_LEAVES:
            continue
        busy += count
        if any(f[0].startswith("apply_target (celery/") for f in frames):
            tasks += count
        self_c[frames[-1][0]] += count
        pkg[frames[-1][1]] += count
        for name in {f[0] for f in frames}:
            if name.split(" (", 1)[1].startswith(PROJECT):
                incl[name] += count

    def share(c: Counter[str]) -> list[tuple[str, float]]:
        return [(k, v / busy) for k, v in c.most_common(top)] if busy else []

    return ProfileSummary(
        total, busy, tasks / busy if busy else 0.0, share(self_c), share(incl), share(pkg)
    )


def _short(filename: str) -> str:
    f = filename.replace("\\", "/")
    for marker in ("site-packages/", "lib/python3."):
        if marker in f:
            rest = f.split(marker, 1)[1]
            return rest.split("/", 1)[1] if marker == "lib/python3." else rest
    for top in ("tierflow/", "router/", "workers/", "schemas/", "tests/"):
        i = f.find(top)
        if i >= 0:
            return f[i:]
    return f


def merge_counts(items: Iterable[dict[str, float]]) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for d in items:
        for k, v in d.items():
            out[k] += v
    return dict(out)
