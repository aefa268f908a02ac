"""The autoscaler's policy on a fake clock, load and launcher (no processes)."""

from __future__ import annotations

from workers.autoscale import Autoscaler, Load


class FakeLauncher:
    def __init__(self) -> None:
        self.started: list[str] = []
        self.drained: list[str] = []
        self.gone: set[str] = set()

    def start(self) -> str:
        self.started.append(f"w{len(self.started)}")
        return self.started[-1]

    def drain(self, handle: str) -> None:
        self.drained.append(handle)

    def alive(self, handle: str) -> bool:
        return handle not in self.gone


def scaler(load: list[Load], now: list[float], launcher: FakeLauncher) -> Autoscaler:
    return Autoscaler(
        "local_quality", launcher, per_worker=100, min_workers=0, max_workers=3,
        cooldown_s=10, read_load=lambda: load[0], clock=lambda: now[0],
    )  # fmt: skip


def test_scale_out_at_once_capped_at_max() -> None:
    launcher, load, now = FakeLauncher(), [Load(0, 0, 0)], [0.0]
    s = scaler(load, now, launcher)
    s.step()
    assert launcher.started == []
    load[0] = Load(queued=250, reserved=0, in_flight=0)
    s.step()
    assert len(launcher.started) == 3  # ceil(250 / 100)
    load[0] = Load(queued=900, reserved=300, in_flight=300)
    s.step()
    assert len(launcher.started) == 3  # max_workers


def test_scale_in_waits_for_the_cooldown_and_for_held_work_to_fit() -> None:
    launcher, load, now = FakeLauncher(), [Load(150, 0, 0)], [0.0]
    s = scaler(load, now, launcher)
    s.step()
    assert s.active == ["w0", "w1"]
    load[0] = Load(queued=0, reserved=150, in_flight=150)  # wants 2: nothing to do
    now[0] = 30
    s.step()
    load[0] = Load(queued=0, reserved=90, in_flight=90)  # wants 1, from now on
    now[0] = 31
    s.step()
    now[0] = 40
    s.step()
    assert launcher.drained == []  # 9 s of low load: not yet
    now[0] = 42
    s.step()
    assert launcher.drained == ["w1"] and s.active == ["w0"] and s.draining == ["w1"]
    # the last worker only once nothing is held any more
    load[0] = Load(queued=0, reserved=5, in_flight=5)
    now[0] = 100
    s.step()
    assert launcher.drained == ["w1"]
    launcher.gone.add("w1")  # w1 finished its calls and exited by itself
    load[0] = Load(queued=0, reserved=0, in_flight=0)
    now[0] = 120
    s.step()  # the cooldown starts again: at t=100 one worker was still wanted
    assert launcher.drained == ["w1"]
    now[0] = 131
    s.step()
    assert launcher.drained == ["w1", "w0"] and s.draining == ["w0"]
    assert [e.action for e in s.events] == ["start", "start", "drain", "exited", "drain"]
