"""The Alembic migrations, shipped inside the installed package.

``env.py`` and ``script.py.mako`` are Alembic's; ``versions/`` holds the revisions (package
data, not modules). :data:`tierflow.core.db.MIGRATIONS_DIR` finds this directory through
:mod:`importlib.resources`, so ``tierflow db upgrade`` works from a wheel as from the source tree;
``alembic.ini`` at the repository root names it as ``tierflow:migrations``. Nothing imports this
package's modules: Alembic loads them by path.
"""
