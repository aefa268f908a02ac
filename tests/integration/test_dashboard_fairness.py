"""The dashboard's fairness and overhead panel (tierflow/app/fairness.py, store/overhead.py).

The fast test writes jobs and attempts with chosen times on a real PostgreSQL and checks the
panel's statements against each job's own :class:`JobResult` (tierflow/store/timing.py). The
fleet test runs two daemons' jobs through real workers on fake backends, makes a stuck job, and
reads the panel from a ``tierflow dashboard`` process: ``/api/overview``, the page and
``/metrics``, each against the stored rows.
"""

from __future__ import annotations

import math
import os
import re
import time
import uuid
from datetime import UTC, datetime, timedelta
from html import unescape
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text, update

from router import submit_job
from router.dispatch import fair_share
from router.fairshare import BATCH_LINE, DEFAULT_DAEMON
from schemas.jobs import JobRequest
from schemas.tables import Attempt, Job
from tests.integration.test_dashboard import Dashboard, _samples, http
from tests.support import services
from tests.support.services import fake_model, fleet_config
from tierflow import store
from tierflow.app.fairness import CACHE_S, fairness, forget_cache
from tierflow.core.constants import BATCH_PRIORITY, STALE_AFTER_S, Tier, tier_queue
from tierflow.core.db import session_scope
from tierflow.core.settings import get_settings
from tierflow.store.activity import stuck_jobs
from tierflow.store.overhead import daemon_attempts, recent_times

pytestmark = pytest.mark.integration

HOUR_S = 3600.0


def percentile(values: list[float], q: float) -> float:
    """PostgreSQL's ``percentile_cont``: linear between the closest ranks."""
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _job(
    created_ago_s: float,
    took_s: float | None,
    tier: str | None,
    metadata: dict[str, Any] | None = None,
    priority: int = 5,
) -> str:
    """A stored job submitted ``created_ago_s`` seconds ago (PostgreSQL's clock), finished
    ``took_s`` seconds later (None: open), ended on ``tier``."""
    request = JobRequest(
        prompt=f"p {uuid.uuid4().hex}", action_type="a", metadata=metadata or {}, priority=priority
    )
    job_id, _ = store.create_job(request, 3600)
    with session_scope() as session:
        now = session.execute(select(text("now()"))).scalar_one()
        created = now - timedelta(seconds=created_ago_s)
        finished = None if took_s is None else created + timedelta(seconds=took_s)
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(
                created_at=created,
                finished_at=finished,
                tier=tier,
                status="running" if finished is None else "succeeded",
            )
        )
    return job_id


def _attempt(
    job_id: str, no: int, tier: str, start_s: float, end_s: float | None, model_ms: float | None
) -> None:
    """Attempt ``no`` of the job on ``tier``, claimed ``start_s`` and ended ``end_s`` seconds
    after the job's insert."""
    with session_scope() as session:
        created = session.get(Job, job_id).created_at  # type: ignore[union-attr]
        session.add(
            Attempt(
                job_id=job_id, attempt_no=no, step=no - 1, tier=tier, status="succeeded",
                model="m", started_at=created + timedelta(seconds=start_s),
                finished_at=None if end_s is None else created + timedelta(seconds=end_s),
                latency_ms=model_ms,
            )
        )  # fmt: skip


