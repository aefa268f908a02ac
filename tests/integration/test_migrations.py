"""The SQLAlchemy models and the Alembic migrations describe the same schema (on PostgreSQL)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, text

from schemas.tables import Base
from tests.support import services

pytestmark = pytest.mark.integration


def schema_diff(url: str) -> list[object]:
    """Alembic autogenerate's differences between the database at ``url`` and the models."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(context, Base.metadata))
    finally:
        engine.dispose()


def public_tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            ).scalars()
            return set(rows)
    finally:
        engine.dispose()


def test_models_match_migrations(services_ready: None) -> None:
    name = "tierflow_migcheck_" + services.uuid.uuid4().hex[:8]
    url = services.create_database(name)
    try:
        from tierflow.core.db import upgrade_database

        upgrade_database(url)
        diff = schema_diff(url)
        assert diff == [], f"models and migrations disagree: {diff}"
    finally:
        services.drop_database(name)


def test_migrations_downgrade_to_base_and_back(services_ready: None) -> None:
    from alembic import command
    from tierflow.core.db import alembic_config

    name = "tierflow_migdown_" + services.uuid.uuid4().hex[:8]
    url = services.create_database(name)
    try:
        cfg = alembic_config(url)
        command.upgrade(cfg, "head")
        assert set(Base.metadata.tables) <= public_tables(url)
        command.downgrade(cfg, "base")
        # Every downgrade ran: nothing but Alembic's own bookkeeping is left.
        assert public_tables(url) <= {"alembic_version"}
        command.upgrade(cfg, "head")
        # Back at head, the schema is the models' again (types, indexes, constraints).
        assert schema_diff(url) == [], "the migrated-down-and-up schema differs from the models"
        head = ScriptDirectory.from_config(cfg).get_current_head()
        engine = create_engine(url)
        with engine.connect() as conn:
            at = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
        engine.dispose()
        assert at == [head]
    finally:
        services.drop_database(name)


def test_replicas_upgrading_one_database_at_once_all_reach_head(services_ready: None) -> None:
    """Three `tierflow db upgrade` processes started together on a fresh database (replicas'
    init containers): each exits 0 and the database is at head, migrated once."""
    name = "tierflow_migrace_" + services.uuid.uuid4().hex[:8]
    url = services.create_database(name)
    try:
        env = {**os.environ, "TIERFLOW_DATABASE_URL": url}
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "tierflow.cli", "db", "upgrade"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for _ in range(3)
        ]
        outputs = [p.communicate(timeout=120)[0] for p in procs]
        for p, out in zip(procs, outputs, strict=True):
            assert p.returncode == 0, out[-3000:]
            assert "database at head" in out
        engine = create_engine(url)
        with engine.connect() as conn:
            versions = conn.execute(text("SELECT version_num FROM alembic_version")).all()
            open_index = conn.execute(
                text("SELECT indisvalid FROM pg_index WHERE indexrelid = 'ix_jobs_open'::regclass")
            ).scalar()
        engine.dispose()
        from tierflow.core.db import alembic_config

        head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
        assert versions == [(head,)]
        assert open_index is True  # built concurrently, and valid
    finally:
        services.drop_database(name)
