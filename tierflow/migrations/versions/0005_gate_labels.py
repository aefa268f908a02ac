"""gate_labels: labels of cheap answers (feedback and audits) for the learned gate

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "gate_labels",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("job_id", sa.String(36), sa.ForeignKey("jobs.id"), nullable=False),
        sa.Column("action_type", sa.String(100), nullable=False),
        sa.Column("source", sa.String(20), nullable=False),
        sa.Column("good", sa.Boolean(), nullable=False),
        sa.Column("gate_passed", sa.Boolean(), nullable=True),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("features", postgresql.JSONB(), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("cost_usd", sa.Numeric(14, 8), nullable=False),
    )
    op.create_index("ix_gate_labels_job_id", "gate_labels", ["job_id"])
    op.create_index("ix_gate_labels_action_type", "gate_labels", ["action_type"])


def downgrade() -> None:
    op.drop_index("ix_gate_labels_action_type", table_name="gate_labels")
    op.drop_index("ix_gate_labels_job_id", table_name="gate_labels")
    op.drop_table("gate_labels")
