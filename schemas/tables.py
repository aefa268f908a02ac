"""SQLAlchemy tables: jobs, their attempts, superseded calls, mode switches, dead letters,
the gateway's API keys (hashed), and the provider batches with their deferred requests.

Idempotency lives here: ``jobs.idempotency_key`` and ``attempts (job_id, attempt_no)`` are unique,
so a redelivered message can never create a second result or charge a cost twice; a superseded
call is recorded once per delivery (``superseded_calls (job_id, attempt_no, worker)``).
``jobs.request_fingerprint`` binds a key to the request it was first used with (a job without
a key has none).
``jobs.status`` is a plain string (no CHECK constraint, no enum type): the values are
:class:`tierflow.core.constants.JobStatus`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy import text as sql_text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

JsonType = JSON().with_variant(JSONB(), "postgresql")
Money = Numeric(14, 8)


class Base(DeclarativeBase):
    pass


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    # sha256 hex of the request the key was first used with (JobRequest.fingerprint); None on
    # rows stored before migration 0003, which match any request with their key.
    request_fingerprint: Mapped[str | None] = mapped_column(String(64))
    # in no index (migrations 0010, 0011): the open jobs are ix_jobs_open's, and with the
    # status unindexed a job's moves update its row in place (HOT); no query selects by action
    status: Mapped[str] = mapped_column(String(16))
    action_type: Mapped[str] = mapped_column(String(64))
    prompt: Mapped[str] = mapped_column(Text)
    context: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    job_metadata: Mapped[dict[str, Any]] = mapped_column("metadata", JsonType, default=dict)
    priority: Mapped[int] = mapped_column(Integer, default=5)
    stream: Mapped[bool] = mapped_column(Boolean, default=False)
    allow_degraded: Mapped[bool] = mapped_column(Boolean, default=False)
    deadline: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    complexity: Mapped[str | None] = mapped_column(String(16))
    plan: Mapped[dict[str, Any] | None] = mapped_column(JsonType)
    text: Mapped[str | None] = mapped_column(Text)
    tier: Mapped[str | None] = mapped_column(String(32))
    model: Mapped[str | None] = mapped_column(String(100))
    provider: Mapped[str | None] = mapped_column(String(32))
    quality: Mapped[float | None] = mapped_column(Float)
    degraded: Mapped[bool] = mapped_column(Boolean, default=False)
    fake: Mapped[bool] = mapped_column(Boolean, default=False)
    cost_usd: Mapped[float] = mapped_column(Money, default=0)
    api_baseline_cost_usd: Mapped[float] = mapped_column(Money, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    batch_id: Mapped[str | None] = mapped_column(String(36), ForeignKey("batches.id"), index=True)
    batch_line: Mapped[int | None] = mapped_column(Integer)  # the job's line in its batch file

    attempts: Mapped[list[Attempt]] = relationship(
        back_populates="job", order_by="Attempt.attempt_no", cascade="all, delete-orphan"
    )

    __table_args__ = (
        # the jobs not finished (every terminal write sets finished_at), for the sweeps
        Index("ix_jobs_open", "deadline", postgresql_where=sql_text("finished_at IS NULL")),
        Index("ix_jobs_created_at", "created_at"),  # cost summaries select jobs by time
    )


class Attempt(Base):
    """One try of one job on one tier; ``attempt_no`` counts from 0 within the job."""

    __tablename__ = "attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # found by uq_attempts_job_attempt, which leads with it (no index of its own: 0010)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    attempt_no: Mapped[int] = mapped_column(Integer)
    step: Mapped[int] = mapped_column(Integer)
    tier: Mapped[str] = mapped_column(String(32))
    model: Mapped[str | None] = mapped_column(String(100))
    provider: Mapped[str | None] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))
    worker: Mapped[str | None] = mapped_column(String(200))
    # Celery's retry number of the holding delivery: a retry (higher) of the same task id takes
    # the attempt back at once; a redelivery of the same run (same number) respects its lease.
    delivery_retry: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    input_tokens: Mapped[int] = mapped_column(Integer, default=0)
    output_tokens: Mapped[int] = mapped_column(Integer, default=0)
    latency_ms: Mapped[float | None] = mapped_column(Float)
    cost_usd: Mapped[float] = mapped_column(Money, default=0)
    text: Mapped[str | None] = mapped_column(Text)
    quality_score: Mapped[float | None] = mapped_column(Float)
    quality_components: Mapped[dict[str, Any] | None] = mapped_column(JsonType)
    quality_issues: Mapped[list[str] | None] = mapped_column(JsonType)
    error_kind: Mapped[str | None] = mapped_column(String(32))
    error: Mapped[str | None] = mapped_column(Text)
    retry_after_s: Mapped[float | None] = mapped_column(Float)
    fake: Mapped[bool] = mapped_column(Boolean, default=False)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # exact | semantic: the answer was served from the cache (no model was called, cost 0);
    # cache_saved_usd is what the answer cost when it was first made.
    cached: Mapped[str | None] = mapped_column(String(16))
    cache_saved_usd: Mapped[float | None] = mapped_column(Money)

    job: Mapped[Job] = relationship(back_populates="attempts")

    __table_args__ = (UniqueConstraint("job_id", "attempt_no", name="uq_attempts_job_attempt"),)


class SupersededCall(Base):
    """A model call whose outcome was not stored: the delivery that made it had lost the
    attempt's lease to another (it stalled past the lease, say), so the claim fenced its write
    out. The call was still made and paid for; its cost counts in the job's and the fleet's.
    """

    __tablename__ = "superseded_calls"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    attempt_no: Mapped[int] = mapped_column(Integer)
    worker: Mapped[str] = mapped_column(String(200))  # "host:task_id" of the late delivery
    tier: Mapped[str | None] = mapped_column(String(32))
    model: Mapped[str | None] = mapped_column(String(100))
    provider: Mapped[str | None] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))  # the outcome it would have stored
    input_tokens: Mapped[int] = mapped_column(Integer, default=0)
    output_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cost_usd: Mapped[float] = mapped_column(Money, default=0)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        UniqueConstraint("job_id", "attempt_no", "worker", name="uq_superseded_calls_delivery"),
    )


class ModeSwitch(Base):
    """History of fleet mode changes (second seed: time, from, to, manual or automatic)."""

    __tablename__ = "mode_switches"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    from_mode: Mapped[str] = mapped_column(String(16))
    to_mode: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)


class DeadLetter(Base):
    """A broker message refused as poison (not JSON, unknown task, wrong schema), with why."""

    __tablename__ = "dead_letters"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    queue: Mapped[str | None] = mapped_column(String(100))
    task: Mapped[str | None] = mapped_column(String(200))
    job_id: Mapped[str | None] = mapped_column(String(36), index=True)
    reason: Mapped[str] = mapped_column(Text)
    body_excerpt: Mapped[str | None] = mapped_column(Text)


class GateLabel(Base):
    """Whether a cheap answer was good: from a daemon's feedback or an audit on the next tier.

    ``score`` and ``features`` are what the gate saw when it judged the answer, so the learned
    verifier and the calibrated threshold can be fitted again from these rows alone.
    """

    __tablename__ = "gate_labels"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    job_id: Mapped[str] = mapped_column(String(36), ForeignKey("jobs.id"), index=True)
    action_type: Mapped[str] = mapped_column(String(100), index=True)
    source: Mapped[str] = mapped_column(String(20))  # feedback | audit
    good: Mapped[bool] = mapped_column(Boolean)
    gate_passed: Mapped[bool | None] = mapped_column(Boolean)
    score: Mapped[float | None] = mapped_column(Float)
    features: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    note: Mapped[str | None] = mapped_column(Text)
    cost_usd: Mapped[float] = mapped_column(Money, default=0)  # what an audit call cost


class Batch(Base):
    """A named set of jobs run as one: its progress, cost ceiling and state.

    The name is unique: submitting the same name again resumes the batch (each job's
    idempotency key is derived from the batch and its line).
    """

    __tablename__ = "batches"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    max_cost_usd: Mapped[float | None] = mapped_column(Money)
    submitted: Mapped[int] = mapped_column(Integer, default=0)  # lines read so far
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Its API-tier calls may go through the providers' Batch APIs (a deadline of a day or more).
    provider_batch: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")


class ApiKey(Base):
    """A gateway API key of one daemon: only the sha256 (hex) of the key is stored, never the key.

    ``daemon`` is the id the gateway puts into every job the key submits (``metadata.daemon``),
    so budgets and caching can scope by it. A revoked key (``revoked_at`` set) opens nothing.
    """

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    daemon: Mapped[str] = mapped_column(String(64), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class GatewayFile(Base):
    """A file of OpenAI's Files API at the gateway (:mod:`tierflow.app.gateway_files`): an
    uploaded batch input (``purpose`` ``batch``) or a batch's output or error file
    (``batch_output``), its bytes stored here, owned by one daemon."""

    __tablename__ = "gateway_files"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # file-<32 hex>
    daemon: Mapped[str] = mapped_column(String(64), index=True)
    purpose: Mapped[str] = mapped_column(String(32))
    filename: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(Integer)  # bytes
    content: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class GatewayBatch(Base):
    """A batch of OpenAI's Batch API at the gateway (:mod:`tierflow.app.gateway_batches`): its
    input file, the tierflow batch its lines became (none when the file was refused), its
    OpenAI status and times, and what the submitter refused (``refused``: line, code, message).
    ``submitted_at``: every line was stored and sent. ``completed``/``failed``: the final
    request counts, set when the batch ended."""

    __tablename__ = "gateway_batches"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # batch_<32 hex>
    daemon: Mapped[str] = mapped_column(String(64))
    batch_id: Mapped[str | None] = mapped_column(String(36), ForeignKey("batches.id"))
    input_file_id: Mapped[str] = mapped_column(String(40))
    endpoint: Mapped[str] = mapped_column(String(64))
    completion_window: Mapped[str] = mapped_column(String(8))
    status: Mapped[str] = mapped_column(String(16))
    errors: Mapped[list[Any] | None] = mapped_column(JsonType)
    refused: Mapped[list[Any] | None] = mapped_column(JsonType)
    batch_metadata: Mapped[dict[str, Any] | None] = mapped_column("metadata", JsonType)
    total: Mapped[int] = mapped_column(Integer, default=0)
    completed: Mapped[int | None] = mapped_column(Integer)
    failed: Mapped[int | None] = mapped_column(Integer)
    output_file_id: Mapped[str | None] = mapped_column(String(40))
    error_file_id: Mapped[str | None] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    in_progress_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    submitted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finalizing_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    failed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    cancelling_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    cancelled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("ix_gateway_batches_daemon_created", "daemon", "created_at"),)


class ProviderBatch(Base):
    """One batch job at a provider (an OpenAI Batch, an Anthropic Message Batch): the requests
    of deferred API-tier attempts of one (provider, model, base URL), submitted together.

    ``status`` is ours (:class:`tierflow.core.constants.ProviderBatchStatus`); ``remote_status``
    and ``request_counts`` are the provider's as last polled.
    """

    __tablename__ = "provider_batches"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    provider: Mapped[str] = mapped_column(String(32))
    model: Mapped[str] = mapped_column(String(100))  # the model's name in the config
    base_url: Mapped[str | None] = mapped_column(String(500))
    status: Mapped[str] = mapped_column(String(16), index=True)
    remote_id: Mapped[str | None] = mapped_column(String(200))
    input_file_id: Mapped[str | None] = mapped_column(String(200))
    remote_status: Mapped[str | None] = mapped_column(String(32))
    request_counts: Mapped[dict[str, Any] | None] = mapped_column(JsonType)
    requests: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    polled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ProviderBatchItem(Base):
    """One deferred attempt's request: the exact body sent, its ``custom_id`` (the provider's
    key back to it), the provider batch that carries it, and its result once that ended.

    One per attempt (``(job_id, attempt_no)`` unique), so a redelivered deferral stores nothing
    twice. ``deferred_by`` is the delivery that deferred the attempt (the attempt row's worker
    until a resume takes it). ``result`` holds the answer's text, usage and stop reason, or the
    error's kind and message.
    """

    __tablename__ = "provider_batch_items"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    attempt_no: Mapped[int] = mapped_column(Integer)
    step: Mapped[int] = mapped_column(Integer)
    retries_in_step: Mapped[int] = mapped_column(Integer, default=0)
    custom_id: Mapped[str] = mapped_column(String(64), unique=True)
    provider: Mapped[str] = mapped_column(String(32))
    model: Mapped[str] = mapped_column(String(100))
    base_url: Mapped[str | None] = mapped_column(String(500))
    body: Mapped[dict[str, Any]] = mapped_column(JsonType)
    prefill: Mapped[str] = mapped_column(Text, default="", server_default="")
    state: Mapped[str] = mapped_column(String(16))
    deferred_by: Mapped[str] = mapped_column(String(200))
    batch_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("provider_batches.id"), index=True
    )
    result_kind: Mapped[str | None] = mapped_column(String(32))
    result: Mapped[dict[str, Any] | None] = mapped_column(JsonType)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    resume_sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        UniqueConstraint("job_id", "attempt_no", name="uq_provider_batch_items_attempt"),
        Index("ix_provider_batch_items_state_group", "state", "provider", "model"),
    )


class StoredBudget(Base):
    """A daemon's spend ceilings set with ``tierflow budget set`` (US dollars per UTC day and
    month; null: no ceiling for that period). A row here takes precedence over the config's
    ``budgets:`` entry for the same daemon (:func:`tierflow.store.budgets.budget_for`)."""

    __tablename__ = "budgets"

    daemon: Mapped[str] = mapped_column(String(64), primary_key=True)
    daily_usd: Mapped[float | None] = mapped_column(Money)
    monthly_usd: Mapped[float | None] = mapped_column(Money)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )
