"""The replay backend: answers with the answers recorded in a labelled file (no model is called).

For running a labelled file through the real fleet (``tierflow eval FILE --fleet``): one tier's
model replays the file's cheap answers and the next tier's its strong answers, so routing, the
gate, escalation labels, audits and calibration all run on real models' recorded outputs.
Options (``options:`` of the model), checked at every start:

- ``file``  a labelled ``.jsonl`` or ``.csv`` as :func:`router.gate.evaluate.read_rows` reads it
            (required; every row must parse);
- ``side``  ``cheap`` (the ``cheap_answer`` column) or ``strong`` (``strong_answer``, which
            every row must then carry).

A request is answered with the recorded answer of the row whose prompt it carries: the request's
prompt itself, else its part before the context the fleet appends (``\\n\\nContext:``), else the
longest recorded prompt contained in it (an index built once per file). When two rows share a
prompt the first is answered. An unknown prompt is a permanent
:class:`~tierflow.core.errors.InvalidRequest` saying so. Usage is estimated (about four
characters a token: :func:`~tierflow.core.tokens.estimate_tokens`); the provider is
``replay``, and the completion's model reads ``replay:<side>:<model_id>``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from router.gate.evaluate import EvalFileError, EvalRow, read_rows
from tierflow.core import errors
from tierflow.core.config import ModelConfig
from tierflow.core.tokens import estimate_tokens
from workers.backends.base import (
    Availability,
    Completion,
    CompletionRequest,
    StreamChunk,
    register_backend,
    stream_by_completing,
)

SIDES = ("cheap", "strong")
CONTEXT_MARK = "\n\nContext:\n"  # what workers.pipeline.call.build_request appends


@dataclass(frozen=True)
class ReplayIndex:
    """A labelled file's rows by prompt (the first row of a prompt wins), longest prompt first
    for the containment search."""

    path: Path
    by_prompt: dict[str, EvalRow]
    longest_first: tuple[str, ...]

    def row_for(self, prompt: str) -> EvalRow | None:
        """The row whose prompt ``prompt`` carries (see the module's docstring); None if none."""
        found = self.by_prompt.get(prompt)
        if found is None and CONTEXT_MARK in prompt:
            found = self.by_prompt.get(prompt.split(CONTEXT_MARK, 1)[0])
        if found is None:
            known = next((p for p in self.longest_first if p in prompt), None)
            found = self.by_prompt[known] if known is not None else None
        return found


_INDEXES: dict[tuple[Path, int, int], ReplayIndex] = {}
_LOCK = threading.Lock()


def index_of(path: str | Path) -> ReplayIndex:
    """The file's index, built once per file version (path, size, mtime); ValueError (an
    :class:`~router.gate.evaluate.EvalFileError`) naming the file when it cannot be read."""
    resolved = Path(path).expanduser().resolve()
    try:
        stat = resolved.stat()
    except OSError as exc:
        raise EvalFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    key = (resolved, stat.st_size, stat.st_mtime_ns)
    with _LOCK:
        found = _INDEXES.get(key)
        if found is None:
            rows = read_rows(resolved)
            by_prompt: dict[str, EvalRow] = {}
            for row in rows:
                by_prompt.setdefault(row.prompt, row)
            ordered = tuple(sorted(by_prompt, key=len, reverse=True))
            found = _INDEXES[key] = ReplayIndex(resolved, by_prompt, ordered)
        return found


def validate_options(model: ModelConfig) -> None:
    """ValueError saying what is wrong with a replay model's ``file`` or ``side``."""
    side = model.options.get("side")
    if side not in SIDES:
        raise ValueError(f"replay: side must be one of {', '.join(SIDES)} (got {side!r})")
    file = model.options.get("file")
    if not isinstance(file, str) or not file.strip():
        raise ValueError("replay: file must name a labelled .jsonl or .csv file")
    index = index_of(file)  # EvalFileError is a ValueError naming the file and row
    if side == "strong":
        missing = sum(1 for row in index.by_prompt.values() if row.strong_answer is None)
        if missing:
            raise ValueError(
                f"replay: side strong needs a strong_answer in every row of {file} "
                f"({missing} without)"
            )


class ReplayBackend:
    """Answers from a labelled file's ``side`` (see the module's docstring)."""

    provider = "replay"

    def __init__(self, model: ModelConfig) -> None:
        validate_options(model)
        self.model = model
        self.side = str(model.options["side"])
        self.index = index_of(str(model.options["file"]))
        self.latency_s = float(model.options.get("latency_ms", 0)) / 1000.0

    def availability(self) -> Availability:
        return Availability(True)

    def complete(self, request: CompletionRequest) -> Completion:
        row = self.index.row_for(request.prompt)
        if row is None:
            raise errors.InvalidRequest(
                f"replay {self.model.name}: no row of {self.index.path.name} has the prompt "
                f"{request.prompt[:80]!r}"
            )
        if self.latency_s:
            time.sleep(self.latency_s)
        text = row.cheap_answer if self.side == "cheap" else row.strong_answer or ""
        finish = row.cheap_finish_reason if self.side == "cheap" else None
        return Completion(
            text=text,
            input_tokens=estimate_tokens((request.system or "") + request.prompt),
            output_tokens=estimate_tokens(text),
            model=f"replay:{self.side}:{self.model.model_id}",
            provider=self.provider,
            finish_reason=finish or "stop",
        )

    def stream(self, request: CompletionRequest) -> Iterator[StreamChunk]:
        return stream_by_completing(self, request)


@register_backend("replay", options=("file", "side", "latency_ms"), validate=validate_options)
def make_replay(model: ModelConfig) -> ReplayBackend:
    return ReplayBackend(model)
