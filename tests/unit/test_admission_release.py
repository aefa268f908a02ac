"""A contended tier's slot is freed once the attempt's outcome is stored, not at the run's end
(:class:`workers.admission.SlotRelease`): the steps after ``Persist`` (the finish, the wake-up,
the next attempt's send) no longer hold the slot another daemon's job waits for."""

from __future__ import annotations

from typing import Any

import pytest

from tierflow.core.constants import Tier
from workers import admission
from workers.pipeline import STEPS
from workers.pipeline.call import CallModel
from workers.pipeline.enqueue import Enqueue
from workers.pipeline.finish import Finish
from workers.pipeline.persist import Persist


@pytest.fixture
def freed(monkeypatch: pytest.MonkeyPatch) -> list[admission.Delivery]:
    calls: list[admission.Delivery] = []
    monkeypatch.setattr(admission, "release_after", calls.append)
    return calls


def test_the_slot_is_freed_right_after_the_outcome_is_stored() -> None:
    slot = admission.SlotRelease(admission.Delivery(Tier.LOCAL_FAST, "j:0:0:0"))
    kinds = [type(s) for s in slot.steps]
    at = kinds.index(admission.SlotRelease)
    assert kinds[at - 1] is Persist  # the stored attempts never overlap beyond the slots
    assert kinds.index(CallModel) < at < kinds.index(Finish) < kinds.index(Enqueue)
    assert [s for s in slot.steps if s is not slot] == list(STEPS)  # nothing else moves


def test_the_slot_is_freed_once_whichever_comes_first(freed: list[Any]) -> None:
    delivery = admission.Delivery(Tier.LOCAL_FAST, "j:0:0:0")
    slot = admission.SlotRelease(delivery)
    ctx: Any = object()  # the step reads nothing of the attempt
    assert slot.applies(ctx)
    slot.run(ctx)
    assert freed == [delivery]
    assert not slot.applies(ctx)
    slot.release()  # the run's end: nothing more to free, no Redis call
    assert freed == [delivery]


def test_a_run_that_stopped_before_the_step_frees_its_slot_at_its_end(freed: list[Any]) -> None:
    delivery = admission.Delivery(Tier.LOCAL_FAST, "j:1:0:2")
    slot = admission.SlotRelease(delivery)
    slot.release()
    slot.release()
    assert freed == [delivery]
    assert not slot.applies(object())  # type: ignore[arg-type]
