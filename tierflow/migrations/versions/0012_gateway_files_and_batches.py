"""gateway_files and gateway_batches: OpenAI's Files and Batch APIs at the gateway

A daemon's uploaded batch input (and the output and error files made from its jobs) is stored
as bytes in ``gateway_files``; ``gateway_batches`` holds each OpenAI-style batch, its status and
times, and the tierflow batch its lines became.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _at(name: str) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=True)


def upgrade() -> None:
    now = sa.func.now()
    op.create_table(
        "gateway_files",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("daemon", sa.String(64), nullable=False),
        sa.Column("purpose", sa.String(32), nullable=False),
        sa.Column("filename", sa.String(255), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=now, nullable=False),
    )
    op.create_index("ix_gateway_files_daemon", "gateway_files", ["daemon"])
    op.create_table(
        "gateway_batches",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("daemon", sa.String(64), nullable=False),
        sa.Column("batch_id", sa.String(36), sa.ForeignKey("batches.id"), nullable=True),
        sa.Column("input_file_id", sa.String(40), nullable=False),
        sa.Column("endpoint", sa.String(64), nullable=False),
        sa.Column("completion_window", sa.String(8), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("errors", postgresql.JSONB(), nullable=True),
        sa.Column("refused", postgresql.JSONB(), nullable=True),
        sa.Column("metadata", postgresql.JSONB(), nullable=True),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("completed", sa.Integer(), nullable=True),
        sa.Column("failed", sa.Integer(), nullable=True),
        sa.Column("output_file_id", sa.String(40), nullable=True),
        sa.Column("error_file_id", sa.String(40), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=now, nullable=False),
        *[
            _at(name)
            for name in (
                "in_progress_at",
                "submitted_at",
                "finalizing_at",
                "completed_at",
                "failed_at",
                "cancelling_at",
                "cancelled_at",
                "expires_at",
            )
        ],
    )
    op.create_index(
        "ix_gateway_batches_daemon_created", "gateway_batches", ["daemon", "created_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_gateway_batches_daemon_created", table_name="gateway_batches")
    op.drop_table("gateway_batches")
    op.drop_index("ix_gateway_files_daemon", table_name="gateway_files")
    op.drop_table("gateway_files")
