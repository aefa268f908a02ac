"""open jobs in an index of their own; no index on the status, so a job's moves update in place

``ix_jobs_status_deadline (status, deadline)`` is replaced by ``ix_jobs_open (deadline) WHERE
finished_at IS NULL``: the jobs not finished yet (every terminal write sets ``finished_at``),
which is what the sweeps look for (past their deadline; stalled), ordered by deadline. Its size
is the jobs in flight, not the table's history, and the sweeps read it instead of the table.

With no index on ``status`` (nor on ``updated_at``, ``complexity`` or ``plan``), the route's and
the claim's updates of a job change no indexed column, so PostgreSQL can write them as
heap-only tuples (HOT: no index entry at all) when the row's page has room: ``fillfactor`` 80
leaves a fifth of each new page of jobs for them.

The index is built and the old one dropped ``CONCURRENTLY`` (outside the migration's
transaction): a fleet still running on a large jobs table keeps writing while it is built,
instead of waiting on a lock for the whole scan. A build that fails leaves an invalid
``ix_jobs_open`` behind, and a run cut short after the build may have dropped the old index
already: the next upgrade drops the first, builds it again, and drops the second if it is
still there.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.execute("DROP INDEX CONCURRENTLY IF EXISTS ix_jobs_open")  # a failed build's
        op.create_index(
            "ix_jobs_open",
            "jobs",
            ["deadline"],
            postgresql_where=sa.text("finished_at IS NULL"),
            postgresql_concurrently=True,
        )
        op.execute("DROP INDEX CONCURRENTLY IF EXISTS ix_jobs_status_deadline")  # or a rerun's
    op.execute("ALTER TABLE jobs SET (fillfactor = 80)")


def downgrade() -> None:
    op.execute("ALTER TABLE jobs RESET (fillfactor)")
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_jobs_status_deadline", "jobs", ["status", "deadline"], postgresql_concurrently=True
        )
        op.drop_index("ix_jobs_open", table_name="jobs", postgresql_concurrently=True)
