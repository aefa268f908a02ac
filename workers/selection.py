""" "First available model in the tier", made real: availability, cooldowns, circuits, limits.

For each enabled model in file order (in a ``balance: free_capacity`` tier: the freest node
first, :mod:`workers.balance`), the first that passes every check is taken, with its
concurrency slot and rate reservation already held (and, when its circuit is half-open, the one
probe; a model passed over gives its probe back). When none passes, the reasons say why, and
``wait_s`` says whether waiting a little would help (our own rate limit or a concurrency cap: the
job is re-enqueued with that countdown) or not (down, no key, cooled down, circuit open: the job
moves on to the next tier).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tierflow.core.config import LLMConfig, ModelConfig
from workers.backends.base import Backend, registry
from workers.balance import by_free_capacity
from workers.limits import FleetLimits, Reservation


@dataclass
class Pick:
    model: ModelConfig
    backend: Backend
    slot: str
    reservation: Reservation


@dataclass
class NoPick:
    reasons: dict[str, str] = field(default_factory=dict)
    wait_s: float | None = None  # set when waiting this long may free a model of the tier
    cooling_s: float | None = None  # shortest provider cooldown / open circuit among the models

    def note_wait(self, seconds: float) -> None:
        self.wait_s = seconds if self.wait_s is None else min(self.wait_s, seconds)

    def note_cooling(self, seconds: float) -> None:
        self.cooling_s = seconds if self.cooling_s is None else min(self.cooling_s, seconds)


def pick_model(
    config: LLMConfig, tier: str, limits: FleetLimits, input_tokens: int
) -> Pick | NoPick:
    """The first model of ``tier`` that can serve now, holding its slot and reservation.

    ``input_tokens`` is the prompt's estimate: a model whose ``context_window`` it does not fit
    is passed over (a later tier's larger model may take it; if none can, the job fails with
    this reason).
    """
    none = NoPick()
    models = config.tier_models(tier)
    if config.tier_balance(tier) == "free_capacity":
        models = by_free_capacity(models, limits)  # nodes of one model: the freest first
    for model in models:
        if input_tokens >= model.context_window:
            none.reasons[model.name] = (
                f"prompt of about {input_tokens} tokens does not fit its context window "
                f"({model.context_window})"
            )
            continue
        backend = registry.backend_for(model)
        availability = backend.availability()
        if not availability.ok:
            none.reasons[model.name] = f"unavailable: {availability.reason}"
            continue
        blocked = limits.blocked(model)
        if blocked is not None:
            reason, seconds = blocked
            none.reasons[model.name] = reason
            none.note_cooling(seconds)
            continue
        slot = limits.take_slot(model)
        if slot is None:
            limits.release_probe(model)  # a half-open probe granted above is not used
            none.reasons[model.name] = f"at its concurrency cap ({model.limits.max_concurrency})"
            none.note_wait(0.5)
            continue
        reservation = limits.reserve(model, input_tokens, model.max_tokens)
        if reservation.impossible:
            limits.release_slot(model, slot)
            limits.release_probe(model)
            none.reasons[model.name] = "request alone exceeds the model's per-minute token limit"
            continue
        if not reservation.granted:
            limits.release_slot(model, slot)
            limits.release_probe(model)
            none.reasons[model.name] = f"fleet rate limit: next room in {reservation.wait_s:.2f}s"
            none.note_wait(reservation.wait_s)
            continue
        return Pick(model, backend, slot, reservation)
    if not none.reasons:
        none.reasons["(tier)"] = "no enabled model"
    return none
