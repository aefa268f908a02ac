"""The demo's closing verdict: jobs served per tier, why the local tiers served none, exit code."""

from __future__ import annotations

from schemas.jobs import AttemptSummary, JobResult
from tierflow.app.demo_verdict import demo_verdict, served_by_tier

URL = "http://127.0.0.1:8765/v1"
ENGINE_MODELS = {"gemma3-270m", "gemma3-270m-quality"}


def _job(
    status: str, tier: str | None, *attempts: tuple[str, str | None, str, str | None]
) -> JobResult:
    return JobResult(
        job_id="j",
        status=status,
        tier=tier,
        attempts=[
            AttemptSummary(attempt_no=i, tier=t, model=m, status=s, error=e)
            for i, (t, m, s, e) in enumerate(attempts)
        ],
    )


GATE = ("local_fast", "gemma3-270m", "rejected", "quality gate: coherence: truncated")
DOWN = (
    "local_fast", None, "skipped",
    f"no model of tier local_fast can serve: gemma3-270m: unavailable: {URL} not usable: "
    "openai_compatible: cannot connect to the server (local engine exited with SIGSEGV at "
    "20:31:02; restarting)",
)  # fmt: skip
CALL_DOWN = ("local_quality", "gemma3-270m-quality", "error", "openai_compatible: cannot connect")
CIRCUIT = ("local_fast", None, "skipped", "no model of tier local_fast can serve: "
           "gemma3-270m: circuit open for 20.0s")  # fmt: skip
API = ("api_fallback", "claude-sonnet-4-5-FAKE", "passed", None)


def test_served_counts_every_tier_and_failures() -> None:
    results = [
        _job("succeeded", "local_fast", ("local_fast", "gemma3-270m", "passed", None)),
        _job("succeeded", "api_fallback", GATE, API),
        _job("failed", "api_fallback", GATE),
    ]
    assert served_by_tier(results) == {
        "local_fast": 1, "local_quality": 0, "api_fallback": 1, "failed": 1,
    }  # fmt: skip
    verdict = demo_verdict(results, URL, ENGINE_MODELS, engine_exits=0)
    assert verdict.warnings == [] and verdict.exit_code == 0


def test_no_local_job_is_explained_from_the_attempts() -> None:
    results = [
        _job("succeeded", "api_fallback", GATE, API),
        _job("succeeded", "api_fallback", GATE, API),
        _job("succeeded", "api_fallback", DOWN, CALL_DOWN, API),
        _job("succeeded", "api_fallback", CIRCUIT, API),
    ]
    verdict = demo_verdict(results, URL, ENGINE_MODELS, engine_exits=0)
    assert verdict.warnings == [
        "the local tiers served no job: quality gate (2 attempts); engine down (2 attempts); "
        "circuit open (1 attempts)",
        f"e.g. (quality gate): {GATE[3]}",
    ]
    down = demo_verdict([_job("failed", None, CALL_DOWN), *results[2:]], URL, ENGINE_MODELS, 1)
    assert down.warnings[1].startswith("e.g. (engine down): no model of tier local_fast")
    assert "local engine exited with SIGSEGV" in down.warnings[1] and down.exit_code == 1
    assert verdict.exit_code == 0  # a weak model is not a failure of the run


def test_an_engine_crash_fails_the_run_even_when_jobs_succeeded() -> None:
    results = [_job("succeeded", "local_fast", ("local_fast", "gemma3-270m", "passed", None))]
    verdict = demo_verdict(results, URL, ENGINE_MODELS, engine_exits=2)
    assert verdict.exit_code == 1
    assert verdict.warnings == [
        "the local engine died 2 time(s) during the run and was restarted: see "
        "logs/local-engine.log and logs/supervisor.log"
    ]
