"""Route before generating: from the same labels the gate learns on, ``P(the cheap tier's
answer is right | the prompt alone)`` per action; a job whose prompt predicts failure can go
straight to the next tier and save the cheap call (its cost and its latency).

:func:`cascade_costs` measures, on labelled rows, the two policies at a quality target:

- **cascade**: every row calls the cheap tier; the gate's lowest-ranked rows escalate;
- **router then cascade**: the share ``r`` of rows the prompt scorer ranks lowest goes straight
  to the strong tier (no cheap call); the cascade runs on the rest. The ``r`` chosen is the
  largest whose strong calls stay within ``slack`` (2 points) of the cascade's: the cheap calls
  (and their latency) it saves at about the same strong cost.

Both report strong calls and cheap calls per row at the smallest escalation that reaches
``target`` of strong-only accuracy. The prompt scorer is fitted prequentially (row ``i`` by a
fit on rows before it), the way the fleet would learn it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from router.gate.features import prompt_features
from router.gate.learned import Label, LogisticScorer
from tierflow import store
from tierflow.core.config import ActionRule
from tierflow.core.settings import get_settings

ROUTE_SHARES = tuple(i / 20 for i in range(0, 11))  # 0%, 5%, ... 50% routed straight up


_SCORERS: dict[str, tuple[float, LogisticScorer | None]] = {}


def fit_router(pairs: Sequence[tuple[str, bool]], min_labels: int) -> LogisticScorer | None:
    """``P(good | prompt features)`` from (prompt, good) pairs; None with fewer than
    ``min_labels`` or one outcome only."""
    if len(pairs) < min_labels:
        return None
    return LogisticScorer.fit([Label(prompt_features(p), good) for p, good in pairs])


def cheap_odds(action: str, rule: ActionRule | None, prompt: str) -> float | None:
    """The learned chance that the chain's first tier passes ``prompt``, for an action that sets
    ``route_first_below``; None otherwise or until it has ``min_labels`` labels. One job's
    daemon feedback wins over the fleet's own labels of it; the fit is read again at most every
    ``gate_refit_s`` seconds per process."""
    if rule is None or rule.route_first_below is None:
        return None
    now = time.monotonic()
    cached = _SCORERS.get(action)
    if cached is None or now - cached[0] >= get_settings().gate_refit_s:
        chosen: dict[str, tuple[bool, str]] = {}
        for prompt_seen, good, source in store.labelled_prompts(action):
            held = chosen.get(prompt_seen)
            if held is None or source == "feedback" or held[1] != "feedback":
                chosen[prompt_seen] = (good, source)
        pairs = [(p, good) for p, (good, _) in chosen.items()]
        cached = (now, fit_router(pairs, rule.min_labels))
        _SCORERS[action] = cached
    scorer = cached[1]
    return None if scorer is None else scorer(prompt_features(prompt))


def forget_routers() -> None:
    """Drop the cached prompt scorers (tests)."""
    _SCORERS.clear()


@dataclass(frozen=True)
class PolicyCost:
    """Calls per row at the quality target: ``strong`` and ``cheap`` (shares of rows), the
    share ``routed`` straight to the strong tier, and the accuracy reached."""

    name: str
    strong: float
    cheap: float
    routed: float
    accuracy: float


def prompt_scores(
    prompts: Sequence[str], good: Sequence[bool], refit_every: int = 25
) -> list[float]:
    """Prequential ``P(cheap right | prompt)`` for each row (0.5 before a fit exists)."""
    feats = [prompt_features(p) for p in prompts]
    scores: list[float] = []
    scorer: LogisticScorer | None = None
    for i, row in enumerate(feats):
        if i and i % refit_every == 0:
            labels = [Label(f, g) for f, g in zip(feats[:i], good[:i], strict=True)]
            scorer = LogisticScorer.fit(labels)
        scores.append(scorer(row) if scorer is not None else 0.5)
    return scores


def _cheapest(
    order: list[int], cheap: Sequence[bool], strong: Sequence[bool], routed: set[int], goal: float
) -> tuple[float, float] | None:
    """Escalating the unrouted rows in ``order`` (lowest gate rank first): the fewest strong
    calls whose accuracy reaches ``goal`` (correct answers), and that accuracy; None if none."""
    n = len(cheap)
    correct = sum(strong[i] for i in routed) + sum(cheap[i] for i in range(n) if i not in routed)
    escalated = 0
    if correct >= goal:
        return (len(routed) / n, correct / n)
    for i in order:
        if i in routed:
            continue
        correct += strong[i] - cheap[i]
        escalated += 1
        if correct >= goal:
            return ((len(routed) + escalated) / n, correct / n)
    return None


def cascade_costs(
    gate_ranks: Sequence[float],
    route_scores: Sequence[float],
    cheap: Sequence[bool],
    strong: Sequence[bool],
    target: float = 0.95,
    slack: float = 0.02,
) -> tuple[PolicyCost | None, PolicyCost | None]:
    """The cascade and the best router-then-cascade at ``target`` of strong-only accuracy
    (None when a policy cannot reach it)."""
    n = len(cheap)
    goal = target * sum(strong)
    by_gate = sorted(range(n), key=lambda i: gate_ranks[i])
    by_route = sorted(range(n), key=lambda i: route_scores[i])
    plain = _cheapest(by_gate, cheap, strong, set(), goal)
    cascade = None if plain is None else PolicyCost("cascade", plain[0], 1.0, 0.0, plain[1])
    best: PolicyCost | None = None
    for share in ROUTE_SHARES:
        routed = set(by_route[: int(share * n)])
        found = _cheapest(by_gate, cheap, strong, routed, goal)
        if found is None:
            continue
        option = PolicyCost("router then cascade", found[0], 1 - share, share, found[1])
        within = cascade is None or option.strong <= cascade.strong + slack
        if best is None or (within and option.routed > best.routed):
            best = option
    return cascade, best
