"""Automatic mode through beat on a real worker: auto → cloud when no local model answers for
``routing.auto_cloud_after_s``, back to auto when one does, each switch recorded as ``auto``;
a person's cloud is never switched back. And ``tierflow status --watch`` until Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Self

import pytest

from router import get_mode, mode_history, set_mode, submit_job
from tests.support import fake_providers
from tests.support.fake_providers import OpenAIServer
from tests.support.services import REPO, fake_model, fleet_config
from tierflow.app.embedded import free_port
from tierflow.app.overview import build_overview, status_fields
from tierflow.core.constants import Mode
from workers.automode import automatic_cloud, check_once

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BEAT = ["-B", "--scheduler", "celery.beat:Scheduler"]


class OpenAIServerOn(OpenAIServer):
    """The fake OpenAI-compatible server on a port chosen in advance (the one a model's
    ``base_url`` already names, so it can come up after the fleet)."""

    def __init__(self, port: int) -> None:
        super().__init__()
        self.fixed_port = port

    def start(self) -> Self:
        self._httpd = fake_providers._HTTPServer(
            ("127.0.0.1", self.fixed_port), fake_providers._Handler
        )
        self._httpd.fake = self
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )
        self._thread.start()
        return self


@pytest.fixture
def auto_fleet(fleet: Callable[..., Any]) -> Iterator[Callable[..., Any]]:
    if get_mode() is not Mode.AUTO:
        set_mode(Mode.AUTO, reason="test setup")
    yield fleet
    if get_mode() is not Mode.AUTO:
        set_mode(Mode.AUTO, reason="test teardown")


def _wait(what: str, check: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
    return found


def test_auto_goes_to_cloud_without_local_models_and_back(auto_fleet: Callable[..., Any]) -> None:
    port = free_port()  # nothing listens here yet: the local model's server is down
    local = {
        "name": "auto-local",
        "provider": "vllm",
        "model_id": "fake-model",
        "base_url": f"http://127.0.0.1:{port}/v1",
        "timeout_s": 2.0,
        "max_tokens": 64,
    }
    auto_fleet(
        fleet_config(
            local_fast=[local],
            local_quality=[fake_model("auto-quality", unavailable=True)],
            auto_cloud_after_s=2,
        ),
        extra_args=BEAT,
    )
    _wait("the automatic switch to cloud", lambda: get_mode() is Mode.CLOUD, timeout=30)
    switch = mode_history(1)[0]
    assert (switch.from_mode, switch.to_mode, switch.source) == ("auto", "cloud", "auto")
    assert switch.reason and "no local model available for" in switch.reason
    assert "auto-local" in switch.reason and "auto-quality" in switch.reason
    assert automatic_cloud() == switch

    # Seen as automatic by the dashboard's data and by `tierflow status`.
    overview = build_overview()
    assert overview["automatic"]["since"] == switch.at.isoformat()
    assert status_fields(overview)["message"].startswith("automatic cloud since")
    assert status_fields(overview)["primaryMetric"] == "☁ Cloud (automatic)"
    shown = subprocess.run(
        [sys.executable, "-m", "tierflow.cli", "status"],
        cwd=REPO, env=os.environ, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert "cloud" in shown.stdout and "automatic since" in shown.stdout

    # The fleet really is in cloud: a new job goes straight to the API tier.
    result = submit_job("Extract topic from: 'Local GPUs down'", "extract_topic").wait(30)
    assert result.status == "succeeded" and result.tier == "api_fallback", result.error

    with OpenAIServerOn(port):  # the local server comes up
        _wait("the switch back to auto", lambda: get_mode() is Mode.AUTO, timeout=30)
        back = mode_history(1)[0]
        assert (back.from_mode, back.to_mode, back.source) == ("cloud", "auto", "auto")
        assert back.reason == "local model auto-local available again"
        assert automatic_cloud() is None

        # A person's cloud stays cloud, whatever the local models do.
        set_mode("cloud", reason="maintenance")
        assert check_once() == "mode cloud: nothing automatic to do"
        time.sleep(6)  # at least one more beat tick
        assert get_mode() is Mode.CLOUD and mode_history(1)[0].source == "manual"


def test_status_watch_redraws_until_ctrl_c(config_file: Callable[..., Any], database: str) -> None:
    config_file(fleet_config())
    env = {**os.environ, "TTY_COMPATIBLE": "1", "COLUMNS": "120", "LINES": "40"}
    env["PYTHONUNBUFFERED"] = "1"
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"watch-{os.getpid()}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tierflow.cli", "status", "--watch"],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            _wait("two redraws", lambda: log.read_text(errors="replace").count("updated ") >= 2, 30)
        finally:
            os.killpg(proc.pid, signal.SIGINT)
            code = proc.wait(15)
    text = log.read_text(errors="replace")
    log.unlink()
    assert code == 0, text[-2000:]
    assert "Traceback" not in text and "Mode" in text and "Ctrl-C stops" in text
    assert "\x1b[" in text  # redrawn in place (cursor movement), not printed twice
