"""batches, and each job's batch and line

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "batches",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("max_cost_usd", sa.Numeric(14, 8), nullable=True),
        sa.Column("submitted", sa.Integer(), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_batches_status", "batches", ["status"])
    op.add_column("jobs", sa.Column("batch_id", sa.String(36), nullable=True))
    op.add_column("jobs", sa.Column("batch_line", sa.Integer(), nullable=True))
    op.create_foreign_key("fk_jobs_batch_id", "jobs", "batches", ["batch_id"], ["id"])
    op.create_index("ix_jobs_batch_id", "jobs", ["batch_id"])


def downgrade() -> None:
    op.drop_index("ix_jobs_batch_id", table_name="jobs")
    op.drop_constraint("fk_jobs_batch_id", "jobs", type_="foreignkey")
    op.drop_column("jobs", "batch_line")
    op.drop_column("jobs", "batch_id")
    op.drop_index("ix_batches_status", table_name="batches")
    op.drop_table("batches")
