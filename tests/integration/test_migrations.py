"""The SQLAlchemy models and the Alembic migrations describe the same schema (on PostgreSQL)."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

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
