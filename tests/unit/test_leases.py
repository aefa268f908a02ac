"""The lease keeper's thread wakes for a new hold only when that hold is due before the thread
would wake by itself: a hold due sooner than everything held is renewed on time, and a hold due
later (the common case) costs no wake-up."""

from __future__ import annotations

import threading
import time

from workers.leases import LeaseKeeper


class Renewals:
    """A fake renew: records each call's keys, renews them all."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, list[tuple[str, int, str]]]] = []
        self.seen = threading.Event()

    def __call__(self, keys: list[tuple[str, int, str]], lease_s: float) -> set:
        self.calls.append((time.monotonic(), list(keys)))
        self.seen.set()
        return set(keys)


def test_a_hold_due_before_the_threads_next_tick_is_renewed_on_time() -> None:
    renewals = Renewals()
    keeper = LeaseKeeper(renewals)
    with keeper.hold("slow", 0, "w:1", 600.0):  # due in 200 s: the thread sleeps that long
        time.sleep(0.1)
        began = time.monotonic()
        with keeper.hold("fast", 0, "w:2", 0.3):  # due in 0.1 s: it must wake the thread
            assert renewals.seen.wait(2.0)
        at, keys = renewals.calls[0]
        assert ("fast", 0, "w:2") in keys and ("slow", 0, "w:1") not in keys
        assert at - began < 1.0


def test_a_hold_due_after_the_threads_next_tick_does_not_wake_it(monkeypatch) -> None:
    renewals = Renewals()
    keeper = LeaseKeeper(renewals)
    with keeper.hold("first", 0, "w:1", 0.6):
        time.sleep(0.05)  # the thread now sleeps until the first hold is due
        sets = []
        real_set = keeper._wake.set
        monkeypatch.setattr(keeper._wake, "set", lambda: (sets.append(1), real_set()))
        with keeper.hold("second", 0, "w:2", 0.6):  # due 50 ms after the first
            assert sets == []
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline and not any(
                ("second", 0, "w:2") in keys for _, keys in renewals.calls
            ):
                time.sleep(0.02)
        renewed = [keys for _, keys in renewals.calls]
        assert any(("second", 0, "w:2") in keys for keys in renewed)  # by the thread's own tick
