"""Poison messages: refused once, stored with a reason, never redelivered in a loop.

Celery already acknowledges a message it cannot decode (pickle, say, which ``accept_content``
refuses) and rejects unknown tasks; this consumer also records each in ``dead_letters`` so the
operator sees what was refused and why. Malformed arguments of known tasks are handled by the
tasks themselves (see :mod:`workers.tasks`), or, when they do not even fit the task's signature,
by the ``task_failure`` handler below.

One level lower, kombu's Redis transport ends the whole worker ("Unrecoverable error") on a queue
item that is not a kombu envelope (not JSON, or JSON without ``properties``): anyone able to
write to the Redis list could stop one worker per item. :class:`SafeRedisTransport` (which the
fleet's ``broker_transport``, :mod:`workers.transport`, extends) drops such an item instead,
and records it. It is already off the list (``BRPOP`` took it), so it cannot come back.
"""

from __future__ import annotations

import inspect
import logging
from queue import Empty
from typing import Any

from celery import signals
from celery.worker.consumer import Consumer
from kombu.transport import redis as kombu_redis

from tierflow.store.dead_letters import record_dead_letter

log = logging.getLogger(__name__)


def _store(reason: str, message: Any, body: Any = None, queue: str | None = None) -> None:
    headers = getattr(message, "headers", None) or {}
    info = getattr(message, "delivery_info", None) or {}
    raw = body if body is not None else getattr(message, "body", None)
    try:
        record_dead_letter(
            reason,
            queue=info.get("routing_key") or queue,
            task=headers.get("task") if isinstance(headers, dict) else None,
            body=raw if isinstance(raw, str | bytes | None) else repr(raw),
        )
    except Exception:  # the database being down must not kill the consumer
        log.exception("could not store dead letter: %s", reason)


def _envelope_problem(message: Any) -> str | None:
    """Why a decoded queue item cannot be a kombu message, or None when its shape is right."""
    if not isinstance(message, dict):
        return f"a JSON {type(message).__name__}, not an object"
    properties = message.get("properties")
    if not isinstance(properties, dict):
        return "no 'properties' object"
    if "delivery_tag" not in properties:
        return "no 'properties.delivery_tag'"
    info = properties.get("delivery_info")
    if not isinstance(info, dict) or not {"exchange", "routing_key"} <= info.keys():
        return "'properties.delivery_info' lacks exchange and routing_key"
    if not isinstance(message.get("headers") or {}, dict):
        return "'headers' is not an object"
    if not isinstance(message.get("body", ""), str | type(None)):
        return "'body' is not a string"
    return None


class SafeRedisChannel(kombu_redis.Channel):
    def _brpop_read(self, **options: Any) -> Any:
        try:
            return super()._brpop_read(**options)
        except ValueError as exc:  # JSONDecodeError: BRPOP has already taken the item off
            _store(f"refused queue item: not JSON ({str(exc)[:200]})", None)
            log.error("dropped a queue item that is not JSON: %s", exc)
            return True

    def _get(self, queue: Any, timeout: Any = None) -> Any:
        try:
            return super()._get(queue)
        except ValueError as exc:
            _store(f"refused queue item: not JSON ({str(exc)[:200]})", None, queue=queue)
            raise Empty() from None


class SafeRedisTransport(kombu_redis.Transport):
    """kombu's Redis transport, minus the worker crash on a malformed queue item."""

    Channel = SafeRedisChannel

    def _deliver(self, message: Any, queue: str | None) -> None:
        problem = _envelope_problem(message)
        if problem is None:
            try:
                super()._deliver(message, queue)
                return
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                problem = f"{type(exc).__name__}: {str(exc)[:200]}"
        _store(f"refused queue item: not a kombu message ({problem})", None, message, queue)
        log.error("dropped a malformed queue item from %s: %s", queue, problem)


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
