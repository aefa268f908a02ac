"""The one error tree of tierflow.

    TierflowError
    ├── ConfigError                  bad llm_config.yaml or environment (names the field)
    ├── JobValidationError           bad submit_job input or broker message (names the field)
    │   └── IdempotencyConflict      an idempotency key reused with a different request
    ├── JobNotFound
    ├── JobWaitTimeout               wait() ran past its timeout; the job goes on
    ├── ModeError                    unknown mode, or a mode no tier can serve
    ├── NoModelAvailable             no model of a tier can serve now (reasons attached)
    └── BackendError                 a model call failed
        ├── RetryableBackendError    worth trying again later (retry_after in seconds, if known)
        │   ├── RateLimited          HTTP 429
        │   ├── Overloaded           Anthropic 529 / "overloaded"
        │   ├── ServerError          HTTP 5xx
        │   ├── BackendTimeout       no answer within the model's timeout
        │   └── BackendUnavailable   connection refused, server down
        └── PermanentBackendError    the same request will fail again on this model
            ├── AuthError            401/403, key missing or wrong
            ├── InvalidRequest       400/404/422
            ├── ContextTooLong       prompt over the model's context window
            ├── ContentRefused       the provider refused the content
            └── MalformedResponse    a body that does not follow the provider's wire format

The worker decides from this tree alone (``workers/outcome.py:decide``,
``workers/pipeline/call.py:account_failure``):

- a retryable error is tried again in the same tier (up to ``routing.max_retries_per_tier``, then
  the next tier) and counts toward the model's circuit breaker. Only a 429/529, or an error that
  carries ``retry_after``, cools the model down fleet-wide; a 5xx, a timeout or a refused
  connection cools nothing (one failure in a busy fleet would push every job off a model that
  answers most calls);
- an :class:`AuthError` cools its model for five minutes and is tried again in the tier like a
  retryable one, so another model there (another provider, another key) takes the job;
- any other permanent error falls back to the next tier at once.

Messages never contain API keys: backends build them from status codes and provider error types,
not from headers, and scrub them (:func:`tierflow.core.secrets.scrub`).
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic import ValidationError


class TierflowError(Exception):
    """Base of every error tierflow raises on purpose."""


class ConfigError(TierflowError):
    """Configuration is invalid; the message names the bad field."""


class JobValidationError(TierflowError, ValueError):
    """A job request or broker message is invalid; the message names the field."""


class IdempotencyConflict(JobValidationError):
    """An idempotency key already names a job submitted with a different request.

    Nothing is stored. ``key`` and ``job_id`` (the existing job) are attached; the message starts
    with ``idempotency_key:`` like every other validation error of that field.
    """

    def __init__(self, key: str, job_id: str) -> None:
        self.key = key
        self.job_id = job_id
        super().__init__(
            f"idempotency_key: {key!r} is already bound to job {job_id}, which was submitted "
            "with a different request (prompt, action, context, metadata, priority, deadline, "
            "stream or allow_degraded): use a new key for a new request"
        )


class JobNotFound(TierflowError, LookupError):
    pass


class JobWaitTimeout(TierflowError, TimeoutError):
    """``JobHandle.wait`` ran past its timeout; the job itself is still pending."""


class ModeError(TierflowError, ValueError):
    pass


class NoModelAvailable(TierflowError):
    """No model of a tier can serve now; ``reasons`` maps model name to why."""

    def __init__(self, tier: str, reasons: dict[str, str], retry_after: float | None = None):
        self.tier = tier
        self.reasons = reasons
        self.retry_after = retry_after
        detail = "; ".join(f"{m}: {r}" for m, r in reasons.items()) or "no enabled model"
        super().__init__(f"no model of tier {tier} can serve: {detail}")


class BackendError(TierflowError):
    """A model call failed. ``kind`` is a short stable label stored with the attempt."""

    kind = "backend_error"
    retryable = False

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class RetryableBackendError(BackendError):
    """Worth trying again later; ``retry_after`` (seconds) is the provider's ask, if any."""

    kind = "retryable"
    retryable = True

    def __init__(
        self, message: str, *, status_code: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, status_code=status_code)
        self.retry_after = retry_after


class RateLimited(RetryableBackendError):
    kind = "rate_limited"


class Overloaded(RetryableBackendError):
    kind = "overloaded"


class ServerError(RetryableBackendError):
    kind = "server_error"


class BackendTimeout(RetryableBackendError):
    kind = "timeout"


class BackendUnavailable(RetryableBackendError):
    kind = "unavailable"


class PermanentBackendError(BackendError):
    kind = "permanent"


class AuthError(PermanentBackendError):
    kind = "auth"


class InvalidRequest(PermanentBackendError):
    kind = "invalid_request"


class ContextTooLong(PermanentBackendError):
    kind = "context_too_long"


class ContentRefused(PermanentBackendError):
    kind = "content_refused"


class MalformedResponse(PermanentBackendError):
    kind = "malformed_response"


def describe_validation_error(
    exc: ValidationError, *, empty: str, name: Callable[[str], str] = str
) -> str:
    """``"field.path: message; ..."`` for every error of a pydantic ValidationError.

    ``empty`` names an error on the whole object (no field path); ``name`` renders a field path
    (the settings print ``TIERFLOW_<PATH>``). The one formatting of validation errors.
    """
    return "; ".join(
        f"{name('.'.join(str(p) for p in err['loc'])) if err['loc'] else empty}: {err['msg']}"
        for err in exc.errors()
    )
