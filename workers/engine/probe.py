"""Does llama.cpp's extra-buffer path work on this CPU? One probe generation in a child process.

Some machines advertise a CPU feature they do not really enable: in some KVM guests AMX is in
``/proc/cpuinfo``, and llama.cpp's first AMX tile instruction faults (SIGSEGV). A fault cannot be
caught in Python, so the probe loads the model *with* extra buffer types in a child
(``python -m workers.engine.probe``), generates a few tokens, and reads the child's fate:

- exit 0 with its JSON line: the path works;
- killed by a fault signal (SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT): it does not;
- anything else (past ``timeout_s``, SIGKILL, a Python error such as a missing GGUF): unknown;
  the verdict says "does not work" for this process and is not cached.

Definite verdicts are cached in a small JSON file (default
``platformdirs.user_cache_dir("tierflow")/engine_probe.json``: the answer belongs to the
machine, not to one fleet's state dir), keyed by the CPU (model name, a hash of its feature
flags, machine, kernel release) and the llama-cpp-python version, so the probe runs once per
machine and upgrade. A lock file next to it keeps concurrent processes from probing twice.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import fcntl
import hashlib
import json
import logging
import os
import platform
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from platformdirs import user_cache_dir

from workers.engine.loader import llama_cpp_version, load_llama, resolve_model_path

log = logging.getLogger("workers.engine.probe")

FAULT_SIGNALS = frozenset(
    {signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE, signal.SIGABRT}
)
PROBE_PROMPT = "The capital of France is"
PROBE_TOKENS = 4
DEFAULT_TIMEOUT_S = 120.0
_PROJECT_ROOT = Path(__file__).resolve().parents[2]  # the child imports this very code


@dataclass(frozen=True)
class CpuIdentity:
    """What the verdict depends on besides llama.cpp: the CPU, its flags and the kernel."""

    model: str
    flags_hash: str  # first 12 hex digits of sha256 over the sorted feature flags
    machine: str
    kernel: str

    def key(self, llama_version: str) -> str:
        """The cache key of a verdict for this CPU and llama-cpp-python version."""
        return (
            f"{self.model} | flags {self.flags_hash} | {self.machine} | "
            f"kernel {self.kernel} | llama_cpp {llama_version}"
        )


def cpu_identity(cpuinfo: Path = Path("/proc/cpuinfo")) -> CpuIdentity:
    """This machine's CPU: model name and flags from ``/proc/cpuinfo`` (x86 ``model name`` and
    ``flags``; ARM ``CPU implementer``/``CPU part`` and ``Features``), else ``platform``'s."""
    fields: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in cpuinfo.read_text(errors="replace").splitlines():
            name, sep, value = line.partition(":")
            if sep:
                fields.setdefault(name.strip().lower(), value.strip())
    model = fields.get("model name") or " ".join(
        filter(None, [fields.get("cpu implementer"), fields.get("cpu part")])
    )
    flags = fields.get("flags") or fields.get("features") or ""
    digest = hashlib.sha256(" ".join(sorted(flags.split())).encode()).hexdigest()[:12]
    return CpuIdentity(
        model=model or platform.processor() or platform.machine() or "unknown CPU",
        flags_hash=digest,
        machine=platform.machine(),
        kernel=platform.release(),
    )


@dataclass(frozen=True)
class ProbeVerdict:
    """Whether the extra-buffer path generated without dying, and why we think so."""

    works: bool
    reason: str  # "probe generation succeeded", "probe child died with SIGSEGV", ...
    cpu: str  # the CPU model name
    llama_cpp: str  # llama-cpp-python version
    definite: bool  # False for timeouts, kills and Python errors: not cached
    seconds: float  # wall time of the probe child (of the original probe when cached)
    cached: bool = False  # read from the cache: no child was started

    def describe(self) -> str:
        """``reason`` with where it comes from, for the engine's start-up line."""
        where = f"{self.cpu} llama_cpp {self.llama_cpp}"
        if self.cached:
            return f"{self.reason} (cached for {where})"
        if self.definite:
            return f"{self.reason} in {self.seconds:.1f}s (now cached for {where})"
        return f"{self.reason} (not cached; {where})"


def default_cache_path() -> Path:
    """``user_cache_dir("tierflow")/engine_probe.json``."""
    return Path(user_cache_dir("tierflow")) / "engine_probe.json"


def probe_command(model_path: str | Path | None = None) -> list[str]:
    """The child's command line: this module's :func:`main` under this interpreter."""
    command = [sys.executable, "-m", "workers.engine.probe"]
    return command + (["--model-path", str(model_path)] if model_path else [])


