"""Continuous batching: many sequences decoded together in one llama.cpp context.

One scheduler thread owns the context. Between decode steps it admits waiting requests into free
slots (each slot is a llama.cpp sequence id with its own KV cells), then builds one
``llama_batch`` holding, for every running sequence, its next token (or the next chunk of its
prompt), calls ``llama_decode`` once, and samples each sequence's next token from its own row of
logits with its own sampler. A sequence that ends (end of text, a stop string, ``max_tokens``,
its slot's context full), is cancelled by its consumer, or passes its deadline frees its slot for
the next request. The slot keeps that sequence's KV cells: the next request admitted to it reuses
the cells of the prefix its prompt shares with them and the rest are removed
(``llama_memory_seq_rm``), so requests sharing a long system text decode it once per slot.

Promises:

- A request sees only its own sequence: the same prompt gives the same greedy answer alone and
  in a batch, except where batched kernels round differently (measured in the tests).
- ``slot_ctx`` tokens per sequence (prompt and completion); a longer prompt fails that request
  alone with :class:`~tierflow.core.errors.ContextTooLong` before it takes a slot; a completion
  reaching the slot's end stops with ``finish_reason="length"``.
- A consumer that stops reading (:meth:`BatchRequest.cancel`, e.g. a client that went away)
  frees its slot at the next step.
- ``deadline`` (``time.monotonic()`` seconds) bounds waiting plus generation:
  :class:`~tierflow.core.errors.BackendTimeout` past it.
"""

from __future__ import annotations

import codecs
import ctypes
import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from tierflow.core import errors
from workers.engine.loader import N_THREADS, import_llama_cpp

log = logging.getLogger("workers.engine.batcher")

N_BATCH = 512  # tokens one decode step may hold (prompt chunks fill what decoding leaves)
SAMPLER_TOP_K, SAMPLER_TOP_P, SAMPLER_MIN_P = 40, 0.95, 0.05  # llama-cpp-python's defaults


@dataclass(frozen=True)
class Piece:
    """What the scheduler hands a consumer: text, or the end (``finish``), or an ``error``."""

    text: str = ""
    finish: str | None = None  # "stop" or "length" on the last piece
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0  # from admission to the end, waiting for a slot excluded
    error: errors.BackendError | None = None


@dataclass(eq=False)
class BatchRequest:
    """One generation in the scheduler: its prompt tokens, limits and the queue it answers on."""

    tokens: list[int]
    max_tokens: int
    temperature: float
    stop: tuple[str, ...]
    deadline: float | None
    out: queue.SimpleQueue[Piece] = field(default_factory=queue.SimpleQueue)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        """Stop generating; the scheduler frees the slot at its next step."""
        self.cancelled.set()


@dataclass(eq=False)
class _Running:
    """A request holding a slot: where its prompt and its text stand."""

    request: BatchRequest
    seq: int
    sampler: Any
    started: float
    fed: int = 0  # prompt tokens already decoded (or reused from the slot's last sequence)
    decoded: list[int] = field(default_factory=list)  # generated tokens already decoded
    next_token: int | None = None  # sampled, to be decoded in the next step
    generated: int = 0
    text: str = ""  # decoded so far, stop strings not yet cut
    sent: int = 0  # characters of text already handed out
    decoder: Any = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace"))

    @property
    def position(self) -> int:
        return self.fed + max(0, self.generated - 1)


