"""The hot path's statements: one round trip each, rows back as (unattached) ORM objects.

A job's own path through the fleet (routed, claimed, finished) costs what its round trips to
PostgreSQL cost, and an ORM session adds a ``BEGIN``, a ``COMMIT`` and its own bookkeeping to
each. Here each write is *one statement* run on an autocommitting connection: PostgreSQL's
implicit transaction of that statement is the transaction, so a write made of several steps is
written as one statement with CTEs, which PostgreSQL runs atomically.

- :data:`ASYNC_COMMIT` is a select-list item that makes the statement's own commit non-durable
  (``set_config(.., true)`` is ``SET LOCAL``; the commit reads the setting when it happens), for
  the writes :func:`tierflow.core.db.session_scope` documents as redoable (``durable=False``).
- The column lists are the ORM tables' (``schemas.tables``), spelled out in table order, so a
  row read here is the same object a session would load, whatever order the database's columns
  were added in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from functools import cache
from typing import Any, TypeVar

from sqlalchemy import Column, ColumnElement, Row, TextClause, bindparam, inspect, text

from schemas.tables import Attempt, Base, Job
from tierflow.core.constants import TERMINAL_STATUSES
from tierflow.core.db import autocommit_connection

ModelT = TypeVar("ModelT", bound=Base)

ASYNC_COMMIT = "set_config('synchronous_commit', 'off', true) AS async_commit"
# The terminal statuses as an SQL list, for statements that must not touch a finished job.
TERMINAL_SQL = "(" + ", ".join(f"'{s!s}'" for s in sorted(TERMINAL_STATUSES)) + ")"

JOB_COLUMNS: tuple[Column[Any], ...] = tuple(Job.__table__.columns)  # type: ignore[arg-type]
ATTEMPT_COLUMNS: tuple[Column[Any], ...] = tuple(Attempt.__table__.columns)  # type: ignore[arg-type]


def columns_of(alias: str, columns: Sequence[Column[Any]]) -> str:
    """``alias.a, alias.b, ..``: a select list in the ORM table's order."""
    return ", ".join(f"{alias}.{c.name}" for c in columns)


@cache
def _keys(model: type[Base], names: tuple[str, ...]) -> tuple[str, ...]:
    mapper = inspect(model)
    table = model.__table__
    return tuple(mapper.get_property_by_column(table.c[name]).key for name in names)


def build(model: type[ModelT], columns: Sequence[Column[Any]], values: Sequence[Any]) -> ModelT:
    """An instance of ``model`` from ``values`` read in ``columns``' order (attached to no
    session: every column is loaded, no relationship is)."""
    keys = _keys(model, tuple(c.name for c in columns))
    return model(**dict(zip(keys, values, strict=True)))


def typed(sql: str, params: Iterable[tuple[str, ColumnElement[Any]]] = ()) -> TextClause:
    """``sql`` with each named parameter bound as its column's type (JSON is serialised, a
    list stays JSON rather than becoming an array)."""
    return text(sql).bindparams(*(bindparam(name, type_=col.type) for name, col in params))


def run_one(statement: TextClause, params: Mapping[str, Any]) -> Row[Any] | None:
    """Run one statement as its own transaction (one round trip); its first row, or None."""
    with autocommit_connection() as conn:
        return conn.execute(statement, dict(params)).first()


def run_all(statement: TextClause, params: Mapping[str, Any]) -> list[Row[Any]]:
    """Run one statement as its own transaction (one round trip); every row."""
    with autocommit_connection() as conn:
        return list(conn.execute(statement, dict(params)))
