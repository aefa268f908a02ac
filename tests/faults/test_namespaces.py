"""Workers on hosts of their own: each victim runs in a network namespace (``ip netns`` + a veth
pair, addresses 10.231.N.0/30 inside this test's own namespaces only) and reaches Redis and
PostgreSQL across its link, through a relay this test runs on the host side. The faults are a
host's: its processes killed, its worker frozen (SIGSTOP), its link cut mid-call (the host side
of the veth down: no RST, its connections hang) and brought back. A survivor in the root
namespace and the sweeper (run here every half second, as beat does every 5 s) must end every
job once, charged once, within 30 s of the fault (lease 3 s here).

Needs root and ``ip netns``: skipped where namespaces are not permitted; under ``CI=true`` a
host that permits them must run them (a failure to set one up then fails).
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from router import submit_job
from schemas.jobs import utcnow
from tests.faults.helpers import audit, rows, wait_finished
from tests.support import services
from tests.support.services import REPO, fake_model, fleet_config
from workers.sweeper import sweep

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ENV = {
    "TIERFLOW_TASK_SOFT_TIME_LIMIT": "20",
    "TIERFLOW_TASK_TIME_LIMIT": "30",
    "TIERFLOW_VISIBILITY_TIMEOUT": "120",  # out of reach: only the lease and sweep can rescue
    "TIERFLOW_LEASE_S": "3",
}


def _permitted() -> bool:
    if os.geteuid() != 0:
        return False
    name = f"tfprobe{uuid.uuid4().hex[:6]}"
    ok = subprocess.run(["ip", "netns", "add", name], capture_output=True).returncode == 0
    if ok:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return ok


PERMITTED = _permitted()
if not PERMITTED:
    pytestmark.append(pytest.mark.skip(reason="network namespaces not permitted here"))


class Relay:
    """Forward ``listen`` (host, port) to ``target`` byte for byte, one thread for all."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]) -> None:
        self.server = socket.create_server(listen)
        self.server.setblocking(False)
        self.target = target
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.server, selectors.EVENT_READ, None)
        self.stopped = False
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self.stopped:
            for key, _ in self.sel.select(0.2):
                if key.data is None:
                    client, _ = self.server.accept()
                    upstream = socket.create_connection(self.target)
                    for a, b in ((client, upstream), (upstream, client)):
                        a.setblocking(False)
                        self.sel.register(a, selectors.EVENT_READ, b)
                    continue
                src, dst = key.fileobj, key.data
                try:
                    data = src.recv(65536)  # type: ignore[union-attr]
                    if data:
                        dst.setblocking(True)
                        dst.sendall(data)
                        dst.setblocking(False)
                        continue
                except OSError:
                    pass
                for s in (src, dst):
                    with contextlib.suppress(KeyError, ValueError):
                        self.sel.unregister(s)
                    s.close()  # type: ignore[union-attr]

    def close(self) -> None:
        self.stopped = True
        self.server.close()