def probe_extra_buffers(
    *,
    cache_path: Path | None = None,
    model_path: str | Path | None = None,
    command: list[str] | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> ProbeVerdict:
    """The cached verdict for this CPU and llama-cpp-python, or a fresh probe (seconds).

    ``command`` replaces the child's command line (tests use it to stage a crash). Never raises
    for what happens in the child; an unwritable cache only costs a probe next time.
    """
    path = cache_path or default_cache_path()
    cpu, version = cpu_identity(), llama_cpp_version()
    key = cpu.key(version)
    found = _cached(path, key)
    if found is not None:
        return found
    with _probe_lock(path):
        found = _cached(path, key)  # another process may have probed while we waited
        if found is not None:
            return found
        verdict = _run_child(command or probe_command(model_path), timeout_s, cpu, version)
        if verdict.definite:
            _store(path, key, verdict)
    return verdict


def _run_child(
    command: list[str], timeout_s: float, cpu: CpuIdentity, version: str
) -> ProbeVerdict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_PROJECT_ROOT), env.get("PYTHONPATH")]))
    started = time.perf_counter()

    def verdict(works: bool, reason: str, definite: bool) -> ProbeVerdict:
        seconds = time.perf_counter() - started
        return ProbeVerdict(works, reason, cpu.model, version, definite, seconds)

    try:
        child = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout_s, env=env, check=False
        )
    except subprocess.TimeoutExpired:
        return verdict(False, f"probe child gave no answer within {timeout_s:.0f}s", False)
    except OSError as exc:
        return verdict(False, f"probe child could not start: {exc}", False)
    if child.returncode < 0:
        sig = signal.Signals(-child.returncode)
        log.debug("probe child died with %s; stderr: %s", sig.name, child.stderr[-2000:])
        return verdict(False, f"probe child died with {sig.name}", sig in FAULT_SIGNALS)
    lines = child.stdout.strip().splitlines()
    if child.returncode == 0 and lines and lines[-1].startswith("{"):
        return verdict(True, "probe generation succeeded", True)
    last = (child.stderr.strip().splitlines() or ["no output"])[-1][:200]
    return verdict(False, f"probe child exited with code {child.returncode}: {last}", False)


def _cached(path: Path, key: str) -> ProbeVerdict | None:
    try:
        entry = json.loads(path.read_text()).get(key)
        return ProbeVerdict(**{**entry, "cached": True}) if isinstance(entry, dict) else None
    except (OSError, ValueError, TypeError, AttributeError):
        return None  # absent, unreadable or from another layout: probe again


def _store(path: Path, key: str, verdict: ProbeVerdict) -> None:
    """Add ``verdict`` under ``key``, keeping other machines' entries (an NFS home is shared)."""
    try:
        entries = json.loads(path.read_text())
        entries = entries if isinstance(entries, dict) else {}
    except (OSError, ValueError):
        entries = {}
    entries[key] = {k: v for k, v in asdict(verdict).items() if k != "cached"}
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps(entries, indent=1, sort_keys=True))
        os.replace(partial, path)
    except OSError as exc:
        log.warning("cannot cache the engine probe verdict in %s: %s", path, exc)
        partial.unlink(missing_ok=True)


@contextlib.contextmanager
def _probe_lock(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path.lock``; without a writable directory, no lock."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = path.with_name(path.name + ".lock").open("a")
    except OSError:
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def main(argv: list[str] | None = None) -> None:
    """The child: load with extra buffer types, generate :data:`PROBE_TOKENS` tokens, print JSON.

    If the path faults, this process dies by the signal before printing, which is the answer.
    """
    parser = argparse.ArgumentParser(description="probe llama.cpp's extra buffer types")
    parser.add_argument("--model-path", default=None)
    args = parser.parse_args(argv)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # an expected fault leaves no core file
    faulthandler.enable()  # the Python stack on stderr, then the signal kills us as before
    started = time.perf_counter()
    llm = load_llama(resolve_model_path(args.model_path), n_ctx=256, extra_buffers=True)
    loaded = time.perf_counter()
    out = llm.create_completion(PROBE_PROMPT, max_tokens=PROBE_TOKENS, temperature=0.0)
    done = time.perf_counter()
    tokens = out["usage"]["completion_tokens"]
    print(json.dumps({"tokens": tokens, "load_s": loaded - started, "generate_s": done - loaded}))
    sys.stdout.flush()
    llm.close()


if __name__ == "__main__":
    main()
