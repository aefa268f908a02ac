"""Build the wheel from a clean copy of the source tree and check what it carries.

``python -m tests.deploy.wheel_contents DIR`` (CI's packaging step) builds into ``DIR``, checks
the wheel and prints its path; :mod:`tests.deploy.test_wheel` then installs that same wheel.
The check: every package under the four roots (``tierflow``, ``router``, ``workers``,
``schemas``), ``celeryconfig``, the default config, and every migration with Alembic's files.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ROOTS = ("tierflow", "router", "workers", "schemas")
SKIP = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*cache*", ".hypothesis",
    ".tierflow-state", "tests",
)  # fmt: skip


def build_wheel(dist: Path) -> Path:
    """``pip wheel --no-deps`` on a copy of the tree (a ``build/`` left in the repository could
    put stale files in the wheel); returns the wheel's path."""
    with tempfile.TemporaryDirectory(prefix="tierflow-src-") as tmp:
        source = Path(tmp) / "src"
        shutil.copytree(REPO, source, ignore=SKIP)
        cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), source]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"pip wheel failed:\n{done.stdout}\n{done.stderr}")
    (wheel,) = sorted(Path(dist).glob("tierflow-*.whl"))[-1:]
    return wheel


def expected_files() -> set[str]:
    """What the wheel must hold, read from the source tree."""
    wanted = {"celeryconfig.py", "tierflow/core/default_llm_config.yaml"}
    for root in ROOTS:
        for init in (REPO / root).rglob("__init__.py"):
            if "__pycache__" not in init.parts:
                wanted.add(init.relative_to(REPO).as_posix())
    migrations = REPO / "tierflow" / "migrations"
    for path in [migrations / "env.py", migrations / "script.py.mako"]:
        wanted.add(path.relative_to(REPO).as_posix())
    for path in (migrations / "versions").glob("*.py"):
        wanted.add(path.relative_to(REPO).as_posix())
    return wanted


def check_wheel(wheel: Path) -> list[str]:
    """Files the wheel should carry and does not (empty: all there); also refuses a top-level
    ``alembic`` package, which would shadow the Alembic library."""
    names = set(zipfile.ZipFile(wheel).namelist())
    problems = sorted(expected_files() - names)
    if any(n.startswith("alembic/") for n in names):
        problems.append("a top-level alembic/ in the wheel would shadow the Alembic library")
    return problems


def main() -> None:
    dist = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="tierflow-dist-"))
    wheel = build_wheel(dist)
    problems = check_wheel(wheel)
    if problems:
        print(f"{wheel.name} lacks: {', '.join(problems)}", file=sys.stderr)
        sys.exit(1)
    print(wheel)


if __name__ == "__main__":
    main()
