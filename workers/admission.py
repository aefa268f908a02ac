"""A tier worker's side of the fair shares (:mod:`router.fairshare`): admit an attempt that
came due after a countdown, and free an attempt's slot when its run ends.

An attempt message sent with a countdown carries ``fair`` (its daemon, priority and action)
and holds no slot while it waits; when it comes due the worker offers it (:func:`admit_on_arrival`):
it runs now if it is admitted, else it joins its daemon's line and the delivery ends. Every run
of a contended tier's attempt frees its slot at its end (:func:`release_after`), which admits the
next attempts in fair order and sends them. A run that ends by a Celery retry keeps its slot:
the retry is the same message and runs on it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from router.dispatch import attempt_payload, fair_share, send_all
from router.fairshare import contended, slot_member
from tierflow.core.constants import Tier, tier_of_queue
from tierflow.core.settings import get_settings


class Delivery(NamedTuple):
    """One attempt message as its slot knows it."""

    tier: Tier
    member: str


def contended_delivery(
    routing_key: Any, job_id: str, attempt_no: int, retries_in_step: int, waits: int
) -> Delivery | None:
    """This delivery's tier and slot member when its tier is contended; None otherwise (no
    tier queue in the delivery info, or a tier that admits without slots)."""
    try:
        tier = tier_of_queue(routing_key)
    except ValueError:
        return None
    if not contended(get_settings().llm, tier):
        return None
    return Delivery(tier, slot_member(job_id, attempt_no, retries_in_step, waits))


def check_fair(value: Any) -> tuple[str | None, int, str | None] | None:
    """The ``fair`` keyword of a message sent with a countdown: (daemon, priority, action), or
    None when absent or malformed (then the attempt runs unadmitted rather than be lost)."""
    if not isinstance(value, dict):
        return None
    daemon, priority, action = value.get("d"), value.get("p"), value.get("x")
    if daemon is not None and not (isinstance(daemon, str) and 0 < len(daemon) <= 64):
        return None
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 9:
        return None
    if action is not None and not isinstance(action, str):
        return None
    return daemon, priority, action


def admit_on_arrival(
    delivery: Delivery,
    fair: tuple[str | None, int, str | None],
    job_id: str,
    step: int,
    attempt_no: int,
    retries_in_step: int,
    waits: int,
) -> bool:
    """Offer an attempt that came due; True when it is admitted and runs in this delivery
    (whatever else was admitted with it is sent), False when it waits in its daemon's line."""
    daemon, priority, action = fair
    payload = attempt_payload(
        job_id, delivery.tier, step, attempt_no, retries_in_step, priority, waits, action, daemon
    )
    admitted = fair_share().offer(delivery.tier, daemon, delivery.member, payload, priority)
    send_all([p for p in admitted if p["m"] != delivery.member])
    return any(p["m"] == delivery.member for p in admitted)


def release_after(delivery: Delivery) -> None:
    """Free the delivery's slot and send the attempts admitted in its place."""
    send_all(fair_share().release(delivery.tier, delivery.member))


def pump_all() -> int:
    """Re-admit on every contended tier (slots whose holders died expire here too); returns
    the attempts sent. The sweep runs it each pass, so a tier with no run ending still moves."""
    config = get_settings().llm
    sent = 0
    for tier in config.tiers:
        if contended(config, tier):
            payloads = fair_share().release(Tier(tier), None)
            send_all(payloads)
            sent += len(payloads)
    return sent
