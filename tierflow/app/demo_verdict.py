"""How the demo's run went for the local tiers: jobs served per tier, why none was local, and
whether the run counts as a failure.

A job is served by the tier of its final, successful attempt; failed jobs count as ``failed``.
When the local tiers served nothing, their stored attempts say why, in this order of precedence
per attempt: the embedded engine down (its URL or the supervisor's "local engine" note in the
error, or "cannot connect" from a model the engine serves), a circuit open, a cooldown, the
quality gate (a rejected answer), or anything else. The demo exits non-zero when the local engine
died during the run, whatever the jobs did: a crash must never pass as a weak model.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from schemas.jobs import AttemptSummary, JobResult
from tierflow.core.constants import LOCAL_TIERS, TIER_ORDER


@dataclass(frozen=True)
class DemoVerdict:
    served: dict[str, int]  # tier (or "failed") -> jobs; every tier listed, zeros included
    warnings: list[str]
    exit_code: int  # 0, or 1 when the local engine died during the run


def served_by_tier(results: Iterable[JobResult]) -> dict[str, int]:
    """Jobs each tier served (zeros included), then ``failed`` when any job failed."""
    served = {tier.value: 0 for tier in TIER_ORDER}
    for result in results:
        key = result.tier if result.ok and result.tier else "failed"
        served[key] = served.get(key, 0) + 1
    return served


def why_local_attempts_failed(
    results: Iterable[JobResult], engine_url: str, engine_models: set[str]
) -> tuple[Counter[str], dict[str, str]]:
    """Local tiers' unsuccessful attempts by cause (see the module docstring), and one stored
    error of each cause as an example (the first, or the first with the supervisor's note)."""
    causes: Counter[str] = Counter()
    examples: dict[str, str] = {}
    for result in results:
        for attempt in result.attempts:
            if attempt.tier in LOCAL_TIERS and attempt.status != "passed":
                cause = _cause(attempt, engine_url.rstrip("/"), engine_models)
                causes[cause] += 1
                error = attempt.error or attempt.status
                if cause not in examples or (
                    "local engine" in error and "local engine" not in examples[cause]
                ):  # the supervisor's note says more than a bare "cannot connect"
                    examples[cause] = error
    return causes, examples


def _cause(attempt: AttemptSummary, engine_url: str, engine_models: set[str]) -> str:
    error = attempt.error or ""
    if (
        engine_url in error
        or "local engine" in error
        or (attempt.model in engine_models and "cannot connect" in error)
    ):
        return "engine down"
    if "circuit open" in error or "circuit half-open" in error:
        return "circuit open"
    if "cooling down" in error:
        return "cooling down"
    if attempt.status == "rejected" or error.startswith("quality gate"):
        return "quality gate"
    return f"other: {error[:120] or attempt.status}"


def demo_verdict(
    results: list[JobResult], engine_url: str, engine_models: set[str], engine_exits: int
) -> DemoVerdict:
    """Counts, warnings and exit code of a finished demo run."""
    served = served_by_tier(results)
    warnings = []
    if results and not any(served.get(t.value) for t in LOCAL_TIERS):
        causes, examples = why_local_attempts_failed(results, engine_url, engine_models)
        why = "; ".join(f"{cause} ({n} attempts)" for cause, n in causes.most_common())
        warnings.append(f"the local tiers served no job: {why or 'no local attempt was made'}")
        if causes:
            top = causes.most_common(1)[0][0]
            warnings.append(f"e.g. ({top}): {examples[top][:300]}")
    if engine_exits:
        warnings.append(
            f"the local engine died {engine_exits} time(s) during the run and was restarted: "
            "see logs/local-engine.log and logs/supervisor.log"
        )
    return DemoVerdict(served, warnings, 1 if engine_exits else 0)
