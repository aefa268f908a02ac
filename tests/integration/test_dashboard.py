"""The web dashboard in a real browser (headless Chromium driven by Selenium) against a fleet of
real Celery workers on real Redis and PostgreSQL, and its ``/metrics`` after known jobs.

Chromium and chromedriver come from Debian (``apt-get install chromium chromium-driver``);
without them these tests skip on a laptop and fail under ``CI=true``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from prometheus_client.parser import text_string_to_metric_families
from selenium.common.exceptions import StaleElementReferenceException
from sqlalchemy import func, select

from router import get_mode, mode_history, set_mode, submit_job
from schemas.tables import Attempt, Job
from tests.support import services
from tests.support.services import fake_model, fleet_config
from tierflow.app.embedded import free_port
from tierflow.app.queues import priority_lists, queue_depths
from tierflow.core.celery_app import app as celery_app
from tierflow.core.constants import LOCAL_TIERS, MAINTENANCE_QUEUE, TASK_SWEEP, Mode
from tierflow.core.db import session_scope
from tierflow.core.redis_client import get_keys, get_redis
from tierflow.store.activity import running_attempts

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TOKEN = "test-dashboard-token-0123456789"
WAIT_S = 30
HOUR = timedelta(hours=1)
CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
CHROME_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1800",
]


def http(method: str, url: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
    """One request; returns (status, parsed JSON or text)."""
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status, raw = response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read().decode()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw


class Dashboard:
    """``tierflow dashboard`` in its own process, with this process's environment."""

    def __init__(self, log: Path, token: str | None = TOKEN) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("TIERFLOW_DASHBOARD_TOKEN", None)
        if token:
            env["TIERFLOW_DASHBOARD_TOKEN"] = token
        self.log = log
        self._out = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tierflow.cli", "dashboard", "--port", str(self.port)],
            cwd=services.REPO, env=env, stdout=self._out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            try:
                if http("GET", self.url + "/api/status")[0] == 200:
                    return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dashboard did not start:\n{self.output()}")
            time.sleep(0.2)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._out.close()


def _browser_paths() -> tuple[str, str] | None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (chromium, driver) if chromium and driver else None


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    paths = _browser_paths()
    if paths is None:
        message = "chromium and chromedriver are not installed"
        if CI:
            pytest.fail(message + " (CI=true: the browser tests must run)")
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = paths[0]
    for flag in [*CHROME_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=paths[1]), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def auto_after(fleet: Callable[..., Any]) -> Iterator[Callable[..., Any]]:
    """The fleet factory; the mode is auto before the test and put back afterwards (the history
    outlives the test's Redis keys)."""
    if get_mode() is not Mode.AUTO:
        set_mode(Mode.AUTO, reason="test setup")
    yield fleet
    if get_mode() is not Mode.AUTO:
        set_mode(Mode.AUTO, reason="test teardown")


def _attempts(job_ids: list[str]) -> list[Attempt]:
    with session_scope() as session:
        return list(session.execute(select(Attempt).where(Attempt.job_id.in_(job_ids))).scalars())


def _sides_in_db() -> dict[str, dict[str, int]]:
    """Requests, tokens and errors per side, straight from the attempts table (last 24 h is
    everything this run made)."""
    with session_scope() as session:
        rows = session.execute(
            select(Attempt.tier, Attempt.status, Attempt.input_tokens, Attempt.output_tokens).where(
                Attempt.model.is_not(None)
            )
        ).all()
    sides = {s: {"requests": 0, "tokens": 0, "errors": 0} for s in ("local", "cloud")}
    for tier, status, tin, tout in rows:
        side = sides["local" if tier in {t.value for t in LOCAL_TIERS} else "cloud"]
        side["requests"] += 1
        side["tokens"] += tin + tout
        side["errors"] += status == "error"
    return sides


def _wait(what: str, check: Callable[[], Any], timeout: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.25)


def _samples(text: str) -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append(sample)
    return found


