"""Poison messages: refused once, stored with a reason, never redelivered in a loop.

Celery already acknowledges a message it cannot decode (pickle, say, which ``accept_content``
refuses) and rejects unknown tasks; this consumer also records each in ``dead_letters`` so the
operator sees what was refused and why. Malformed arguments of known tasks are handled by the
tasks themselves (see :mod:`workers.tasks`).
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

from celery import signals
from celery.worker.consumer import Consumer

log = logging.getLogger(__name__)


def _store(reason: str, message: Any, body: Any = None) -> None:
    from workers.persistence import record_dead_letter

    headers = getattr(message, "headers", None) or {}
    info = getattr(message, "delivery_info", None) or {}
    raw = body if body is not None else getattr(message, "body", None)
    try:
        record_dead_letter(
            reason,
            queue=info.get("routing_key"),
            task=headers.get("task"),
            body=raw if isinstance(raw, str | bytes) else repr(raw),
        )
    except Exception:  # the database being down must not kill the consumer
        log.exception("could not store dead letter: %s", reason)


class DeadLetterConsumer(Consumer):
    def on_decode_error(self, message: Any, exc: Exception) -> None:
        _store(
            f"refused message: cannot decode content type {message.content_type!r} "
            f"({type(exc).__name__}: {str(exc)[:200]})",
            message,
        )
        super().on_decode_error(message, exc)

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        name = (getattr(message, "headers", None) or {}).get("task")
        _store(f"refused message: unknown task {name!r}", message, body)
        log.error("refused message for unknown task %r", name)
        message.reject_log_error(log, self.connection_errors)

    def on_unknown_message(self, body: Any, message: Any) -> None:
        _store("refused message: not a Celery task message", message, body)
        super().on_unknown_message(body, message)

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        _store(f"refused message: invalid task message ({str(exc)[:200]})", message, body)
        super().on_invalid_task(body, message, exc)


def _binds(task: Any, args: Any, kwargs: Any) -> bool:
    """Whether ``args``/``kwargs`` fit the task's signature (a TypeError then is a bug, not
    a poison message)."""
    try:
        inspect.signature(task.run).bind(*(args or ()), **(kwargs or {}))
    except (TypeError, ValueError, AttributeError):
        return False
    return True


@signals.task_failure.connect
def _task_failed(
    sender: Any = None,
    exception: BaseException | None = None,
    args: Any = None,
    kwargs: Any = None,
    **_: Any,
) -> None:
    """A task called with arguments that do not fit it (wrong count, unknown keyword) is a
    poison message: store it. It is already acknowledged (``task_acks_on_failure``)."""
    if isinstance(exception, TypeError) and not _binds(sender, args, kwargs):
        from workers.persistence import record_dead_letter

        info = getattr(getattr(sender, "request", None), "delivery_info", None) or {}
        try:
            record_dead_letter(
                f"refused message: bad arguments for {getattr(sender, 'name', '?')}: {exception}",
                queue=info.get("routing_key"),
                task=getattr(sender, "name", None),
                body=f"args={args!r} kwargs={kwargs!r}"[:500],
            )
        except Exception:
            log.exception("could not store dead letter")
