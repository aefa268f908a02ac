"""The fleet's one Celery application, configured from :mod:`celeryconfig` (itself built from the
settings), with no task registered.

Every floor may send tasks through it by name (the client does, in :mod:`router.dispatch`);
:mod:`workers.app` registers the tasks on this same object for ``celery -A workers.app worker``.
"""

from __future__ import annotations

from celery import Celery

app = Celery("tierflow")
app.config_from_object("celeryconfig")
