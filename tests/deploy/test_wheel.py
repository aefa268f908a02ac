"""The fleet from its wheel alone: built, installed into a clean virtual environment (no extras,
no system site-packages, no source tree on the path), and run from a directory outside the
repository: ``tierflow db upgrade`` on a fresh database, a router worker and a ``local_fast``
worker, and one job through ``tierflow submit``, with a config of fake providers.

It catches what only an installed package shows: a package or data file left out of the wheel
(migrations, the default config), a dependency that is imported but not declared, a module
found only because the repository is the working directory.

The wheel is built from a copy of the source tree (:mod:`tests.deploy.wheel_contents`: never in
the repository, whose ``build/`` could leak stale files into it) and its contents checked;
``TIERFLOW_TEST_WHEEL=path.whl`` installs a wheel built already (CI's packaging step builds
one). Dependencies come from pip's cache or the index. About 40 s with a warm pip cache.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.wheel_contents import build_wheel, check_wheel
from tests.faults.helpers import rows
from tests.support import services
from tests.support.services import fleet_config, write_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def run(cmd: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
    assert done.returncode == 0, f"{' '.join(map(str, cmd))}:\n{done.stdout}\n{done.stderr}"
    return done


class Process:
    def __init__(self, cmd: list[str], env: dict[str, str], cwd: Path, log: Path) -> None:
        self.log = log
        with log.open("wb") as handle:
            self.proc = subprocess.Popen(
                cmd, cwd=cwd, env=env, stdout=handle, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while " ready." not in self.output():
            assert self.proc.poll() is None, self.output()[-4000:]
            assert time.monotonic() < deadline, self.output()[-4000:]
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


@pytest.fixture
def work(services_ready: None) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="tierflow-wheel-"))
    assert services.REPO not in path.parents
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_the_wheel_alone_migrates_runs_workers_and_a_job(work: Path) -> None:
    timings: dict[str, float] = {}
    started = time.monotonic()
    given = os.environ.get("TIERFLOW_TEST_WHEEL")
    wheel = Path(given).resolve() if given else build_wheel(work / "dist")
    assert check_wheel(wheel) == []
    timings["build_s"] = time.monotonic() - started

    mark = time.monotonic()
    venv = work / "venv"
    run([sys.executable, "-m", "venv", str(venv)], 120)
    run([str(venv / "bin" / "pip"), "install", "-q", str(wheel)], 600)  # no extras
    timings["install_s"] = time.monotonic() - mark
    site = run(
        [
            str(venv / "bin" / "python"), "-c",
            "import celeryconfig, router, schemas, tierflow, workers\n"
            "from tierflow.core.db import MIGRATIONS_DIR\n"
            "for m in (celeryconfig, router, schemas, tierflow, workers): print(m.__file__)\n"
            "print(MIGRATIONS_DIR)\n"
            "print(len(list((MIGRATIONS_DIR / 'versions').glob('*.py'))))",
        ],
        60, cwd=work, env={"PATH": "/usr/bin:/bin", "HOME": str(work)},
    ).stdout.split()  # fmt: skip
    assert all(p.startswith(str(venv)) for p in site[:-1]), site
    assert int(site[-1]) == len(list((services.REPO / "tierflow/migrations/versions").glob("*.py")))

    run_id = uuid.uuid4().hex[:8]
    db_name = f"tierflow_wheel_{run_id}"
    db_url = services.create_database(db_name)
    prefix = f"tfwheel-{run_id}"
    env = {
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
        "HOME": str(work),
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "TIERFLOW_BROKER_URL": services.REDIS_URL,
        "TIERFLOW_DATABASE_URL": db_url,
        "TIERFLOW_KEY_PREFIX": prefix,
        "TIERFLOW_CONFIG": str(write_config(fleet_config(), work)),
        "TIERFLOW_STATE_DIR": str(work / "state"),
    }
    tierflow = str(venv / "bin" / "tierflow")
    workers: list[Process] = []
    try:
        mark = time.monotonic()
        run([tierflow, "db", "upgrade"], 120, cwd=work, env=env)
        (version,) = rows(db_url, "SELECT version_num FROM alembic_version")
        newest = max(
            p.name[:4] for p in (services.REPO / "tierflow/migrations/versions").glob("0*.py")
        )
        assert version["version_num"] == newest
        workers = [
            Process([tierflow, "worker", "--tier", tier], env, work, work / f"{tier}.log")
            for tier in ("router", "local_fast")
        ]
        for w in workers:
            w.wait_ready()
        submitted = run(
            [tierflow, "submit", "Extract topic from: 'shipped as a wheel'", "--action",
             "extract_topic", "--timeout", "60"],
            90, cwd=work, env=env,
        )  # fmt: skip
        timings["run_s"] = time.monotonic() - mark
        assert "succeeded" in submitted.stdout, submitted.stdout + submitted.stderr
        (job,) = rows(db_url, "SELECT status, tier, fake, text FROM jobs")
        assert job["status"] == "succeeded" and job["tier"] == "local_fast" and job["fake"]
        assert "[FAKE fake-fast]" in job["text"]
    finally:
        for w in workers:
            w.stop()
        services.drop_database(db_name)  # WITH (FORCE): this test's own connections go too
        services.delete_prefix(prefix)
    timings["total_s"] = time.monotonic() - started
    print("\n[wheel] " + " ".join(f"{k}={v:.1f}" for k, v in timings.items()))
    assert timings["total_s"] < 300, timings
