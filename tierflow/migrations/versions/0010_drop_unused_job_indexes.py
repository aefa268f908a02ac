"""drop three indexes no query needs: every job's row version paid for them

``ix_jobs_status`` is the leading column of ``ix_jobs_status_deadline``, which serves every
``status = ...`` lookup it served; ``ix_attempts_job_id`` is the leading column of the unique
``uq_attempts_job_attempt``; no query filters jobs by ``action_type`` (the reports group by it
over a time window, which ``ix_jobs_created_at`` selects). A job's row is written four times
on its way (stored, routed, started, finished) and its status changes each time, so each of
those versions was entered in every index of the table: seven for jobs, now five; three for an
attempt's insert, now two.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_jobs_status", table_name="jobs")
    op.drop_index("ix_jobs_action_type", table_name="jobs")
    op.drop_index("ix_attempts_job_id", table_name="attempts")


def downgrade() -> None:
    op.create_index("ix_attempts_job_id", "attempts", ["job_id"], unique=False)
    op.create_index("ix_jobs_action_type", "jobs", ["action_type"], unique=False)
    op.create_index("ix_jobs_status", "jobs", ["status"], unique=False)
