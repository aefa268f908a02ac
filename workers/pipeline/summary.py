"""What one delivery of ``run_attempt`` did, in one line: the task's result as Flower shows it.

``fallback: rejected by the gate on local_fast/phi3``, ``succeed: passed on api_fallback/claude``,
``wait``; a replay says so. The model is known only once the attempt ran, so it is here rather
than in the message's name (see :func:`router.dispatch.shadow_name`).
"""

from __future__ import annotations

from workers.pipeline.context import AttemptContext


def summarize(ctx: AttemptContext) -> str:
    move = ctx.move.kind if ctx.move is not None else "done"
    attempt = ctx.attempt
    if attempt is None:
        return move
    where = f"{attempt.tier}/{attempt.model}" if attempt.model else attempt.tier
    replay = " (replayed)" if ctx.replayed else ""
    return f"{move}: {attempt.status} on {where}{replay}"
