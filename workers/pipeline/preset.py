"""An attempt whose answer is already in hand: the pipeline's own steps, CallModel skipped.

A packed call (:mod:`workers.packs`) answers several claimed attempts at once. Each member then
goes on exactly as if its own :class:`~workers.pipeline.call.CallModel` had returned its part:
:func:`preset_completion` (or :func:`preset_error`) writes onto the context what CallModel would
have written (the pick, the request, the completion or the error, the latency), and
:func:`run_after_call` runs every step of the list that comes after CallModel: Gate (the
member's own verdict), Price (its own share of the tokens), Persist (fenced by its own claim),
Decide, Notify, Metrics, Finish, Audit, Enqueue, and whatever is added there later. One step
is added for packs alone, :class:`NotePack`, just before Persist: it records the member's place
in its pack on the attempt's evidence.

The list is passed in (the fleet passes :data:`workers.pipeline.STEPS`), so a step added to the
pipeline after CallModel applies to packed members too, and the helpers here
(:func:`steps_before`, :func:`steps_from`, :func:`steps_after`) cut it by step type, never by
position.
"""

from __future__ import annotations

from collections.abc import Sequence

from tierflow.core.errors import BackendError
from workers.backends.base import Completion, CompletionRequest
from workers.limits import FleetLimits
from workers.pipeline.call import CallModel
from workers.pipeline.context import AttemptContext, Step, run_steps
from workers.pipeline.persist import Persist
from workers.selection import Pick


def _index(steps: Sequence[Step], kind: type[Step]) -> int:
    for i, step in enumerate(steps):
        if isinstance(step, kind):
            return i
    raise ValueError(f"no {kind.__name__} step in {list(steps)}")


def steps_before(steps: Sequence[Step], kind: type[Step]) -> tuple[Step, ...]:
    """The steps before the first ``kind`` step (ValueError when there is none)."""
    return tuple(steps[: _index(steps, kind)])


def steps_from(steps: Sequence[Step], kind: type[Step]) -> tuple[Step, ...]:
    """The first ``kind`` step and every step after it."""
    return tuple(steps[_index(steps, kind) :])


def steps_after(steps: Sequence[Step], kind: type[Step]) -> tuple[Step, ...]:
    """Every step after the first ``kind`` step."""
    return tuple(steps[_index(steps, kind) + 1 :])


class NotePack(Step):
    """The member's place in its pack (``ctx.pack``) on the outcome's evidence, under
    ``quality_components.pack``, before the outcome is stored."""

    def applies(self, ctx: AttemptContext) -> bool:
        return ctx.pack is not None and ctx.outcome is not None and ctx.attempt is None

    def run(self, ctx: AttemptContext) -> None:
        assert ctx.outcome is not None
        evidence = dict(ctx.outcome.get("quality_components") or {})
        evidence["pack"] = ctx.pack
        ctx.outcome["quality_components"] = evidence


def after_call(steps: Sequence[Step]) -> tuple[Step, ...]:
    """The steps after CallModel, with :class:`NotePack` just before Persist."""
    rest = steps_after(steps, CallModel)
    at = _index(rest, Persist)
    return (*rest[:at], NotePack(), *rest[at:])


def _preset(
    ctx: AttemptContext,
    pick: Pick,
    limits: FleetLimits,
    request: CompletionRequest,
    latency_ms: float,
    pack: dict[str, object] | None,
) -> None:
    if not ctx.making:
        raise ValueError(f"attempt {ctx.job_id}#{ctx.attempt_no} is not being made")
    ctx.pick, ctx.limits, ctx.request, ctx.latency_ms = pick, limits, request, latency_ms
    ctx.pack = pack


def preset_completion(
    ctx: AttemptContext,
    pick: Pick,
    limits: FleetLimits,
    request: CompletionRequest,
    completion: Completion,
    latency_ms: float,
    pack: dict[str, object] | None = None,
) -> None:
    """Set what CallModel sets after a successful call: ``completion`` is this attempt's answer
    (with its own token usage), ``request`` its own request (the gate's judge, critic and
    samples read it). ValueError when the attempt is not being made (not claimed, settled)."""
    _preset(ctx, pick, limits, request, latency_ms, pack)
    ctx.completion = completion


def preset_error(
    ctx: AttemptContext,
    pick: Pick,
    limits: FleetLimits,
    request: CompletionRequest,
    error: BackendError,
    latency_ms: float,
    pack: dict[str, object] | None = None,
    *,
    input_tokens: int = 0,
    output_tokens: int = 0,
) -> None:
    """Set what CallModel sets after a failed call: the error and the attempt's fields. A
    member whose part of a packed answer is unusable still carries its share of the call's
    tokens (and their cost): the call was made and its usage is counted once, across members."""
    _preset(ctx, pick, limits, request, latency_ms, pack)
    ctx.error = error
    outcome = CallModel._error_fields(ctx)
    if input_tokens or output_tokens:
        outcome["input_tokens"], outcome["output_tokens"] = input_tokens, output_tokens
        outcome["cost_usd"] = pick.model.price(input_tokens, output_tokens)
    ctx.outcome = outcome


def run_after_call(ctx: AttemptContext, steps: Sequence[Step]) -> AttemptContext:
    """Run the steps of ``steps`` after CallModel (see :func:`after_call`) on a preset
    attempt; return its context."""
    return run_steps(ctx, after_call(steps))
