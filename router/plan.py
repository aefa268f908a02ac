"""Tier selection and the fallback chain, as the first seed's ``route_request`` does, plus modes.

Order of decisions, each recorded in ``TierPlan.reasons``:

1. classify (see :mod:`router.classify`);
2. quality-critical jobs (``affects_system_state``, ``user_visible_output``, actions
   ``spawn_daemon`` and ``exec``) go to the API tier;
3. otherwise SIMPLE → local_fast, MODERATE → local_quality (api_fallback when
   ``prefer_local`` is false), COMPLEX → api_fallback;
4. an ``action_tier_overrides`` entry replaces the tier chosen above (it is the operator's word);
5. the fallback chain follows the seed (local_fast → local_quality → api_fallback), cut to
   ``max_fallback_attempts`` fallbacks;
6. the fleet mode filters the chain: ``local`` drops the API tier (a job routed to the API alone
   gets the strongest local tier instead), ``cloud`` keeps only the API tier. The mode comes last
   because it is the operator's fleet-wide word, above any per-action rule;
7. ``error`` is set when no tier of the final chain has an enabled model (the job then fails at
   once, with that reason, instead of waiting for a tier that cannot serve).

Overrides beat quality-criticality on purpose: an operator who pins ``exec`` to a local tier has
decided. :func:`router.explain.explain` prints this plan without calling any model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from router.classify import classify_task
from tierflow.core.config import ActionRule, LLMConfig
from tierflow.core.constants import TIER_ORDER, Complexity, Mode, Tier

QUALITY_CRITICAL_ACTIONS = frozenset({"spawn_daemon", "exec"})
QUALITY_CRITICAL_FLAGS = ("affects_system_state", "user_visible_output")


@dataclass(frozen=True)
class TierPlan:
    """Where a job goes: ``chain[0]`` first, then each fallback in order."""

    complexity: Complexity
    tier: Tier
    chain: list[Tier]
    mode: Mode
    quality_critical: bool
    reasons: list[str] = field(default_factory=list)
    error: str | None = None  # set when the mode leaves no tier to try

    def to_json(self) -> dict[str, Any]:
        """Every field, enums as their values (written out: ``dataclasses.asdict`` deep-copies
        each value and cost a tenth of a routing task's CPU)."""
        return {
            "complexity": self.complexity.value,
            "tier": self.tier.value,
            "chain": [t.value for t in self.chain],
            "mode": self.mode.value,
            "quality_critical": self.quality_critical,
            "reasons": list(self.reasons),
            "error": self.error,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TierPlan:
        return cls(
            complexity=Complexity(data["complexity"]),
            tier=Tier(data["tier"]),
            chain=[Tier(t) for t in data["chain"]],
            mode=Mode(data["mode"]),
            quality_critical=bool(data["quality_critical"]),
            reasons=list(data.get("reasons", [])),
            error=data.get("error"),
        )


def plan_job(
    action_type: str,
    prompt: str,
    context: dict[str, Any],
    config: LLMConfig,
    mode: Mode,
    cheap_odds: float | None = None,
) -> TierPlan:
    """Plan one job. Pure: reads no service, calls no model.

    ``cheap_odds``: the learned chance that the chain's first tier passes this prompt
    (:func:`router.gate.prerouting.cheap_odds`); below the action's ``route_first_below`` the
    first tier is skipped (the job goes straight to the next one, sparing the cheap call)."""
    routing = config.routing
    classification = classify_task(
        action_type, prompt, context, Complexity(routing.default_complexity)
    )
    reasons = list(classification.reasons)
    complexity = classification.complexity

    flags = [f for f in QUALITY_CRITICAL_FLAGS if context.get(f)]
    quality_critical = bool(flags) or action_type in QUALITY_CRITICAL_ACTIONS
    if quality_critical:
        tier = Tier.API_FALLBACK
        why = ", ".join(flags) if flags else f"action {action_type}"
        reasons.append(f"quality-critical ({why}): api_fallback")
    elif complexity is Complexity.SIMPLE:
        tier = Tier.LOCAL_FAST
        reasons.append("simple: local_fast")
    elif complexity is Complexity.MODERATE:
        tier = Tier.LOCAL_QUALITY if routing.prefer_local else Tier.API_FALLBACK
        reasons.append(f"moderate with prefer_local={routing.prefer_local}: {tier.value}")
    else:
        tier = Tier.API_FALLBACK
        reasons.append("complex: api_fallback")

    override = routing.action_tier_overrides.get(action_type)
    if override is not None and override is not tier:
        reasons.append(f"action_tier_overrides[{action_type}] = {override.value}")
        tier = override

    later = list(TIER_ORDER[TIER_ORDER.index(tier) + 1 :])
    fallbacks = later[: routing.max_fallback_attempts]
    if len(fallbacks) < len(later):
        reasons.append(f"max_fallback_attempts={routing.max_fallback_attempts}: chain cut")
    chain = [tier, *fallbacks]
    if fallbacks:
        reasons.append("fallback chain: " + " → ".join(t.value for t in chain))

    chain = _apply_mode(chain, mode, config, reasons)
    chain = _pre_route(chain, routing.actions.get(action_type), cheap_odds, reasons)
    error = None
    if not any(config.tier_models(t) for t in chain):
        error = f"mode {mode.value}: no enabled model in tiers {[t.value for t in chain]}"
    return TierPlan(complexity, chain[0], chain, mode, quality_critical, reasons, error)


def _pre_route(
    chain: list[Tier], rule: ActionRule | None, odds: float | None, reasons: list[str]
) -> list[Tier]:
    """Drop the first tier when the prompt predicts its answer fails (see :func:`plan_job`)."""
    below = rule.route_first_below if rule is not None else None
    if below is None or odds is None or len(chain) < 2 or odds >= below:
        return chain
    reasons.append(f"pre-routed: P({chain[0].value} passes) = {odds:.2f} < {below}")
    return chain[1:]


def _apply_mode(chain: list[Tier], mode: Mode, config: LLMConfig, reasons: list[str]) -> list[Tier]:
    """Filter the chain by the fleet mode; ``reasons`` gets a line when the mode changed it.

    ``local`` drops the API tier; a job that had only the API tier gets the strongest local tier
    with an enabled model instead (local_quality, else local_fast). ``cloud`` keeps only the API.
    """
    if mode is Mode.LOCAL:
        kept = [t for t in chain if mode.allows(t)]
        if kept:
            if kept != chain:
                reasons.append("mode local: API tier removed from the chain")
            return kept
        stand_in = next(
            (t for t in (Tier.LOCAL_QUALITY, Tier.LOCAL_FAST) if config.tier_models(t)),
            Tier.LOCAL_QUALITY,
        )
        reasons.append(f"mode local: API tier replaced by {stand_in.value}")
        return [stand_in]
    if mode is Mode.CLOUD:
        if chain != [Tier.API_FALLBACK]:
            reasons.append("mode cloud: API tier only")
        return [Tier.API_FALLBACK]
    return chain