def test_window_statements_agree_with_each_jobs_result(database: str) -> None:
    tag = uuid.uuid4().hex[:6]
    fast, slow = f"t-{tag}-fast", f"t-{tag}-slow"  # tiers of this test alone
    jobs = []
    for i in range(7):  # one attempt each, waits 0.1 .. 0.7 s, calls of 200 ms
        job = _job(600, 1.0 + i, fast, {"daemon": f"a-{tag}"})
        _attempt(job, 1, fast, 0.1 * (i + 1), 0.1 * (i + 1) + 0.3, 200.0)
        jobs.append(job)
    # A retry after a fallback: the second attempt waited from the first's end; an attempt
    # that never ended (its holder died) is waited from its claim; a claim a skewed host
    # stamped before the insert waits 0; a missing call time counts as no model time.
    job = _job(500, 5.0, slow, {"daemon": f"b-{tag}"})
    _attempt(job, 1, fast, -0.05, 1.0, None)
    _attempt(job, 2, slow, 1.5, None, 900.0)
    _attempt(job, 3, slow, 2.75, 4.5, 1200.0)
    jobs.append(job)
    batch = _job(400, 2.0, slow, {"daemon": f"b-{tag}"}, priority=BATCH_PRIORITY)
    _attempt(batch, 1, slow, 0.5, 1.5, 800.0)
    jobs.append(batch)
    odd = _job(300, 1.0, fast, {"daemon": 7})  # not a daemon name: the no-daemon line
    _attempt(odd, 1, fast, 0.2, 0.9, 500.0)
    jobs.append(odd)
    still_open = _job(300, None, None, {"daemon": f"a-{tag}"})
    _attempt(still_open, 1, fast, 0.1, None, None)
    _attempt(_job(2 * HOUR_S, 1.0, fast), 1, fast, 0.2, 0.9, 500.0)  # before the window

    results = [store.job_result(j) for j in jobs]
    times = recent_times(HOUR_S)
    for tier in (fast, slow):
        waits = [a.queue_ms for r in results for a in r.attempts if a.tier == tier]  # type: ignore[union-attr]
        overheads = [r.overhead_ms for r in results if r.tier == tier]  # type: ignore[union-attr]
        wait, over = times[tier]["queue_wait"], times[tier]["overhead"]
        assert wait.n == len(waits) and over.n == len(overheads)
        assert wait.p50_ms == pytest.approx(percentile(waits, 0.5), abs=0.01)  # type: ignore[arg-type]
        assert wait.p95_ms == pytest.approx(percentile(waits, 0.95), abs=0.01)  # type: ignore[arg-type]
        assert over.p50_ms == pytest.approx(percentile(overheads, 0.5), abs=0.01)  # type: ignore[arg-type]
        assert over.p95_ms == pytest.approx(percentile(overheads, 0.95), abs=0.01)  # type: ignore[arg-type]
    retried = results[7]
    assert retried is not None and [a.queue_ms for a in retried.attempts] == pytest.approx(
        [0.0, 500.0, 1250.0], abs=0.01
    )
    assert times[fast]["queue_wait"].n == 9 and times[slow]["overhead"].n == 2

    shares = daemon_attempts(
        HOUR_S, batch_priority=BATCH_PRIORITY, batch_line=BATCH_LINE, default_daemon=DEFAULT_DAEMON
    )
    counted = {t: {d: (s.attempts, s.finished) for d, s in shares[t].items()} for t in (fast, slow)}
    assert counted == {
        # the open job's attempt is counted, not ended; a number is no daemon's name
        fast: {f"a-{tag}": (8, 7), f"b-{tag}": (1, 1), DEFAULT_DAEMON: (1, 1)},
        slow: {f"b-{tag}": (2, 1), BATCH_LINE: (1, 1)},  # a batch line waits in its own line
    }
    with pytest.raises(ValueError, match="window_s"):
        recent_times(0)
    _end(still_open)  # no later test's sweep may take it up (its tier is no real tier)


QUEUES = "router,tier.local_fast,tier.local_quality,tier.api_fallback"  # no sweep: stuck stays


def _send(daemon: str, n: int) -> list[Any]:
    return [
        submit_job(
            f"Extract topic from: 'note {uuid.uuid4().hex[:8]} about the login flow'",
            "extract_topic",
            metadata={"daemon": daemon},
            cache=False,
        )
        for _ in range(n)
    ]


def _watch_while_running(dashboard: Dashboard, handles: list[Any], caps: dict[str, int]) -> int:
    """Read the overview until every job ends; each read, no daemon above its cap and the tier
    at most full. Returns how many reads saw a daemon waiting in its line."""
    waiting_seen = 0
    deadline = time.monotonic() + 90
    while not all(store.job_status(h.job_id) in {"succeeded", "failed"} for h in handles):
        assert time.monotonic() < deadline, "the jobs did not finish"
        status, overview = http("GET", dashboard.url + "/api/overview")
        assert status == 200, overview
        (tier,) = [s for s in overview["fairness"]["shares"] if s["tier"] == "local_fast"]
        rows = {d["daemon"]: d for d in tier["daemons"]}
        for daemon, cap in caps.items():
            assert rows[daemon]["running"] <= cap
        assert sum(d["running"] for d in rows.values()) <= tier["capacity"]
        waiting_seen += any(rows[d]["waiting"] for d in caps)
    return waiting_seen


