"""``tierflow route --explain``: how a job would be routed, without calling any model.

The plan is :func:`router.plan.plan_job`'s, under the fleet's current mode (or the one given);
"the model that would be tried" is the first enabled model of the plan's first tier, as in the
seed's step 3. Whether that model is up or rate-limited right now is the worker's question at run
time and is not asked here: nothing is called and nothing is stored.
"""

from __future__ import annotations

from typing import Any

from router import mode as fleet_mode
from router.gate import kind_of
from router.plan import plan_job
from tierflow.core.config import ActionRule, LLMConfig
from tierflow.core.constants import Mode
from tierflow.core.settings import get_settings


def _current_mode(config: LLMConfig, notes: list[str]) -> Mode:
    """The fleet's mode from PostgreSQL; the configured default when it cannot be read."""
    try:
        return fleet_mode.get_mode()
    except Exception as exc:  # a dry run must work without the services
        notes.append(
            f"fleet mode unreadable ({type(exc).__name__}); "
            f"assumed default_mode={config.routing.default_mode.value}"
        )
        return config.routing.default_mode


def explain(
    action_type: str,
    prompt: str,
    context: dict[str, Any] | None = None,
    *,
    config: LLMConfig | None = None,
    mode: Mode | str | None = None,
) -> dict[str, Any]:
    """The plan as a dict (``TierPlan.to_json()`` keys) plus ``action_type``, ``model`` (the model
    that would be tried, or None), ``provider``, ``models`` (enabled models of each chain tier),
    ``answer_kind`` and ``verifiers`` (how the gate will judge the answer).

    ``config`` defaults to the process's settings; ``mode`` to the fleet's current mode.
    """
    if config is None:
        config = get_settings().llm
    notes: list[str] = []
    chosen = Mode(mode) if mode is not None else _current_mode(config, notes)
    plan = plan_job(action_type, prompt, context or {}, config, chosen)
    info = plan.to_json()
    info["reasons"] = [*info["reasons"], *notes]
    first = next(iter(config.tier_models(plan.tier)), None)
    info["action_type"] = action_type
    info["model"] = first.name if first else None
    info["provider"] = first.provider if first else None
    info["models"] = {t.value: [m.name for m in config.tier_models(t)] for t in plan.chain}
    rule = config.routing.actions.get(action_type, ActionRule())
    info["answer_kind"] = kind_of(rule)
    info["verifiers"] = list(rule.verifiers)
    return info
