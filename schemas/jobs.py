"""What a daemon submits (:class:`JobRequest`) and what it gets back (:class:`JobResult`)."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from tierflow.core.config import InputLimits

ACTION_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"
# Keys of ``context`` the router reads as switches (router/plan.py): booleans, nothing else, so
# the string "false" can never send a job to the API tier by being truthy.
ROUTING_FLAGS = ("affects_system_state", "user_visible_output")
# ``cache: false`` of a request is stored as this key of its metadata (the way the gateway
# stores ``metadata.daemon``): the worker reads it from the job row, and the fingerprint of a
# request that leaves ``cache`` at its default is the same as before the field existed.
CACHE_SWITCH = "cache"
# The provider of an attempt (and so of a job) served from the cache: ``cache:exact`` or
# ``cache:semantic`` (the model is the one that made the answer first).
CACHE_PROVIDER_PREFIX = "cache:"
# What a request's fingerprint covers: everything that changes the job's result. The
# idempotency key itself is not part of it (it is what the fingerprint is bound to).
FINGERPRINT_FIELDS = (
    "prompt",
    "action_type",
    "context",
    "metadata",
    "priority",
    "deadline",
    "stream",
    "allow_degraded",
)


def unstorable(value: Any) -> str | None:
    """Why PostgreSQL could not store ``value`` as text/JSONB (a NUL, a lone surrogate), or None."""
    if isinstance(value, str):
        if "\x00" in value:
            return "contains a NUL character"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "contains a character that is not valid UTF-8 (a lone surrogate)"
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            found = unstorable(key) or unstorable(item)
            if found:
                return found
    if isinstance(value, list | tuple):
        for item in value:
            found = unstorable(item)
            if found:
                return found
    return None


class JobRequest(BaseModel):
    """A job as submitted. Sizes are checked against ``inputs:`` of the config by ``size_problems``.

    ``deadline`` is an absolute UTC time after which the job ends ``expired``; ``priority`` runs
    0 (lowest) to 9 (highest), as the broker's priority does. The routing flags of ``context``
    (:data:`ROUTING_FLAGS`) must be booleans. A deadline already past is refused by
    :func:`router.client.submit_job`, not here: this model also builds stored rows in tests.
    """

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)

    prompt: str = Field(min_length=1)
    action_type: str = Field(default="unknown", pattern=ACTION_PATTERN)
    context: dict[str, Any] = Field(default_factory=dict)
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=200)
    priority: int = Field(default=5, ge=0, le=9)
    deadline: datetime | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    stream: bool = False
    allow_degraded: bool = False
    # False: never answer from the cache, nor store this answer in it (see CACHE_SWITCH)
    cache: bool = True

    @model_validator(mode="after")
    def _cache_switch(self) -> JobRequest:
        if self.metadata.get(CACHE_SWITCH) is False:
            self.cache = False
        elif not self.cache:
            self.metadata = {**self.metadata, CACHE_SWITCH: False}
        return self

    @field_validator("prompt")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("prompt is blank")
        problem = unstorable(value)
        if problem:
            raise ValueError(f"prompt {problem}")
        return value

    @field_validator("idempotency_key")
    @classmethod
    def _storable_key(cls, value: str | None) -> str | None:
        problem = unstorable(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("deadline")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("deadline must be timezone-aware (UTC)")
        return value

    @field_validator("context", "metadata")
    @classmethod
    def _json_safe(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"must be JSON-serialisable: {exc}") from None
        problem = unstorable(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("context")
    @classmethod
    def _boolean_flags(cls, value: dict[str, Any]) -> dict[str, Any]:
        errors = [
            InitErrorDetails(
                type=PydanticCustomError("bool_required", "must be a boolean"),
                loc=(flag,),
                input=value[flag],
            )
            for flag in ROUTING_FLAGS
            if flag in value and not isinstance(value[flag], bool)
        ]
        if errors:
            # raised as a ValidationError so each error's path is context.<flag>
            raise ValidationError.from_exception_data("context", errors)
        return value

    def fingerprint(self) -> str:
        """The sha256 (hex) of the request's canonical JSON: the fields of
        :data:`FINGERPRINT_FIELDS`, keys sorted at every level, compact separators, ASCII only,
        ``deadline`` as ISO 8601 in UTC with microseconds (or null). The same request gives the
        same fingerprint in any process, on any host, after any restart; the idempotency key is
        bound to it (see :func:`tierflow.store.create_job`).
        """
        deadline = (
            self.deadline.astimezone(UTC).isoformat(timespec="microseconds")
            if self.deadline is not None
            else None
        )
        body = {name: getattr(self, name) for name in FINGERPRINT_FIELDS} | {"deadline": deadline}
        # Through JSON once first: non-string keys nested in context/metadata become the strings
        # JSON (and JSONB) make of them, so sorting keys never compares an int with a str.
        plain = json.loads(json.dumps(body, allow_nan=False))
        canonical = json.dumps(plain, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return hashlib.sha256(canonical.encode("ascii")).hexdigest()

    def size_problems(self, limits: InputLimits) -> list[str]:
        """Every way this request exceeds the configured input limits (empty when it fits)."""
        problems = []
        if len(self.prompt) > limits.max_prompt_chars:
            problems.append(
                f"prompt: {len(self.prompt)} characters, limit is {limits.max_prompt_chars}"
            )
        for name, limit in (
            ("context", limits.max_context_bytes),
            ("metadata", limits.max_metadata_bytes),
        ):
            size = len(json.dumps(getattr(self, name)).encode())
            if size > limit:
                problems.append(f"{name}: {size} bytes of JSON, limit is {limit}")
        return problems


class AttemptSummary(BaseModel):
    attempt_no: int
    tier: str
    model: str | None
    status: str
    error: str | None = None
    quality: float | None = None
    issues: list[str] = Field(default_factory=list)
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    latency_ms: float | None = None
    cached: str | None = None  # exact | semantic: the answer came from the cache
    # ms from the end of what came before (the submit, the previous attempt) to its claim
    queue_ms: float | None = None


class JobResult(BaseModel):
    """A job's outcome. Costs are US dollars; latency is submit → finish in milliseconds."""

    job_id: str
    status: str
    text: str | None = None
    tier: str | None = None
    model: str | None = None
    provider: str | None = None
    attempts: list[AttemptSummary] = Field(default_factory=list)
    cost_usd: float = 0.0
    api_baseline_cost_usd: float = 0.0
    quality: float | None = None
    latency_ms: float | None = None
    error: str | None = None
    degraded: bool = False
    fake: bool = False
    input_tokens: int = 0
    output_tokens: int = 0
    finished_at: datetime | None = None
    # exact | semantic when the answer was served from the cache (cost 0), else None
    cached: str | None = None
    # Where latency_ms went, in ms (tierflow/store/timing.py), once finished: waiting in queues
    # (and for admission, countdowns), in model calls, in the fleet's own work; overhead_ms is
    # latency_ms less model_ms.
    queue_ms: float | None = None
    model_ms: float | None = None
    fleet_ms: float | None = None
    overhead_ms: float | None = None

    @property
    def ok(self) -> bool:
        return self.status == "succeeded"


def utcnow() -> datetime:
    return datetime.now(UTC)