def _expected_times() -> dict[str, dict[str, list[float]]]:
    """Per tier, the waits and overheads of the finished jobs submitted in the last hour, from
    each job's JobResult (every test's jobs in this run's database)."""
    with session_scope() as session:
        ids = session.execute(
            text(
                "SELECT id FROM jobs WHERE finished_at IS NOT NULL"
                " AND created_at >= now() - interval '1 hour'"
            )
        ).scalars()
        results = [store.job_result(i) for i in ids]
    found: dict[str, dict[str, list[float]]] = {}
    for r in results:
        assert r is not None and r.overhead_ms is not None
        tier = r.tier or (r.attempts[-1].tier if r.attempts else "none")
        found.setdefault(tier, {"queue_wait": [], "overhead": []})["overhead"].append(r.overhead_ms)
        for a in r.attempts:
            assert a.queue_ms is not None
            found.setdefault(a.tier, {"queue_wait": [], "overhead": []})["queue_wait"].append(
                a.queue_ms
            )
    return found


def _fresh_overview(dashboard: Dashboard, attempts: int) -> dict[str, Any]:
    """The overview once its cached window reads count ``attempts`` on local_fast."""
    deadline = time.monotonic() + CACHE_S + 15
    while True:
        status, overview = http("GET", dashboard.url + "/api/overview")
        assert status == 200, overview
        (tier,) = [s for s in overview["fairness"]["shares"] if s["tier"] == "local_fast"]
        if sum(d["attempts"] for d in tier["daemons"]) == attempts:
            return overview
        assert time.monotonic() < deadline, "the panel's window reads never caught up"
        time.sleep(0.5)


def _local_fast_attempts() -> dict[str, int]:
    with session_scope() as session:
        rows = session.execute(
            text(
                "SELECT coalesce(j.metadata ->> 'daemon', '-'), count(*) FROM attempts a"
                " JOIN jobs j ON j.id = a.job_id WHERE a.tier = 'local_fast'"
                " AND j.created_at >= now() - interval '1 hour' GROUP BY 1"
            )
        ).all()
    return {str(d): int(n) for d, n in rows}


def _stuck_job() -> str:
    """A job routed to local_fast long ago that nothing moved since (as test_stuck_jobs)."""
    plan = ("simple", {"chain": ["local_fast", "api_fallback"], "tier": "local_fast"})
    job_id, _ = store.create_job(JobRequest(prompt="stuck", action_type="a"), 3600, plan=plan)
    with session_scope() as session:
        session.execute(
            text("UPDATE jobs SET updated_at = now() - interval '10 minutes' WHERE id = :id"),
            {"id": job_id},
        )
    return job_id


def _end(job_id: str) -> None:
    with session_scope() as session:
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(status="failed", finished_at=datetime.now(UTC), error="test cleanup")
        )


@pytest.mark.slow
def test_panel_shows_each_tiers_times_each_daemons_share_and_a_stuck_job(
    fleet: Any, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:6]
    heavy, light = f"heavy-{tag}", f"light-{tag}"
    config = fleet_config(
        local_fast=[fake_model("fair-fast", latency_ms=400, limits={"max_concurrency": 2})]
    )
    config["daemons"] = {heavy: {"weight": 3}, light: {"weight": 1, "max_in_flight": 1}}
    fleet(config, workers=2, concurrency=2, queues=QUEUES)
    dashboard = Dashboard(tmp_path / "dashboard.log")
    stuck_id = None
    try:
        handles = _send(heavy, 8) + _send(light, 4)
        assert _watch_while_running(dashboard, handles, {light: 1}) >= 1
        for h in handles:
            assert h.wait(30).status == "succeeded"
        before = stuck_jobs(STALE_AFTER_S)
        stuck_id = _stuck_job()
        counted = _local_fast_attempts()
        overview = _fresh_overview(dashboard, sum(counted.values()))
        _check_times(overview, _expected_times())
        _check_shares(overview, counted, heavy, light)
        assert stuck_jobs(STALE_AFTER_S)["local_fast"] >= before["local_fast"] + 1 >= 1
        _check_page_and_metrics(dashboard, overview, heavy, light)
    finally:
        dashboard.stop()
        if stuck_id is not None:
            _end(stuck_id)


