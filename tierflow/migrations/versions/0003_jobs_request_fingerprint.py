"""jobs.request_fingerprint: bind an idempotency key to the request it was first used with

Nullable: rows stored before this migration have none and match any request with their key.
``jobs.status`` needs no change for the new ``expired`` status: it is a plain VARCHAR(16) with no
CHECK constraint and no enum type.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("request_fingerprint", sa.String(length=64), nullable=True))


def downgrade() -> None:
    op.drop_column("jobs", "request_fingerprint")
