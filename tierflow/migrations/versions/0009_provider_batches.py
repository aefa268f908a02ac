"""provider_batches and provider_batch_items: API-tier calls through the providers' Batch APIs

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "batches",
        sa.Column("provider_batch", sa.Boolean(), server_default="false", nullable=False),
    )
    op.create_table(
        "provider_batches",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("model", sa.String(100), nullable=False),
        sa.Column("base_url", sa.String(500), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("remote_id", sa.String(200), nullable=True),
        sa.Column("input_file_id", sa.String(200), nullable=True),
        sa.Column("remote_status", sa.String(32), nullable=True),
        sa.Column("request_counts", postgresql.JSONB(), nullable=True),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("cancel_requested", sa.Boolean(), server_default="false", nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("polled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_provider_batches_status", "provider_batches", ["status"])
    op.create_table(
        "provider_batch_items",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "job_id", sa.String(36), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("attempt_no", sa.Integer(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("retries_in_step", sa.Integer(), nullable=False),
        sa.Column("custom_id", sa.String(64), nullable=False, unique=True),
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("model", sa.String(100), nullable=False),
        sa.Column("base_url", sa.String(500), nullable=True),
        sa.Column("body", postgresql.JSONB(), nullable=False),
        sa.Column("prefill", sa.Text(), server_default="", nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("deferred_by", sa.String(200), nullable=False),
        sa.Column(
            "batch_id", sa.String(36), sa.ForeignKey("provider_batches.id"), nullable=True
        ),
        sa.Column("result_kind", sa.String(32), nullable=True),
        sa.Column("result", postgresql.JSONB(), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("resume_sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint("job_id", "attempt_no", name="uq_provider_batch_items_attempt"),
    )
    op.create_index("ix_provider_batch_items_job_id", "provider_batch_items", ["job_id"])
    op.create_index("ix_provider_batch_items_batch_id", "provider_batch_items", ["batch_id"])
    op.create_index(
        "ix_provider_batch_items_state_group",
        "provider_batch_items",
        ["state", "provider", "model"],
    )


def downgrade() -> None:
    op.drop_index("ix_provider_batch_items_state_group", table_name="provider_batch_items")
    op.drop_index("ix_provider_batch_items_batch_id", table_name="provider_batch_items")
    op.drop_index("ix_provider_batch_items_job_id", table_name="provider_batch_items")
    op.drop_table("provider_batch_items")
    op.drop_index("ix_provider_batches_status", table_name="provider_batches")
    op.drop_table("provider_batches")
    op.drop_column("batches", "provider_batch")