def _check_times(overview: dict[str, Any], expected: dict[str, dict[str, list[float]]]) -> None:
    panel = overview["fairness"]
    assert panel["window_s"] == HOUR_S and "last hour" in panel["window"]
    rows = {t["tier"]: t for t in panel["tiers"]}
    assert expected["local_fast"]["queue_wait"] and expected["local_fast"]["overhead"]
    for tier, row in rows.items():
        for measure in ("queue_wait", "overhead"):
            values = expected.get(tier, {}).get(measure, [])
            shown = row[measure]
            assert shown["n"] == len(values), (tier, measure)
            if values:
                assert shown["p50_ms"] == pytest.approx(percentile(values, 0.5), abs=0.01)
                assert shown["p95_ms"] == pytest.approx(percentile(values, 0.95), abs=0.01)
    # 12 jobs of 400 ms calls through 2 slots: some waited whole calls for a slot
    assert rows["local_fast"]["queue_wait"]["p95_ms"] >= 400
    # The tier's running and waiting are the whole fleet's (a slow suite's earlier tests may
    # leave open attempts behind: this test's own daemons hold nothing, see _check_shares): the
    # counts the overview read once for the whole page, plus the daemons' lines.
    fast = rows["local_fast"]
    assert fast["running"] == overview["running"].get(Tier.LOCAL_FAST.value, 0)
    assert fast["waiting"] >= overview["queues"].get(tier_queue(Tier.LOCAL_FAST), 0)


def _check_shares(
    overview: dict[str, Any], counted: dict[str, int], heavy: str, light: str
) -> None:
    (tier,) = [s for s in overview["fairness"]["shares"] if s["tier"] == "local_fast"]
    assert tier["capacity"] == 2
    rows = {d["daemon"]: d for d in tier["daemons"]}
    total = sum(counted.values())
    for daemon in (heavy, light):
        row = rows[daemon]
        assert row["attempts"] == counted[daemon] >= (8 if daemon == heavy else 4)
        assert row["finished"] == row["attempts"]
        assert row["share"] == pytest.approx(counted[daemon] / total)
        assert row["running"] == 0 and row["waiting"] == 0
    assert (rows[heavy]["weight"], rows[heavy]["max_in_flight"]) == (3, None)
    assert (rows[light]["weight"], rows[light]["max_in_flight"]) == (1, 1)
    assert rows[heavy]["weight_share"] == pytest.approx(3 * rows[light]["weight_share"])
    active = [d for d in rows.values() if d["weight_share"] is not None]
    assert sum(d["weight_share"] for d in active) == pytest.approx(1)


def _cells(html: str, row_start: str) -> dict[str, str]:
    """The cells of the first row starting with ``row_start``: class -> text (or data-ms)."""
    match = re.search(re.escape(row_start) + r"(.*?)</tr>", html, re.S)
    assert match, row_start
    cells: dict[str, list[str]] = {}
    for cls, ms, body in re.findall(
        r'<td class="([\w\- ]+)"(?: data-ms="([\d.]*)")?>(.*?)</td>', match.group(1), re.S
    ):
        cells.setdefault(cls.split()[0], []).append(ms if cls == "ms" else unescape(body))
    return {k: v[0] if len(v) == 1 else "|".join(v) for k, v in cells.items()}


