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


def test_a_lease_is_not_renewed_past_its_hard_deadline() -> None:
    """Renewed every third of itself until the deadline; then dropped, so it runs out by
    itself even when the thread holding it never returns."""
    renewals = Renewals()
    keeper = LeaseKeeper(renewals)
    deadline = time.monotonic() + 0.5
    held = keeper.keep("long", 0, "w:1", 0.3, deadline)
    time.sleep(1.2)
    times = [at for at, keys in renewals.calls if ("long", 0, "w:1") in keys]
    assert times, "never renewed before its deadline"
    assert all(at < deadline + 0.05 for at in times), "renewed past the deadline"
    assert held.key not in {h.key for h in keeper.held()}
    assert not held.lost.is_set()  # not taken over: over its time limit


def test_drop_stops_the_renewals_of_a_kept_lease() -> None:
    renewals = Renewals()
    keeper = LeaseKeeper(renewals)
    keeper.keep("job", 0, "w:1", 0.3)
    assert renewals.seen.wait(2.0)
    keeper.drop(("job", 0, "w:1"))
    count = len(renewals.calls)
    time.sleep(0.4)
    assert len(renewals.calls) == count


def test_call_timeout_never_reaches_past_the_deadline(monkeypatch) -> None:
    from workers.leases import call_timeout

    monkeypatch.setenv("TIERFLOW_TASK_SOFT_TIME_LIMIT", "20")
    monkeypatch.setenv("TIERFLOW_TASK_TIME_LIMIT", "30")
    from tierflow.core.settings import reset_settings

    reset_settings()
    try:
        assert call_timeout(60.0) == 20.0  # the soft limit caps the model's own
        assert call_timeout(5.0) == 5.0
        left = call_timeout(60.0, time.monotonic() + 3.0)
        assert 2.5 < left <= 3.0
        assert call_timeout(60.0, time.monotonic() - 1.0) == 0.1  # past it: the floor
    finally:
        monkeypatch.undo()
        reset_settings()
