"""cache and budgets: attempts.cached / cache_saved_usd, and the budgets set by the CLI

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("attempts", sa.Column("cached", sa.String(16), nullable=True))
    op.add_column("attempts", sa.Column("cache_saved_usd", sa.Numeric(14, 8), nullable=True))
    op.create_table(
        "budgets",
        sa.Column("daemon", sa.String(64), primary_key=True),
        sa.Column("daily_usd", sa.Numeric(14, 8), nullable=True),
        sa.Column("monthly_usd", sa.Numeric(14, 8), nullable=True),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
    )


def downgrade() -> None:
    op.drop_table("budgets")
    op.drop_column("attempts", "cache_saved_usd")
    op.drop_column("attempts", "cached")
