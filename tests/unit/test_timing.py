"""A job's time split into queues, model calls and the fleet's own work (tierflow/store/timing)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from schemas.jobs import AttemptSummary, JobResult
from tierflow.store.timing import AttemptSpan, split_times
from workers.job_metrics import OVERHEAD, QUEUE_WAIT, observe_job

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def at(ms: float) -> datetime:
    return T0 + timedelta(milliseconds=ms)


def test_two_attempts_split_into_waits_model_and_fleet_work() -> None:
    spans = [AttemptSpan(at(30), at(130), 80.0), AttemptSpan(at(400), at(520), 100.0)]
    times = split_times(T0, at(540), spans)
    assert times is not None
    assert times.waits_ms == [30.0, 270.0]  # submit -> claim, first end -> second claim
    assert times.queue_ms == 300.0 and times.model_ms == 180.0
    assert times.fleet_ms == 60.0 and times.overhead_ms == 360.0


def test_unfinished_jobs_have_no_split_and_skewed_clocks_never_go_below_zero() -> None:
    assert split_times(T0, None, []) is None
    times = split_times(T0, at(50), [AttemptSpan(at(-5), None, 70.0)])
    assert times is not None and times.waits_ms == [0.0]
    assert times.model_ms == 50.0 and times.fleet_ms == 0.0 and times.overhead_ms == 0.0


def _count(histogram: object, tier: str) -> float:
    for metric in histogram.collect():  # type: ignore[attr-defined]
        for sample in metric.samples:
            if sample.name.endswith("_count") and sample.labels.get("tier") == tier:
                return float(sample.value)
    return 0.0


def test_a_finished_job_is_observed_once_per_attempt_and_an_unfinished_one_not_at_all() -> None:
    tier = "local_quality"
    before = _count(OVERHEAD, tier), _count(QUEUE_WAIT, tier), _count(QUEUE_WAIT, "local_fast")
    attempts = [
        AttemptSummary(attempt_no=0, tier="local_fast", model="m", status="rejected", queue_ms=5),
        AttemptSummary(attempt_no=1, tier=tier, model="n", status="passed", queue_ms=7),
    ]
    observe_job(JobResult(job_id="j", status="running", attempts=attempts))
    observe_job(
        JobResult(job_id="j", status="succeeded", tier=tier, attempts=attempts, overhead_ms=20)
    )
    after = _count(OVERHEAD, tier), _count(QUEUE_WAIT, tier), _count(QUEUE_WAIT, "local_fast")
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1, 1]


def test_the_gateway_answers_the_overhead_in_a_header() -> None:
    from tierflow.app.gateway import result_headers

    done = JobResult(job_id="j", status="succeeded", overhead_ms=12.345)
    assert result_headers(done, "a")["x-tierflow-overhead-ms"] == "12.3"
    assert (
        result_headers(JobResult(job_id="j", status="running"), "a")["x-tierflow-overhead-ms"]
        == "-"
    )
