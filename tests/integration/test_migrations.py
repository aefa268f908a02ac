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


def test_models_match_migrations(services_ready: None) -> None:
    name = "tierflow_migcheck_" + services.uuid.uuid4().hex[:8]
    url = services.create_database(name)
    try:
        from tierflow.core.db import upgrade_database

        upgrade_database(url)
        engine = create_engine(url)
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            diff = compare_metadata(context, Base.metadata)
        engine.dispose()
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
        command.downgrade(cfg, "base")
        command.upgrade(cfg, "head")
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
