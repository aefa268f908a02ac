"""The hot path's statements: one round trip each, rows back as (unattached) ORM objects.

A job's own path through the fleet (stored, routed, claimed, finished) costs what its round
trips to PostgreSQL cost, and an ORM session adds a ``BEGIN``, a ``COMMIT`` and its own
bookkeeping to each; SQLAlchemy's execution of a textual statement adds about 0.4 ms more on
our machines (its result metadata is rebuilt for every row set). Here each write is *one
statement*, run by the driver on a pooled connection in autocommit: PostgreSQL's implicit
transaction of that statement is the transaction, so a write made of several steps is written
as one statement with CTEs, which PostgreSQL runs atomically.

- :data:`ASYNC_COMMIT` is a select-list item that makes the statement's own commit non-durable
  (``set_config(.., true)`` is ``SET LOCAL``; the commit reads the setting when it happens), for
  the writes :func:`tierflow.core.db.session_scope` documents as redoable (``durable=False``).
- The column lists are the ORM tables' (``schemas.tables``), spelled out in table order, so a
  row read here is the object a session would load (the driver's types are SQLAlchemy's here:
  ``Numeric`` as ``Decimal``, JSONB as Python values), whatever order the database's columns
  were added in.
- The connection is the statement pool's (:mod:`tierflow.core.connections`: autocommit for
  life, the same checks and limits as the engine's pool, about 60 µs less CPU a statement),
  and the driver's errors are raised as SQLAlchemy's (a lost connection is an
  ``sqlalchemy.exc.OperationalError``, discarded from the pool), so the tasks' retries and the
  callers' handling see what a session would raise.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg
from psycopg.pq import ExecStatus
from psycopg.types.json import Jsonb
from sqlalchemy import Column, inspect
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import configure_mappers
from sqlalchemy.orm.attributes import manager_of_class

from schemas.tables import Attempt, Base, Job
from tierflow.core.connections import statement_pool
from tierflow.core.constants import TERMINAL_STATUSES
from tierflow.core.settings import get_settings

ModelT = TypeVar("ModelT", bound=Base)

ASYNC_COMMIT = "set_config('synchronous_commit', 'off', true) AS async_commit"
# The terminal statuses as an SQL list, for statements that must not touch a finished job.
TERMINAL_SQL = "(" + ", ".join(f"'{s!s}'" for s in sorted(TERMINAL_STATUSES)) + ")"

JOB_COLUMNS: tuple[Column[Any], ...] = tuple(Job.__table__.columns)  # type: ignore[arg-type]
ATTEMPT_COLUMNS: tuple[Column[Any], ...] = tuple(Attempt.__table__.columns)  # type: ignore[arg-type]

_NAMED = re.compile(r"(?<![:\w]):(\w+)")


@dataclass(frozen=True)
class Statement:
    """An SQL statement in the driver's placeholders, and which of its parameters are JSON."""

    sql: str
    json: frozenset[str] = frozenset()

    def bind(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return {k: Jsonb(v) if k in self.json and v is not None else v for k, v in params.items()}


def statement(sql: str, json: Iterable[str] = ()) -> Statement:
    """``sql`` written with ``:name`` parameters; ``json`` names those stored as JSONB (a dict
    is serialised, a list stays JSON rather than becoming an array)."""
    return Statement(_NAMED.sub(r"%(\1)s", sql.replace("%", "%%")), frozenset(json))


def columns_of(alias: str, columns: Sequence[Column[Any]]) -> str:
    """``alias.a, alias.b, ..``: a select list in the ORM table's order."""
    return ", ".join(f"{alias}.{c.name}" for c in columns)


def _keys(model: type[Base], columns: Sequence[Column[Any]]) -> tuple[str, ...]:
    configure_mappers()  # an instance made without its constructor needs configured mappers
    mapper = inspect(model)
    table = model.__table__
    return tuple(mapper.get_property_by_column(table.c[c.name]).key for c in columns)


# (model, id of a column list) -> (the list, its attribute names), made once per list: the lists
# are the modules' constants, looked up by identity (naming 30 columns again for every row cost
# more than building the row)
_KEYS_BY_LIST: dict[tuple[type[Base], int], tuple[Sequence[Column[Any]], tuple[str, ...]]] = {}


def build(model: type[ModelT], columns: Sequence[Column[Any]], values: Sequence[Any]) -> ModelT:
    """An instance of ``model`` from ``values`` read in ``columns``' order (attached to no
    session: every column is loaded, no relationship is)."""
    known = _KEYS_BY_LIST.get((model, id(columns)))
    if known is None or known[0] is not columns:
        known = _KEYS_BY_LIST[(model, id(columns))] = (columns, _keys(model, columns))
    # loaded values, as a session's load sets them: no change events, nothing to flush
    return detached(model, dict(zip(known[1], values, strict=True)))


def detached(model: type[ModelT], values: Mapping[str, Any]) -> ModelT:
    """An instance of ``model`` holding ``values`` (attribute names), attached to no session,
    made as :func:`build` makes one: without the constructor's change events (an attribute not
    given reads None, as on a new instance)."""
    manager = manager_of_class(model)
    if not manager.mapper.configured:
        configure_mappers()  # once: an instance made without its constructor needs them
    instance: ModelT = manager.new_instance()
    instance.__dict__.update(values)
    return instance


def run_one(stmt: Statement, params: Mapping[str, Any]) -> tuple[Any, ...] | None:
    """Run one statement as its own transaction (one round trip); its first row, or None.

    On a connection of the statement pool (:mod:`tierflow.core.connections`), kept in
    autocommit. Errors are SQLAlchemy's, as from a session: a lost connection is an
    ``OperationalError`` with ``connection_invalidated`` (the tasks retry those), anything
    else the ``DBAPIError`` subclass for the driver's error (``IntegrityError``...)."""
    bound = stmt.bind(params)
    try:
        with statement_pool(get_settings().sqlalchemy_url).connection() as conn:
            cursor = conn.execute(stmt.sql, bound)
            result = cursor.pgresult  # not ``description``: that builds ~50 column objects
            if result is None or result.status != ExecStatus.TUPLES_OK:
                return None
            return cursor.fetchone()
    except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
        # the connection is lost (the pool has dropped it), or none could be made
        raise OperationalError(stmt.sql, bound, exc, connection_invalidated=True) from exc
    except psycopg.Error as exc:
        raise DBAPIError.instance(stmt.sql, bound, exc, psycopg.Error) from exc
