"""The hard time limit holds for a stream: a stream still trickling at the attempt's deadline is
cut there and is a timeout (retryable, as any timeout), and its connection is closed."""

from __future__ import annotations

import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from tierflow.core import errors
from workers.backends.base import Completion, CompletionRequest, StreamChunk
from workers.pipeline import call


class Trickle:
    """A backend whose stream sends a word every ``gap_s``, ``words`` of them."""

    def __init__(self, words: int, gap_s: float) -> None:
        self.words, self.gap_s = words, gap_s
        self.closed = False

    def stream(self, request: CompletionRequest) -> Iterator[StreamChunk]:
        try:
            text = ""
            for i in range(self.words):
                time.sleep(self.gap_s)
                text += "w "
                last = i == self.words - 1
                done = Completion(text, 1, i + 1, "m", "fake", "stop", fake=True) if last else None
                yield StreamChunk("w ", text, last, "fake", done)
        finally:
            self.closed = True


def _call(backend: Trickle, deadline: float) -> Completion:
    job: Any = SimpleNamespace(id="job-1", stream=True)
    pick: Any = SimpleNamespace(backend=backend, model=SimpleNamespace(name="trickle"))
    return call.call_backend(job, pick, CompletionRequest(prompt="p"), deadline)


@pytest.fixture
def no_events(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    sent: list[dict] = []
    monkeypatch.setattr(call.notify, "publish_job_event", lambda job_id, e: sent.append(e))
    return sent


def test_a_trickling_stream_is_cut_at_the_deadline(no_events: list[dict]) -> None:
    backend = Trickle(words=100, gap_s=0.05)  # 5 s of stream
    began = time.monotonic()
    with pytest.raises(errors.BackendTimeout, match="hard time limit") as caught:
        _call(backend, began + 0.5)
    took = time.monotonic() - began
    assert 0.5 <= took < 0.7, took  # cut at the first chunk past the deadline
    assert caught.value.retryable and caught.value.kind == "timeout"
    assert backend.closed
    assert 5 <= len(no_events) < 15  # the chunks before the deadline reached the waiter


def test_a_stream_within_the_deadline_is_whole(no_events: list[dict]) -> None:
    backend = Trickle(words=5, gap_s=0.01)
    completion = _call(backend, time.monotonic() + 5.0)
    assert completion.text == "w " * 5 and len(no_events) == 5
