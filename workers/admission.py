"""A tier worker's side of the fair shares (:mod:`router.fairshare`): admit an attempt that
came due after a countdown, and free an attempt's slot once its outcome is stored.

An attempt message sent with a countdown carries ``fair`` (its daemon, priority and action)
and holds no slot while it waits; when it comes due the worker offers it (:func:`admit_on_arrival`):
it runs now if it is admitted, else it joins its daemon's line and the delivery ends. Every run
of a contended tier's attempt frees its slot once its outcome is stored (:class:`SlotRelease`:
a step right after ``Persist``, so the gate's verdict, the finish, the wake-up, the cache and
the next attempt's send no longer hold the tier's slot), or at the run's end when it stopped
before that; the release admits the next attempts in fair order and sends them. A run that ends
by a Celery retry before its outcome was stored keeps its slot: the retry is the same message
and runs on it.

Why after ``Persist``: another daemon's next attempt waits for the next freed slot, so the time
a slot is held past the model call is waiting added to every contended job (issue 34's bench:
B's admission wait, p95 54 ms with 50 ms calls, went with the slot's hold). Freed earlier
(after the call), the next attempt could be claimed before this one's row is written, and the
tier would show more attempts at once than its slots; after ``Persist`` the stored attempts
never overlap beyond them.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from router.dispatch import attempt_payload, fair_share, send_all
from router.fairshare import contended, slot_member
from tierflow.core.constants import Tier, tier_of_queue
from tierflow.core.settings import get_settings
from workers.pipeline import STEPS
from workers.pipeline.context import AttemptContext, Step
from workers.pipeline.persist import Persist


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


class SlotRelease(Step):
    """One delivery's slot, freed once: as a pipeline step right after ``Persist`` (see the
    module; :attr:`steps` are the attempt's steps with it there), else by :meth:`release` at
    the run's end. A second release does nothing (no Redis call)."""

    def __init__(self, delivery: Delivery) -> None:
        self.delivery = delivery
        self.released = False
        at = [type(s) for s in STEPS].index(Persist) + 1
        self.steps: tuple[Step, ...] = (*STEPS[:at], self, *STEPS[at:])

    def applies(self, ctx: AttemptContext) -> bool:
        # Stored (or stopped with nothing to store: a replay, a wait, a fenced-out write):
        # from here on the attempt makes no model call on this slot.
        return not self.released

    def run(self, ctx: AttemptContext) -> None:
        self.release()

    def release(self) -> None:
        """Free the slot and send what was admitted in its place (once)."""
        if not self.released:
            self.released = True
            release_after(self.delivery)

    def __repr__(self) -> str:
        return f"SlotRelease({self.delivery.member!r})"


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
