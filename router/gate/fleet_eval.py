"""``tierflow eval FILE --fleet``, the pure part: the fleet's config for a labelled file, and the
fleet's jobs read back as the offline replay's rows, for :func:`router.gate.evaluate.summarize`.

The config (:func:`fleet_eval_config`) keeps the user's action rule (its verifiers, target,
audit share) under a fresh action name per run, so the gate starts with no labels as the
prequential replay does, and learns from the labels the run makes (escalations, audits). Its
``local_fast`` tier has one model replaying the file's cheap answers and ``local_quality`` one
replaying its strong answers (:mod:`workers.backends.replay`), priced as the user's first
``local_fast`` and first ``api_fallback`` models; the action starts on ``local_fast`` and may
escalate once. What no recorded answer can serve is left out, as offline: the self-critique
(``self_critique: false``), a judge (``judge_tier`` dropped, ``judge`` removed from the
verifiers) and the cache.

A job's row (:func:`judged_from_fleet`): **escalated** when its answer came from the strong tier;
**outcome** that side's correctness, and wrong when the job failed (no answer); **score** the
first attempt's stored gate score, less the veto penalty when a check vetoed it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from router.gate.evaluate import EvalRow, Judged, Replay
from tierflow.core.config import ActionRule, LLMConfig
from tierflow.core.constants import Tier

CHEAP_TIER, STRONG_TIER = Tier.LOCAL_FAST, Tier.LOCAL_QUALITY
CHEAP_MODEL, STRONG_MODEL = "replay-cheap", "replay-strong"


def eval_action_name(action: str, run_id: str) -> str:
    """A fresh action name for one run (``eval_<action>_<run_id>``, within the action pattern)."""
    cleaned = "".join(c if c.isalnum() else "_" for c in action.lower()).strip("_") or "text"
    suffix = "".join(c for c in run_id.lower() if c.isalnum())[:12]
    return f"eval_{cleaned[: 64 - 6 - len(suffix)]}_{suffix}"


def eval_rule(rule: ActionRule) -> tuple[ActionRule, list[str]]:
    """The rule as the fleet eval runs it, and notes on what was left out (a judge)."""
    notes = []
    if rule.judge_tier is not None or "judge" in rule.verifiers:
        verifiers = [v for v in rule.verifiers if v != "judge"] or ["checks"]
        rule = rule.model_copy(update={"judge_tier": None, "verifiers": verifiers})
        notes.append("the judge is left out: no recorded answer says yes or no to it")
    return rule, notes


def _price(config: LLMConfig, tier: Tier) -> dict[str, float]:
    models = config.tier_models(tier)
    if not models:
        return {}
    return {
        "input_cost_per_million": models[0].input_cost_per_million,
        "output_cost_per_million": models[0].output_cost_per_million,
    }


def _replay_model(
    name: str, side: str, path: str, file_name: str, price: dict[str, float]
) -> dict[str, Any]:
    options = {"file": path, "side": side}
    return {"name": name, "provider": "replay", "model_id": f"{side}:{file_name}",
            "options": options, **price}  # fmt: skip


def fleet_eval_config(
    base: LLMConfig, action: str, rule: ActionRule, file: Path, quality_threshold: float
) -> dict[str, Any]:
    """The whole config (as YAML would hold it) running ``action`` with ``rule`` on replays of
    ``file`` (made absolute, as workers run elsewhere); see the module's docstring."""
    path = str(file.expanduser().resolve())
    cheap = _replay_model(CHEAP_MODEL, "cheap", path, file.name, _price(base, Tier.LOCAL_FAST))
    strong = _replay_model(STRONG_MODEL, "strong", path, file.name, _price(base, Tier.API_FALLBACK))
    return {
        "tiers": {CHEAP_TIER.value: {"models": [cheap]}, STRONG_TIER.value: {"models": [strong]}},
        "routing": {
            "quality_threshold": quality_threshold,
            "max_fallback_attempts": 1,
            "self_critique": False,
            "enable_caching": False,
            "auto_cloud_after_s": None,
            "baseline_model": STRONG_MODEL,
            "action_tier_overrides": {action: CHEAP_TIER.value},
            "actions": {action: rule.model_dump(mode="json", exclude_defaults=True)},
        },
    }


@dataclass(frozen=True)
class FleetJob:
    """What the fleet did with one row: the job's final status and tier, and its first
    attempt's gate score, vetoes and threshold (None when no attempt was judged)."""

    row: EvalRow
    status: str
    tier: str | None
    score: float | None
    vetoed: bool
    threshold: float | None


@dataclass(frozen=True)
class FleetJudged(Judged):
    """A row as the fleet judged it: a failed job delivered no answer, so its outcome is wrong."""

    failed: bool = False

    @property
    def outcome(self) -> bool:
        return False if self.failed else super().outcome


def judged_from_fleet(jobs: list[FleetJob], default_threshold: float) -> Replay:
    """The jobs as a :class:`~router.gate.evaluate.Replay` for ``summarize`` (not prequential
    in the offline sense: the fleet refits as its labels come, every ``gate_refit_s``)."""
    judged: list[Judged] = []
    notes: list[str] = []
    for job in jobs:
        escalated = job.tier == STRONG_TIER.value
        judged.append(
            FleetJudged(
                row=job.row,
                score=job.score if job.score is not None else 0.0,
                vetoed=job.vetoed,
                passed=not escalated,
                threshold=job.threshold if job.threshold is not None else default_threshold,
                failed=job.status != "succeeded",
            )
        )
    failed = sum(job.status != "succeeded" for job in jobs)
    if failed:
        notes.append(f"{failed} job(s) did not succeed: counted as wrong answers")
    unjudged = sum(job.score is None for job in jobs)
    if unjudged:
        notes.append(f"{unjudged} job(s) had no judged first attempt: scored 0")
    threshold = judged[-1].threshold if judged else default_threshold
    return Replay(judged, prequential=True, refit_every=0, threshold=threshold, notes=notes)
