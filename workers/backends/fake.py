"""The fake backend: deterministic, labelled fake everywhere it appears.

For tests, benchmarks and demos of failure paths. Options (``options:`` of the model):

- ``latency_ms``     sleep before answering (default 0)
- ``failure_rate``   fraction of calls that raise (deterministic per prompt and call count)
- ``failure``        which error: ``server_error`` (default), ``rate_limited``, ``timeout``,
                     ``overloaded``, ``auth``, ``malformed``, or ``bug`` (a RuntimeError,
                     not a backend error: the fleet's handling of its own bugs)
- ``retry_after``    seconds carried by a fake 429 (default 1)
- ``answer``         ``right`` (default), ``wrong``, ``bad_json``, ``empty``, ``refusal``
- ``wrong_rate``     with ``right``: the share of prompts answered wrong on purpose
                     (see :mod:`workers.backends.fake_answers`)

The text always starts with ``[FAKE <model>]`` (a JSON answer carries it in its values) and
completions carry ``fake=True`` and ``fake_wrong`` (whether the answer was made wrong).
"""

from __future__ import annotations

import hashlib
import itertools
import time
from collections.abc import Iterator

from tierflow.core import errors
from tierflow.core.config import ModelConfig
from tierflow.core.tokens import estimate_tokens
from workers.backends.base import (
    Availability,
    Completion,
    CompletionRequest,
    StreamChunk,
    register_backend,
)
from workers.backends.fake_answers import fake_answer

_FAILURES: dict[str, type[errors.BackendError]] = {
    "server_error": errors.ServerError,
    "rate_limited": errors.RateLimited,
    "timeout": errors.BackendTimeout,
    "overloaded": errors.Overloaded,
    "auth": errors.AuthError,
    "malformed": errors.MalformedResponse,
}


class FakeBackend:
    provider = "fake"

    def __init__(self, model: ModelConfig) -> None:
        self.model = model
        self.options = dict(model.options)
        self._calls = itertools.count()

    def availability(self) -> Availability:
        if self.options.get("unavailable"):
            return Availability(False, "fake backend configured unavailable")
        return Availability(True)

    def _maybe_fail(self, request: CompletionRequest) -> None:
        rate = float(self.options.get("failure_rate", 0.0))
        if rate <= 0:
            return
        n = next(self._calls)
        digest = hashlib.sha256(f"{request.prompt}|{n}".encode()).digest()
        if digest[0] / 255.0 >= rate:
            return
        kind = str(self.options.get("failure", "server_error"))
        message = f"fake {kind} from {self.model.name} (FAKE)"
        if kind == "bug":  # not a BackendError: what a broken backend or SDK would raise
            raise RuntimeError(message)
        cls = _FAILURES.get(kind, errors.ServerError)
        if issubclass(cls, errors.RetryableBackendError):
            retry_after = (
                float(self.options.get("retry_after", 1.0)) if kind == "rate_limited" else None
            )
            raise cls(message, retry_after=retry_after)
        raise cls(message)

    def _text(self, request: CompletionRequest) -> tuple[str, bool | None]:
        label = f"[FAKE {self.model.name}]"
        answer = self.options.get("answer", "right")
        if answer == "empty":
            return "", None
        if answer == "refusal":
            return f"{label} I'm sorry, but I cannot help with that.", None
        if answer == "bad_json":
            return f"{label} {{not json", None
        digest = hashlib.sha256(request.prompt.encode()).hexdigest()[:12]
        wrong_rate = 1.0 if answer == "wrong" else float(self.options.get("wrong_rate", 0.0))
        return fake_answer(label, request.system, request.prompt, digest, wrong_rate)

    def complete(self, request: CompletionRequest) -> Completion:
        latency = float(self.options.get("latency_ms", 0)) / 1000.0
        if latency:
            time.sleep(latency)
        self._maybe_fail(request)
        text, wrong = self._text(request)
        return Completion(
            text=text,
            input_tokens=estimate_tokens((request.system or "") + request.prompt),
            output_tokens=estimate_tokens(text) if text else 0,
            model=self.model.model_id,
            provider=self.provider,
            finish_reason="stop",
            fake=True,
            fake_wrong=wrong,
        )

    def stream(self, request: CompletionRequest) -> Iterator[StreamChunk]:
        completion = self.complete(request)
        words = completion.text.split(" ")
        text = ""
        for i, word in enumerate(words):
            delta = word if i == 0 else " " + word
            text += delta
            last = i == len(words) - 1
            yield StreamChunk(delta, text, last, self.provider, completion if last else None)


@register_backend(
    "fake",
    options=(
        "latency_ms",
        "failure_rate",
        "failure",
        "retry_after",
        "answer",
        "wrong_rate",
        "unavailable",
    ),
)
def make_fake(model: ModelConfig) -> FakeBackend:
    return FakeBackend(model)