def _check_page_and_metrics(
    dashboard: Dashboard, overview: dict[str, Any], heavy: str, light: str
) -> None:
    # The stuck count is the whole fleet's: a long suite's earlier jobs age past the threshold
    # while this runs, so the page and the gauge must lie between reads taken around them.
    low = stuck_jobs(STALE_AFTER_S)["local_fast"]
    status, page = http("GET", dashboard.url + "/")
    assert status == 200 and 'id="tier-times"' in page and "jobs submitted in the last hour" in page
    (row,) = [t for t in overview["fairness"]["tiers"] if t["tier"] == "local_fast"]
    cells = _cells(page, '<tr data-tier="local_fast"><td>local_fast</td>')
    shown = [float(v) for v in cells["ms"].split("|")]
    wait, over = row["queue_wait"], row["overhead"]
    expected = [wait["p50_ms"], wait["p95_ms"], over["p50_ms"], over["p95_ms"]]
    assert shown == pytest.approx(expected, abs=0.001)  # the page writes milliseconds to 3 places
    assert int(cells["wait-n"]) == wait["n"] and int(cells["overhead-n"]) == over["n"]
    page_stuck = int(cells["stuck"])
    for daemon, weight, cap in ((heavy, "3", "-"), (light, "1", "1")):
        cells = _cells(page, f'<tr data-tier="local_fast" data-daemon="{daemon}">')
        (d,) = [
            d
            for s in overview["fairness"]["shares"]
            if s["tier"] == "local_fast"
            for d in s["daemons"]
            if d["daemon"] == daemon
        ]
        assert (cells["weight"], cells["max-in-flight"]) == (weight, cap)
        assert int(cells["attempts"]) == d["attempts"]
        assert cells["share"] == f"{d['share']:.0%}"
    status, metrics = http("GET", dashboard.url + "/metrics")
    assert status == 200
    gauge = {s.labels["tier"]: s.value for s in _samples(metrics)["tierflow_stuck_jobs"]}
    high = stuck_jobs(STALE_AFTER_S)["local_fast"]
    assert 1 <= low <= page_stuck <= high and low <= gauge["local_fast"] <= high


def test_panel_reads_the_fair_share_lines_and_the_configured_daemons(
    database: str, config_file: Any
) -> None:
    """The panel's composition without a worker: slots held and lines waiting in Redis (as the
    admission leaves them), daemons' weights and caps from the config, one configured daemon
    idle (no weight share: it competes for nothing)."""
    tag = uuid.uuid4().hex[:6]
    busy, queued, idle = f"busy-{tag}", f"queued-{tag}", f"idle-{tag}"
    config = fleet_config(local_fast=[fake_model("f", limits={"max_concurrency": 1})])
    config["daemons"] = {busy: {"weight": 2}, queued: {"weight": 0.5, "max_in_flight": 3}, idle: {}}
    config_file(config)
    share = fair_share()
    try:
        for i, daemon in enumerate([busy, queued, queued]):  # 1 slot: busy runs, 2 wait
            payload = {"m": f"{tag}-{i}:0:0:0"}
            share.offer(Tier.LOCAL_FAST, daemon, payload["m"], payload, 5)
        forget_cache()
        panel = fairness(get_settings().llm, {"tier.local_fast": 3}, {"local_fast": 1})
    finally:
        services.delete_prefix(os.environ["TIERFLOW_KEY_PREFIX"], "fair:*")
    rows = {t["tier"]: t for t in panel["tiers"]}
    assert rows["local_fast"]["waiting"] >= 3 + 2 and rows["local_fast"]["running"] == 1
    assert [t["tier"] for t in panel["tiers"]][-1] == "router"
    (fast,) = [s for s in panel["shares"] if s["tier"] == "local_fast"]
    assert fast["capacity"] == 1
    daemons = {d["daemon"]: d for d in fast["daemons"]}
    assert (daemons[busy]["running"], daemons[busy]["waiting"]) == (1, 0)
    assert (daemons[queued]["running"], daemons[queued]["waiting"]) == (0, 2)
    assert (daemons[queued]["weight"], daemons[queued]["max_in_flight"]) == (0.5, 3)
    assert daemons[busy]["weight_share"] == pytest.approx(4 * daemons[queued]["weight_share"])
    assert daemons[idle]["weight_share"] is None and daemons[idle]["weight"] == 1
    assert daemons[busy]["attempts"] == 0 and daemons[idle]["running"] == 0