class Batcher:
    """The scheduler over one llama.cpp context of ``slots`` sequences of ``slot_ctx`` tokens.

    ``llm`` is a loaded ``llama_cpp.Llama`` whose model (weights, vocabulary) is shared; the
    batcher makes its own context. Thread-safe: :meth:`submit` from any thread.
    """

    def __init__(self, llm: Any, *, slots: int, slot_ctx: int) -> None:
        if slots < 1 or slot_ctx < 16:
            raise errors.ConfigError("the engine needs at least 1 slot of at least 16 tokens")
        self._lib = import_llama_cpp()
        self._llm = llm
        self.slots, self.slot_ctx = slots, slot_ctx
        self._vocab = llm._model.vocab
        params = self._lib.llama_context_default_params()
        params.n_ctx = slots * slot_ctx
        params.n_batch = params.n_ubatch = N_BATCH
        params.n_seq_max = slots
        params.n_threads = params.n_threads_batch = N_THREADS
        params.no_perf = True
        params.kv_unified = True  # one pool of cells; each sequence is bounded by slot_ctx here
        self._ctx = self._lib.llama_init_from_model(llm._model.model, params)
        if not self._ctx:
            raise errors.BackendUnavailable("llamacpp: cannot create a context for the engine")
        self._memory = self._lib.llama_get_memory(self._ctx)
        self._batch = self._lib.llama_batch_init(N_BATCH, 0, 1)
        self._waiting: deque[BatchRequest] = deque()
        self._running: list[_Running] = []
        self._free = list(range(slots))
        # Tokens whose KV cells a free slot still holds (its last sequence): a new prompt that
        # starts the same way reuses them (a prefix cache; requests of one action share a long
        # system text).
        self._kept: dict[int, list[int]] = {seq: [] for seq in range(slots)}
        self.reused_tokens = 0  # prompt tokens not recomputed thanks to the kept cells
        self._cond = threading.Condition()
        self._closed = False
        self.steps = 0  # decode steps run (the tests and the bench read it)
        self.peak_running = 0  # most sequences decoded in one step
        self._thread = threading.Thread(target=self._loop, name="engine-batcher", daemon=True)
        self._thread.start()

    # ---- the consumers' side ---------------------------------------------------------------

    def submit(self, request: BatchRequest) -> None:
        """Queue ``request``; ContextTooLong at once when its prompt cannot fit a slot."""
        if len(request.tokens) >= self.slot_ctx:
            raise errors.ContextTooLong(
                f"llamacpp: Requested tokens ({len(request.tokens)}) exceed context window of "
                f"{self.slot_ctx}"
            )
        with self._cond:
            if self._closed:
                raise errors.BackendUnavailable("llamacpp: the engine is closed")
            self._waiting.append(request)
            self._cond.notify()

    def busy(self) -> tuple[int, int]:
        """(sequences running, requests waiting for a slot)."""
        with self._cond:
            return len(self._running), len(self._waiting)

    def close(self) -> None:
        """Stop the scheduler, fail what is left, free the context."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=30)
        for request in [r.request for r in self._running] + list(self._waiting):
            request.out.put(Piece(error=errors.BackendUnavailable("llamacpp: engine closed")))
        if not self._thread.is_alive():
            self._lib.llama_batch_free(self._batch)
            self._lib.llama_free(self._ctx)

    # ---- the scheduler ---------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not self._running and not self._waiting:
                    self._cond.wait()
                if self._closed:
                    return
                self._admit()
            try:
                self._step()
            except Exception as exc:  # a failed step fails its sequences, never the engine
                log.exception("decode step failed")
                for running in list(self._running):
                    self._finish(running, error=errors.ServerError(f"llamacpp: {exc}"))

    def _admit(self) -> None:
        """Move waiting requests into free slots (called holding the condition)."""
        now = time.monotonic()
        kept: deque[BatchRequest] = deque()
        while self._waiting:
            request = self._waiting.popleft()
            if request.cancelled.is_set():
                continue
            if request.deadline is not None and now > request.deadline:
                request.out.put(
                    Piece(error=errors.BackendTimeout("llamacpp: engine busy past the timeout"))
                )
                continue
            if not self._free:
                kept.append(request)
                continue
            seq, reuse = self._slot_for(request.tokens)
            self._free.remove(seq)
            sampler = self._sampler(request)
            self._running.append(_Running(request, seq, sampler, time.perf_counter(), fed=reuse))
        self._waiting = kept

    def _slot_for(self, tokens: list[int]) -> tuple[int, int]:
        """The free slot whose kept cells share the longest prefix with ``tokens``, and how many
        of them it reuses (at least the last prompt token is always decoded again, for logits);
        the rest of its cells are removed."""
        best, reuse = self._free[0], 0
        for seq in self._free:
            common = _common_prefix(self._kept[seq], tokens)
            if common > reuse:
                best, reuse = seq, common
        reuse = min(reuse, len(tokens) - 1)
        if reuse <= 0 or not self._lib.llama_memory_seq_rm(self._memory, best, reuse, -1):
            self._lib.llama_memory_seq_rm(self._memory, best, -1, -1)
            reuse = 0
        self._kept[best] = []
        self.reused_tokens += reuse
        return best, reuse

    def _sampler(self, request: BatchRequest) -> Any:
        lib = self._lib
        chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        if request.temperature <= 0:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_greedy())
            return chain
        for sampler in (
            lib.llama_sampler_init_top_k(SAMPLER_TOP_K),
            lib.llama_sampler_init_top_p(SAMPLER_TOP_P, 1),
            lib.llama_sampler_init_min_p(SAMPLER_MIN_P, 1),
            lib.llama_sampler_init_temp(request.temperature),
            lib.llama_sampler_init_dist(lib.LLAMA_DEFAULT_SEED),
        ):
            lib.llama_sampler_chain_add(chain, sampler)
        return chain

    def _step(self) -> None:
        """One ``llama_decode`` over every running sequence, then one token sampled for each."""
        now = time.monotonic()
        for running in list(self._running):
            request = running.request
            if request.cancelled.is_set():
                self._finish(running, reason=None)
            elif request.deadline is not None and now > request.deadline:
                self._finish(running, error=errors.BackendTimeout("llamacpp: past the timeout"))
        if not self._running:
            return
        batch, n, rows = self._batch, 0, []
        for running in self._running:  # one token each for sequences already generating
            if running.next_token is not None:
                self._add(n, running.next_token, running.position, running.seq, True)
                running.decoded.append(running.next_token)
                rows.append((running, n))
                n += 1
        for running in self._running:  # prompt chunks fill the rest of the batch
            left = len(running.request.tokens) - running.fed
            if running.next_token is not None or left == 0 or n >= N_BATCH:
                continue
            take = min(left, N_BATCH - n)
            for i in range(take):
                last = running.fed + i == len(running.request.tokens) - 1
                self._add(
                    n, running.request.tokens[running.fed + i], running.fed + i, running.seq, last
                )
                if last:
                    rows.append((running, n))
                n += 1
            running.fed += take
        batch.n_tokens = n
        self.steps += 1
        self.peak_running = max(self.peak_running, len(rows))
        code = self._lib.llama_decode(self._ctx, batch)
        if code != 0:
            raise RuntimeError(f"llama_decode returned {code}")
        for running, row in rows:
            token = self._lib.llama_sampler_sample(running.sampler, self._ctx, row)
            self._take(running, token)

    def _add(self, i: int, token: int, pos: int, seq: int, logits: bool) -> None:
        batch = self._batch
        batch.token[i] = token
        batch.pos[i] = pos
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = seq
        batch.logits[i] = logits

    def _take(self, running: _Running, token: int) -> None:
        """Account for a sampled token: end, or text for the consumer and a token to decode."""
        request = running.request
        if self._lib.llama_vocab_is_eog(self._vocab, token):
            self._finish(running, reason="stop")
            return
        running.generated += 1
        piece = self._piece(token)
        running.text += running.decoder.decode(piece)
        cut = _stop_at(running.text, request.stop)
        if cut is not None:
            running.text = running.text[:cut]
            self._finish(running, reason="stop")
            return
        if running.generated >= request.max_tokens or running.position + 1 >= self.slot_ctx:
            running.text += running.decoder.decode(b"", final=True)
            self._finish(running, reason="length")
            return
        safe = len(running.text) - _held_back(running.text, request.stop)
        if safe > running.sent:
            request.out.put(Piece(running.text[running.sent : safe]))
            running.sent = safe
        running.next_token = token

    def _piece(self, token: int) -> bytes:
        buf = ctypes.create_string_buffer(64)
        size = self._lib.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
        if size < 0:
            buf = ctypes.create_string_buffer(-size)
            size = self._lib.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
        return buf.raw[:size]

    def _finish(
        self,
        running: _Running,
        *,
        reason: str | None = None,
        error: errors.BackendError | None = None,
    ) -> None:
        """Free the slot (its cells kept for a prompt that starts the same way, unless it failed);
        tell the consumer how it ended."""
        self._running.remove(running)
        if error is None:
            self._kept[running.seq] = running.request.tokens[: running.fed] + running.decoded
        else:
            self._lib.llama_memory_seq_rm(self._memory, running.seq, -1, -1)
        self._lib.llama_sampler_free(running.sampler)
        with self._cond:
            self._free.append(running.seq)
        request = running.request
        if error is not None:
            request.out.put(Piece(error=error))
        elif reason is not None:
            if len(running.text) > running.sent:
                request.out.put(Piece(running.text[running.sent :]))
            request.out.put(
                Piece(
                    finish=reason,
                    prompt_tokens=len(request.tokens),
                    completion_tokens=running.generated,
                    seconds=time.perf_counter() - running.started,
                )
            )


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _stop_at(text: str, stops: tuple[str, ...]) -> int | None:
    """Where the first stop string starts in ``text``, or None."""
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters may still begin a stop string (not yet safe to send)."""
    longest = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:k]):
                longest = k
                break
    return longest
