"""superseded_calls: model calls whose delivery had lost the attempt's lease; attempts.delivery_retry

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01

0003 (jobs.request_fingerprint) is being added on another branch; when both land, this one is
re-chained to revise 0003.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "attempts",
        sa.Column("delivery_retry", sa.Integer(), server_default="0", nullable=False),
    )
    op.create_table(
        "superseded_calls",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("attempt_no", sa.Integer(), nullable=False),
        sa.Column("worker", sa.String(length=200), nullable=False),
        sa.Column("tier", sa.String(length=32), nullable=True),
        sa.Column("model", sa.String(length=100), nullable=True),
        sa.Column("provider", sa.String(length=32), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("input_tokens", sa.Integer(), nullable=False),
        sa.Column("output_tokens", sa.Integer(), nullable=False),
        sa.Column("cost_usd", sa.Numeric(precision=14, scale=8), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint(
            "job_id", "attempt_no", "worker", name="uq_superseded_calls_delivery"
        ),
    )
    op.create_index(
        op.f("ix_superseded_calls_job_id"), "superseded_calls", ["job_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_superseded_calls_job_id"), table_name="superseded_calls")
    op.drop_table("superseded_calls")
    op.drop_column("attempts", "delivery_retry")