def test_dashboard_in_a_browser_and_its_metrics(
    auto_after: Callable[..., Any], browser: Any, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    metrics_dir = tmp_path / "prom"
    metrics_dir.mkdir()
    auto_after(
        fleet_config(
            local_fast=[fake_model("dash-fast", answer="bad_json")],
            local_quality=[fake_model("dash-quality", latency_ms=30)],
            action_tier_overrides={"extract_topic": "local_quality"},
        ),
        env={"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)},
        # No worker takes the maintenance queue: what is sent there stays, for the depth.
        queues="router,tier.local_fast,tier.local_quality,tier.api_fallback",
    )
    dashboard = Dashboard(tmp_path / "dashboard.log")
    printed = dashboard.output()
    assert f"http://127.0.0.1:{dashboard.port}/ (read-only without the token)" in printed
    assert TOKEN not in printed  # a token from the environment is never printed
    try:
        _run_browser_checks(dashboard, browser, tmp_path, By)
    finally:
        dashboard.stop()


def _run_browser_checks(dashboard: Dashboard, browser: Any, tmp_path: Path, By: Any) -> None:
    local_job = submit_job("Extract topic from: 'Fixed auth bug in login flow'", "extract_topic")
    fallback_job = submit_job("Is this a decision or a fact? 'We chose React'", "classify_memory")
    for handle in (local_job, fallback_job):
        result = handle.wait(WAIT_S)
        assert result.status == "succeeded", result.error
    assert [a.tier for a in sorted(_attempts([fallback_job.job_id]), key=lambda a: a.attempt_no)][
        :2
    ] == ["local_fast", "local_quality"]
    for priority in (0, 5, 9):  # three waiting messages over three priority lists
        celery_app.send_task(TASK_SWEEP, queue=MAINTENANCE_QUEUE, priority=priority)

    browser.get(dashboard.url + "/")
    mode = browser.find_element(By.ID, "mode")
    assert mode.get_attribute("data-mode") == "auto" and "Auto" in mode.text
    local_button = browser.find_element(By.CSS_SELECTOR, '.switch-btn[data-mode="local"]')
    assert local_button.is_enabled()  # the fake local models are available

    def table_figures() -> dict[str, dict[str, int]]:
        # The page redraws itself every 5 s: a read that meets a replaced row reads again.
        for _ in range(5):
            try:
                return read_table()
            except StaleElementReferenceException:
                time.sleep(0.2)
        return read_table()

    def read_table() -> dict[str, dict[str, int]]:
        figures = {}
        for side in ("local", "cloud"):
            row = browser.find_element(By.CSS_SELECTOR, f'#comparison tr[data-side="{side}"]')
            cell = {
                c: row.find_element(By.CLASS_NAME, c).text for c in ("requests", "tokens", "errors")
            }
            figures[side] = {k: int(v.replace(",", "")) for k, v in cell.items()}
        return figures

    assert table_figures() == _sides_in_db()
    assert table_figures()["local"]["requests"] >= 3
    _check_fairness_panel(browser, By)
    fallback = browser.find_element(
        By.CSS_SELECTOR, f'#fallbacks li[data-job="{fallback_job.job_id}"]'
    )
    assert "local_fast/dash-fast → local_quality" in fallback.text
    assert "quality gate" in fallback.text
    depth = browser.find_element(By.CSS_SELECTOR, '#queues tr[data-queue="maintenance"] .depth')
    assert depth.text == "3"

    # Read-only without the token: the click is refused and the fleet keeps its mode.
    browser.find_element(By.CSS_SELECTOR, '.switch-btn[data-mode="cloud"]').click()
    notice = _wait("the refusal", lambda: browser.find_element(By.ID, "notice").text)
    assert "refused (403)" in notice and "token" in notice
    assert get_mode() is Mode.AUTO

    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.CSS_SELECTOR, '.switch-btn[data-mode="cloud"]').click()
    _wait("the switch to cloud", lambda: get_mode() is Mode.CLOUD)
    newest = mode_history(1)[0]
    assert (newest.from_mode, newest.to_mode, newest.source) == ("auto", "cloud", "manual")

    def newest_manual_line() -> Any:
        # An earlier test's switches are in the history too: wait for this one on top (the
        # page redraws after the click, or at its next refresh).
        lines = browser.find_elements(By.CSS_SELECTOR, '#history li[data-source="manual"]')
        return lines[0] if lines and "auto → cloud" in lines[0].text else None

    first = _wait("the manual history line", newest_manual_line)
    assert "auto → cloud" in first.text and "Manual" in first.text
    assert browser.find_element(By.ID, "mode").get_attribute("data-mode") == "cloud"

    # A new job, and the page shows it without being reloaded (the refresh every 5 s).
    browser.execute_script("document.body.setAttribute('data-loaded-once', '1')")
    cloud_job = submit_job("Extract topic from: 'Added retries to the uploader'", "extract_topic")
    result = cloud_job.wait(WAIT_S)
    assert result.status == "succeeded" and result.tier == "api_fallback", result.error
    expected = _sides_in_db()
    _wait("the refresh", lambda: table_figures() == expected, timeout=12)
    assert browser.execute_script("return document.body.getAttribute('data-loaded-once')") == "1"
    shot = tmp_path / "dashboard.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    if os.environ.get("TIERFLOW_SCREENSHOT"):
        shutil.copy(shot, os.environ["TIERFLOW_SCREENSHOT"])

    _check_api(dashboard)
    _check_metrics(dashboard, [local_job.job_id, fallback_job.job_id, cloud_job.job_id])


def _check_fairness_panel(browser: Any, By: Any) -> None:
    """The fairness and overhead panel: a row per tier (the router's too), each counting the
    waits of the finished jobs' attempts the database holds for the last hour; no tier is
    contended here (no cap), and the page says so."""
    with session_scope() as session:
        stored = dict(
            session.execute(
                select(Attempt.tier, func.count())
                .join(Job, Job.id == Attempt.job_id)
                .where(Job.finished_at.is_not(None), Job.created_at >= func.now() - HOUR)
                .group_by(Attempt.tier)
            ).all()
        )
    expected = {t: str(stored.get(t, 0)) for t in ("local_fast", "local_quality", "api_fallback")}

    def counted() -> dict[str, str] | None:
        try:
            rows = browser.find_elements(By.CSS_SELECTOR, "#tier-times tr[data-tier]")
            waits = {
                r.get_attribute("data-tier"): r.find_element(By.CLASS_NAME, "wait-n").text
                for r in rows
            }
        except StaleElementReferenceException:  # the page redrew itself meanwhile
            return None
        # The window's statements are cached a few seconds (the dashboard read them at its
        # start): this test's jobs show by a later refresh.
        return waits if waits == {**expected, "router": "0"} else None

    _wait("the jobs in the panel", counted, timeout=25)
    assert int(expected["local_quality"]) >= 2  # this test's two jobs ended there
    assert "no contended tier" in browser.find_element(By.ID, "shares").text


def _check_api(dashboard: Dashboard) -> None:
    status, body = http("GET", dashboard.url + "/api/status")
    assert status == 200
    assert set(body) == {"state", "primaryMetric", "secondaryMetric", "lastActivity", "message"}
    # active while any attempt runs under a live lease (an earlier test's, too): as the DB says
    running = sum(running_attempts().values())
    assert body["primaryMetric"] == "☁ Cloud" and body["state"] == ("active" if running else "idle")
    assert body["secondaryMetric"].endswith(" tokens") and body["lastActivity"]
    status, overview = http("GET", dashboard.url + "/api/overview")
    assert status == 200 and overview["mode"] == "cloud" and overview["queues"]["maintenance"] == 3
    assert overview["costs"]["jobs"] >= 3 and overview["costs"]["api_baseline_cost"] > 0

    url = dashboard.url + "/api/mode"
    status, body = http("POST", url, {"mode": "auto"})
    assert (status, body["field"]) == (403, "token") and "read-only" in body["error"]
    status, body = http("POST", url, {"mode": "auto"}, token=TOKEN + "x")
    assert (status, body["field"]) == (403, "token")
    status, body = http("POST", url, {"mode": "hybrid"}, token=TOKEN)
    assert (status, body["field"]) == (400, "mode") and "auto, local, cloud" in body["error"]
    status, body = http("POST", url, b"not json", token=TOKEN)
    assert (status, body["field"]) == (400, "body")
    status, body = http("POST", url, {"mode": "cloud", "reason": 5}, token=TOKEN)
    assert (status, body["field"]) == (400, "reason")
    assert get_mode() is Mode.CLOUD and mode_history(1)[0].source == "manual"
    # Another Host header (DNS rebinding) is refused.
    request = urllib.request.Request(dashboard.url + "/api/status", headers={"Host": "evil.test"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 400


def _check_metrics(dashboard: Dashboard, job_ids: list[str]) -> None:
    status, text = http("GET", dashboard.url + "/metrics")
    assert status == 200
    samples = _samples(text)
    attempts = _attempts(job_ids)

    counted = Counter(
        {
            (s.labels["tier"], s.labels["model"], s.labels["outcome"]): int(s.value)
            for s in samples["tierflow_attempts_total"]
        }
    )
    stored = Counter((a.tier, a.model or "", a.status) for a in attempts)
    assert +counted == stored
    tokens = {s.labels["direction"]: s.value for s in samples["tierflow_tokens_total"]}
    assert tokens["input"] == sum(a.input_tokens for a in attempts)
    assert tokens["output"] == sum(a.output_tokens for a in attempts)
    assert samples["tierflow_cost_usd_total"][0].value == pytest.approx(
        sum(float(a.cost_usd) for a in attempts)
    )
    assert samples["tierflow_fallbacks_total"][0].value == 1
    rejections = {
        (s.labels["action"], s.labels["reason"]): s.value
        for s in samples["tierflow_gate_rejections_total"]
    }
    assert sum(rejections.values()) == sum(a.status == "rejected" for a in attempts) == 1
    assert next(iter(rejections))[0] == "classify_memory"
    called = [a for a in attempts if a.latency_ms is not None and a.model]
    duration_count = sum(s.value for s in samples["tierflow_attempt_duration_seconds_count"])
    assert duration_count == len(called)
    depth = {s.labels["queue"]: s.value for s in samples["tierflow_queue_depth"]}
    assert depth["maintenance"] == 3 and depth["router"] == 0
    modes = {s.labels["mode"]: s.value for s in samples["tierflow_mode"]}
    assert modes == {"auto": 0, "local": 0, "cloud": 1}
    circuits = {s.labels["model"]: s.value for s in samples["tierflow_circuit_open"]}
    assert circuits == {"dash-fast": 0, "dash-quality": 0, "fake-api": 0}
    assert "tierflow_running_attempts" in samples and "tierflow_mode_automatic" in samples


def test_queue_depth_reads_every_priority_list_of_real_messages(database: str) -> None:
    """kombu's own key names for messages sent at each tierflow priority, against the rule in
    tierflow.app.queues (no worker runs, so the messages wait)."""
    redis, prefix = get_redis(), get_keys().prefix
    queue = MAINTENANCE_QUEUE
    try:
        for priority in range(10):
            celery_app.send_task(TASK_SWEEP, queue=queue, priority=priority)
        present = {k for k in redis.scan_iter(f"{prefix}:q:{queue}*") if redis.type(k) == "list"}
        assert present and present <= set(priority_lists(queue))
        assert f"{prefix}:q:{queue}" in present  # kombu's priority 0: tierflow's 9
        assert f"{prefix}:q:{queue}:4" in present  # tierflow's default priority 5
        assert queue_depths([queue]) == {queue: 10}
        assert sum(int(cast(int, redis.llen(k))) for k in present) == 10
    finally:
        services.delete_prefix(prefix, "q:*")