class Host:
    """A namespace joined to the root one by a veth pair, with relays to Redis and PostgreSQL."""

    def __init__(self, n: int) -> None:
        self.ns, self.veth = f"tf{os.getpid() % 10000}h{n}", f"tf{os.getpid() % 10000}v{n}"
        self.outer, self.inner = f"10.231.{n}.1", f"10.231.{n}.2"
        for cmd in (
            f"ip netns add {self.ns}",
            f"ip link add {self.veth} type veth peer name {self.veth}p",
            f"ip link set {self.veth}p netns {self.ns}",
            f"ip addr add {self.outer}/30 dev {self.veth}",
            f"ip link set {self.veth} up",
            f"ip netns exec {self.ns} ip addr add {self.inner}/30 dev {self.veth}p",
            f"ip netns exec {self.ns} ip link set {self.veth}p up",
            f"ip netns exec {self.ns} ip link set lo up",
        ):
            subprocess.run(cmd.split(), check=True, capture_output=True)
        self.relays = [
            Relay((self.outer, 16379), ("127.0.0.1", 6379)),
            Relay((self.outer, 15432), (services.PG_HOST, services.PG_PORT)),
        ]

    def link(self, up: bool) -> None:
        state = "up" if up else "down"
        subprocess.run(["ip", "link", "set", self.veth, state], check=True)

    def worker(self, name: str) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        env["TIERFLOW_BROKER_URL"] = f"redis://{self.outer}:16379/0"
        db = env["TIERFLOW_DATABASE_URL"].rsplit("/", 1)[-1]
        env["TIERFLOW_DATABASE_URL"] = f"postgresql://postgres@{self.outer}:15432/{db}"
        self.log = Path(tempfile.mkdtemp(prefix="tierflow-ns-")) / f"{name}.log"
        cmd = ["ip", "netns", "exec", self.ns, sys.executable, "-m", "celery", "-A",
               "workers.app", "worker", "-Q", "tier.local_fast", "-P", "threads", "-c", "3",
               "-n", f"{name}@%h", "--without-gossip", "--without-mingle",
               "-l", "INFO"]  # fmt: skip
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=self.log.open("wb"),
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + 60
        while " ready." not in self.log.read_text(errors="replace"):
            assert proc.poll() is None and time.monotonic() < deadline, self.log.read_text()[-3000:]
            time.sleep(0.1)
        return proc

    def close(self) -> None:
        for relay in self.relays:
            relay.close()
        subprocess.run(["ip", "link", "del", self.veth], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)


@pytest.fixture
def host(fleet: Any) -> Iterator[Host]:
    made = Host(int(uuid.uuid4().int % 200) + 20)
    try:
        yield made
    finally:
        made.close()


def _held(database: str, name: str) -> list[str]:
    found = rows(
        database,
        "SELECT job_id FROM attempts WHERE status = 'running' AND worker LIKE :w",
        w=f"{name}@%",
    )
    return [r["job_id"] for r in found]


def _fault_run(fleet: Any, database: str, host: Host, fault: str) -> None:
    config = fleet_config(
        local_fast=[fake_model("fake-fast", latency_ms=2000, input_cost_per_million=1.0,
                               output_cost_per_million=2.0)]
    )  # fmt: skip
    fleet(config, env=ENV, queues="router,tier.local_fast", concurrency=3)
    name = f"ns{uuid.uuid4().hex[:6]}"
    victim = host.worker(name)
    jobs = [submit_job(f"Extract topic from: '{fault} {i}'", "extract_topic").job_id
            for i in range(8)]  # fmt: skip
    deadline = time.monotonic() + 30
    while len(_held(database, name)) < 2:
        assert time.monotonic() < deadline, host.log.read_text()[-3000:]
        time.sleep(0.05)
    held = _held(database, name)
    if fault == "kill":
        os.killpg(victim.pid, signal.SIGKILL)
    elif fault == "freeze":
        os.killpg(victim.pid, signal.SIGSTOP)
    else:
        host.link(False)
    struck = time.monotonic()
    try:
        while time.monotonic() - struck < 40:
            sweep(utcnow(), timedelta(seconds=120))
            if all(s == "succeeded" for s in wait_finished(database, held, 0).values()):
                break
            time.sleep(0.5)
        recovered_s = time.monotonic() - struck
    finally:
        if fault == "freeze":
            os.killpg(victim.pid, signal.SIGCONT)
        elif fault == "partition":
            host.link(True)
    fig = audit(database, f"namespace {fault}", jobs, timeout=60)
    time.sleep(3)  # a thawed or reconnected victim's late writes land (fenced) before we read
    fig = audit(database, f"namespace {fault}", jobs, timeout=5)
    fig.faults = {fault: 1, "held": len(held)}
    fig.notes = {"recovered_s": round(recovered_s, 1)}
    try:
        fig.report().assert_clean()
        assert fig.succeeded == len(jobs)
        assert recovered_s < 30, recovered_s
    finally:
        if victim.poll() is None:
            os.killpg(victim.pid, signal.SIGKILL)
        victim.wait(10)


@pytest.mark.parametrize("fault", ["kill", "freeze", "partition"])
def test_a_lost_host_costs_its_jobs_a_lease(fleet, database: str, host: Host, fault: str) -> None:
    _fault_run(fleet, database, host, fault)
